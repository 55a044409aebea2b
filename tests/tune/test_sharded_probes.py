"""The search measures the run it tunes: with params/launch.yaml at 2 processes, every probe is
a 2-rank torchrun job (gloo) whose ranks build the stage's model through `build_objective`,
FSDP2-sharded over both; the ranks report the world size and sharding from inside the job, and
params/buckets.yaml's search record says so. A tiny model, one bucket, 2 candidates (1, 2)."""

import shutil
from pathlib import Path

import optuna

from osora.config import load_settings
from osora.tune.probe import ProbeSetup
from osora.tune.run import tune_buckets
from osora.tune.search import RESULT_ATTR
from osora.tune.write_back import write_buckets

REPO = Path(__file__).resolve().parents[2]


def test_probes_run_as_the_stage_launches_and_the_record_says_so(tmp_path):
    settings = load_settings(params_dir=REPO / "params")
    stage = settings.tune.stage
    smallest = min(settings.buckets.stages[stage])
    settings = settings.model_copy(update={
        "launch": settings.launch.model_copy(update={"nproc_per_node": 2}),
        "buckets": settings.buckets.model_copy(update={"stages": {
            **settings.buckets.stages, stage: {smallest: settings.buckets.stages[stage][smallest]}
        }}),
        # the wiring is under test, not timing: a loaded machine's step times are noise
        "tune": settings.tune.model_copy(update={
            "storage": f"sqlite:///{tmp_path / 't.db'}", "max_batch": 2, "steps": 1,
            "time_tolerance": 100.0}),
    })
    result = tune_buckets(settings, tmp_path, say=lambda _: None)

    want = ProbeSetup(world_size=2, nodes=1, context_parallel=1, fsdp=True,
                      checkpointing="0/0", depth="2+2", device="cpu")
    probes = result.searches[smallest].results
    assert sorted(probes) == [1, 2] and all(r.fits for r in probes.values())
    assert {r.setup for r in probes.values()} == {want}  # each probe's ranks said so
    # the Optuna trials keep it too
    study = optuna.load_study(study_name=result.studies[smallest],
                              storage=settings.tune.storage)
    assert {t.user_attrs[RESULT_ATTR]["setup"]["world_size"] for t in study.trials} == {2}

    params = Path(shutil.copytree(REPO / "params", tmp_path / "params"))
    write_buckets(params / "buckets.yaml", result, settings)
    record = load_settings(params_dir=params).buckets.searched[stage]
    assert record.probed.world_size == 2 and record.probed.fsdp
    assert record.probed.context_parallel == 1 and record.probed.full_depth
    assert record.probed.checkpointing == "0/0" and record.probed.device == "cpu"
    assert "2 ranks" in record.model
