"""Real probes, each a torchrun job, on the tiny MMDiT under a CPU memory budget: a small
batch trains and is timed, a huge one fails with an out-of-memory error inside torch (the
budget is enforced, not estimated), and the search over real probes finds the batch an
exhaustive scan of every batch size finds, in the expected number of probes."""

import dataclasses
import tempfile
from pathlib import Path

import pytest
from dvc_project import edit_yaml

from osora.config import load_settings
from osora.tune.probe import ProbeRequest, ProbeSetup, run_probe
from osora.tune.search import Limits, expected_probes, open_study, search_bucket

SETTINGS = load_settings()
MODEL = dataclasses.asdict(SETTINGS.dit.model)
LATENT = (16, 4, 16, 16)  # the tiny 16-frame 64×64 bucket: 256 video tokens in 2×2 patches
# Batch 4 needs about 120 MB here (under 120 it fitted in 3 runs of 4), batch 3 about 15 MB
# less: 112 lies between them, away from the few MB the heap varies by from run to run
BUDGET_MB, MAX_BATCH = 112, 12


def probe(batch: int, memory_mb: int = BUDGET_MB):
    """One rank (the tiny params/launch.yaml), stage 1's setup."""
    request = ProbeRequest(SETTINGS.dit.model_dump(mode="json"), "stage1", MODEL, LATENT, 32,
                           batch, "cpu", "fp32", memory_mb, 1, "gloo")
    return run_probe(request, SETTINGS.launch, timeout_s=120,
                     workdir=Path(tempfile.gettempdir()))


def test_a_small_batch_is_timed_and_a_huge_one_runs_out_of_memory():
    small = probe(1)
    assert small.fits and 0 < small.forward_s < small.step_s
    assert small.setup == ProbeSetup(world_size=1, nodes=1, context_parallel=1, fsdp=False,
                                     checkpointing="0/0", depth="2+2", device="cpu")
    assert small.step_s >= small.forward_s + small.backward_s
    huge = probe(4096)
    assert not huge.fits and huge.reason.startswith("out of memory")
    assert "allocate" in huge.reason  # torch's own allocator failed: the budget was enforced


@pytest.mark.slow
def test_the_search_finds_what_an_exhaustive_scan_finds(tmp_path):
    fits = {b: probe(b).fits for b in range(1, MAX_BATCH + 1)}
    want = max(b for b, ok in fits.items() if ok)
    assert want < MAX_BATCH, "the budget should bind within the scan"
    assert all(fits[b] == (b <= want) for b in fits)  # memory is monotone in the batch
    found = search_bucket(open_study("real", f"sqlite:///{tmp_path / 'r.db'}"), probe,
                          Limits(), MAX_BATCH)
    assert found.best.batch == want
    assert found.probes == expected_probes(want, MAX_BATCH)


@pytest.mark.slow
def test_osora_tune_buckets_writes_params_and_logs_to_mlflow(tmp_path):
    """The command end to end in a project of its own, with real probes (max_batch 2 keeps it
    short): every stage-1 bucket gets a batch size in params/buckets.yaml, the search record
    names this machine, MLflow has the run with a metric per bucket."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from mlflow import MlflowClient

    repo = Path(__file__).resolve().parents[2]
    project = tmp_path / "project"
    shutil.copytree(repo / "params", project / "params")
    shutil.copy(repo / "dvc.yaml", project / "dvc.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSORA_", "DVC_"))}
    # the wiring is under test, not timing: a loaded CI machine's step times are noise
    edit_yaml(project / "params" / "tune.yaml",
              lambda t: t.update(max_batch=2, steps=1, time_tolerance=100))
    osora = str(Path(sys.executable).parent / "osora")
    done = subprocess.run([osora, "tune", "buckets"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    settings = load_settings(params_dir=project / "params")
    stage = settings.tune.stage
    batches = {f: r.batch_size for f, r in settings.buckets.stages[stage].items()}
    assert set(batches.values()) <= {1, 2}
    record = settings.buckets.searched[stage]
    assert record.hardware.startswith("CPU") and record.memory_mb == settings.tune.memory_mb
    assert record.probed.world_size == 1 and record.probed.full_depth
    client = MlflowClient(f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("osora").experiment_id])
    assert [r.data.tags["dvc.stage"] for r in runs] == ["tune_buckets"]
    assert {f"batch/{f}" for f in batches} <= set(runs[0].data.metrics)
    assert (project / "optuna" / "tune.db").is_file()
