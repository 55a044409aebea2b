"""The `dit_finetune` stage as dvc.yaml starts it (`python -m osora.launch pipelines/dit_train.py
--stage finetune`), LoRA on stage 3's weights, on 2 gloo ranks (FSDP2: frozen base and adapters
in one unit per block) with gradient accumulation 2 and every block checkpointed: it writes the
adapter alone and the merged checkpoint, the merged one equals `osora weights merge-lora` of
the two, only the adapted layers differ from the base, and its MLflow run records both files
and the trainable parameter count. Also the params rules of a LoRA stage (osora config check).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from dvc_project import edit_yaml
from test_launch_training import latents_table

from osora.config import load_settings
from osora.config.check import check_profile
from osora.models.mmdit import MMDiT
from osora.weights.lora import CONFIG_NAME, WEIGHTS_NAME, merge_lora
from osora.weights.mmdit import save_mmdit, saved_text_encoder
from osora.weights.safetensors_io import load_weights

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 3


def base_weights(project: Path) -> Path:
    """Stage 3's weights: the profile's MMDiT with every weight non-zero."""
    params = load_settings(params_dir=project / "params").dit
    torch.manual_seed(0)
    model = MMDiT(params.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_mmdit(model, project / "models" / "dit" / "stage3" / "dit.safetensors")


@pytest.fixture
def project(tmp_path) -> Path:
    """Params, dvc.yaml, a latents table and stage 3's weights. The finetune stage: 3 steps on
    2 ranks, each step 2 micro-batches of 1 clip per rank (the 4 clips of the table)."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "params", project / "params")
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    params = project / "params"
    edit_yaml(params / "launch.yaml", lambda d: d.update(nproc_per_node=2))
    edit_yaml(params / "dit.yaml", lambda d: (
        d["train"].update(log_every=1),
        d["train"]["stages"]["finetune"].update(steps=STEPS)))
    edit_yaml(params / "buckets.yaml",
              lambda d: d["stages"]["finetune"][16].update(batch_size=1))
    latents_table(project)
    base_weights(project)
    return project


@pytest.mark.slow  # ~60 s on 2 cores: two torchrun processes
def test_the_finetune_stage_writes_the_adapter_and_the_merged_weights(project):
    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSORA_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        [sys.executable, "-m", "osora.launch", str(REPO / "pipelines" / "dit_train.py"),
         "--stage", "finetune", "--latents", "lineage/latents.json",
         "--texts", "lineage/text_embeds.json", "--models", "models/dit",
         "--metrics", "metrics/dit_finetune.json", "--curve", "reports/dit_finetune/loss.csv"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]

    stage = project / "models" / "dit" / "finetune"
    base, merged, adapter = (project / "models" / "dit" / "stage3" / "dit.safetensors",
                             stage / "dit.safetensors", stage / "lora")
    assert (adapter / WEIGHTS_NAME).is_file() and (adapter / CONFIG_NAME).is_file()
    assert json.loads((adapter / CONFIG_NAME).read_text())["r"] == 8

    # the merged checkpoint is base + adapter, as `osora weights merge-lora` makes it
    by_command = merge_lora(base, adapter, project / "by_command.safetensors")
    want, got, before = (load_weights(by_command), load_weights(merged), load_weights(base))
    assert got.keys() == want.keys() == before.keys()
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
    changed = {k for k in before if not torch.equal(got[k], before[k])}
    adapted = {k.replace(".lora_A.weight", ".weight")
               for k in load_weights(adapter / WEIGHTS_NAME) if ".lora_A." in k}
    assert changed == adapted  # the base's other tensors, biases included, did not train
    assert saved_text_encoder(merged) is not None

    metrics = json.loads((project / "metrics" / "dit_finetune.json").read_text())
    adapter_size = sum(t.numel() for t in load_weights(adapter / WEIGHTS_NAME).values())
    assert metrics["trainable_parameters"] == adapter_size
    assert metrics["parameters"] == sum(t.numel() for t in before.values())
    assert metrics["steps"] == STEPS

    client = MlflowClient(f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("osora").experiment_id])
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags["osora.stage"] == "dit_finetune"
    assert tags["weights.output.path"].endswith("finetune/dit.safetensors")
    assert tags["weights.output.lora.path"].endswith(f"finetune/lora/{WEIGHTS_NAME}")
    assert tags["weights.input.init.path"].endswith("stage3/dit.safetensors")


def _project_with(tmp_path: Path, change) -> Path:
    shutil.copytree(REPO / "params", tmp_path / "params")
    path = tmp_path / "params" / "dit.yaml"
    content = yaml.safe_load(path.read_text())
    change(content["train"]["stages"]["finetune"])
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return tmp_path


def test_a_lora_stage_needs_weights_to_adapt_and_a_pattern(tmp_path):
    def broken(stage):
        stage["init"] = None
        stage["lora"]["target_modules"] = r".*_blocks\.(\d+\.qkv"

    root = _project_with(tmp_path, broken)
    found = {v.key: v for v in check_profile(load_settings(params_dir=root / "params"),
                                             "dit_finetune", root)}
    assert set(found) == {"train.stages.finetune.init",
                          "train.stages.finetune.lora.target_modules"}
    assert "a LoRA stage adapts the weights it starts from" in \
        found["train.stages.finetune.init"].problem
    assert found["train.stages.finetune.lora.target_modules"].problem.startswith(
        r"'.*_blocks\.(\d+\.qkv' is not a regular expression: missing ), unterminated "
        "subpattern")
    assert all(v.stages == ("dit_finetune",) for v in found.values())
