"""A DiT training stage as dvc.yaml starts it (`python -m osora.launch pipelines/dit_train.py`),
on 2 gloo processes forming one context-parallel group, in a fresh project: one MLflow run for
the stage, created by rank 0 alone (no sqlite race), recording the job's size, with each step's
metrics once; `osora cost` then shows the stage's CP degree and devices."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dvc_project import edit_yaml, write_latents

from osora.data.latents import latent_columns

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 2
CLIPS = 4
pytestmark = pytest.mark.slow


def latents_table(project: Path) -> None:
    """`CLIPS` random latents of 16-frame 32×32 clips in the tiny AE's shape (16 channels,
    4× space and time), as the latents stage's table `latents_low` and its receipt."""
    gen = torch.Generator().manual_seed(0)
    rows = [{"id": f"clip{i}", "video_id": f"video{i}", "text": f"a red square moves left {i}",
             "fps": 16.0, "frames": 16, "height": 32, "width": 32, "dit_scale": True,
             "ae_kind": "dcae", "ae_sha256": "0" * 64,
             **latent_columns(torch.randn(16, 4, 8, 8, generator=gen), "float32")}
            for i in range(CLIPS)]
    write_latents(project, {"latents_low": rows})


@pytest.fixture
def project(tmp_path) -> Path:
    """Params, dvc.yaml and a latents table; no MLflow store yet. Stage 1: 2 steps, 2 ranks
    sharing each sample's sequence (context_parallel 2), 2 clips a step."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "params", project / "params")
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    params = project / "params"
    edit_yaml(params / "launch.yaml", lambda d: d.update(nproc_per_node=2))
    edit_yaml(params / "dit.yaml", lambda d: (
        d["train"].update(log_every=1),
        d["train"]["stages"]["stage1"].update(steps=STEPS, lr_drop=None, warmup_steps=0,
                                              context_parallel=2)))
    edit_yaml(params / "buckets.yaml",
              lambda d: d["stages"]["stage1"][16].update(batch_size=2))
    latents_table(project)
    return project


def test_two_ranks_make_one_run_and_osora_cost_shows_cp_2(project):
    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSORA_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    assert not (project / "mlflow").exists()  # a fresh project: the ranks could race
    done = subprocess.run(
        [sys.executable, "-m", "osora.launch", str(REPO / "pipelines" / "dit_train.py"),
         "--stage", "stage1", "--latents", "lineage/latents.json",
         "--texts", "lineage/text_embeds.json", "--models", "models/dit",
         "--metrics", "metrics/dit_stage1.json", "--curve", "reports/dit_stage1/loss.csv"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    assert (project / "models" / "dit" / "stage1" / "dit.safetensors").is_file()

    client = MlflowClient(f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("osora")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["osora.stage"] == "dit_stage1"
    assert run.data.params["parallel.world_size"] == "2"
    assert run.data.params["parallel.nodes"] == "1"
    assert run.data.params["dit.train.stages.stage1.context_parallel"] == "2"
    assert run.data.metrics["cost.cpu_cores"] == len(os.sched_getaffinity(0))
    # the loop's reduced metrics, logged by rank 0 alone: one value per step
    history = client.get_metric_history(run.info.run_id, "dit/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))

    cost = subprocess.run([str(BIN / "osora"), "cost"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert cost.returncode == 0, cost.stderr
    assert f"| stage1 | {CLIPS} | 2 | {STEPS} | 2 CPU |" in cost.stdout, cost.stdout
