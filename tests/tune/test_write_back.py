"""The search's result goes into params/buckets.yaml itself: batch sizes of the searched stage
replaced, keep probabilities, other stages and the file's comments untouched, the hardware /
model / date record added, and the file still loads through the one config schema."""

import dataclasses
import shutil
from pathlib import Path

from osora.config import load_settings
from osora.tune.probe import ProbeResult, ProbeSetup
from osora.tune.run import TuneResult
from osora.tune.search import BucketSearch
from osora.tune.shapes import bucket_shapes
from osora.tune.write_back import write_buckets

REPO = Path(__file__).resolve().parents[2]


def test_write_back_updates_batch_sizes_and_records_the_search(tmp_path):
    params = Path(shutil.copytree(REPO / "params", tmp_path / "params"))
    settings = load_settings(params_dir=params)
    stage = settings.tune.stage
    shapes = bucket_shapes(settings, stage)
    new = {s.frames: 10 + i for i, s in enumerate(shapes)}
    searches = {f: BucketSearch(ProbeResult(b, True, 1.0, 0.4, 0.6), 3, {b: None})
                for f, b in new.items()}
    setup = ProbeSetup(world_size=2, nodes=1, context_parallel=2, fsdp=True,
                       checkpointing="1/-1", depth="2+2", device="cpu")
    result = TuneResult(stage, new, searches, shapes[0], "CPU test (2 cores)", "MMDiT test", {},
                        setup, full_depth=True)
    before = (params / "buckets.yaml").read_text()
    record = write_buckets(params / "buckets.yaml", result, settings)

    text = (params / "buckets.yaml").read_text()
    assert before.splitlines()[0] in text  # the header comment survives
    reloaded = load_settings(params_dir=params).buckets
    assert {f: r.batch_size for f, r in reloaded.stages[stage].items()} == new
    assert {f: r.keep for f, r in reloaded.stages[stage].items()} == \
        {f: r.keep for f, r in settings.buckets.stages[stage].items()}
    others = {s for s in settings.buckets.stages if s != stage}
    assert all(reloaded.stages[s] == settings.buckets.stages[s] for s in others)
    searched = reloaded.searched[stage]
    assert searched.hardware == "CPU test (2 cores)" and searched.model == "MMDiT test"
    assert searched.date == record["date"] and searched.reference_bucket == shapes[0].frames
    assert searched.probes == len(shapes) and searched.memory_mb == settings.tune.memory_mb
    assert searched.probed.model_dump() == {**dataclasses.asdict(setup), "full_depth": True}
