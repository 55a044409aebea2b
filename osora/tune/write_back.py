"""The search's result written into params/buckets.yaml itself (not a side file), so `dvc repro`
of the training stages picks it up: each searched bucket's batch_size, and under `searched` the
hardware, model, date and settings it was found for, and how the probes ran (ranks, context
parallelism, FSDP, checkpointing, depth, device). A round trip through ruamel.yaml keeps the
file's comments and order."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path

from ruamel.yaml import YAML

from osora.fileio import atomic_write_text


def write_buckets(path: Path, result, settings) -> dict:
    """Update `path` with `result` (osora.tune.run.TuneResult); returns the `searched` record."""
    import io

    yaml = YAML()  # round-trip: comments and key order survive
    yaml.preserve_quotes = True
    doc = yaml.load(Path(path).read_text())
    rules = doc["stages"][result.stage]
    for frames, batch in result.batches.items():
        rules[frames]["batch_size"] = batch
    t = settings.tune
    record = {
        "date": dt.date.today().isoformat(),
        "hardware": result.hardware,
        "model": result.model,
        "device": t.device,
        "precision": t.precision,
        "memory_mb": t.memory_mb if t.device == "cpu" else None,
        "time_tolerance": t.time_tolerance,
        "reference_bucket": result.reference.frames,
        "probes": sum(len(s.results) for s in result.searches.values()),
        "probed": None if result.probed is None else
        {**asdict(result.probed), "full_depth": result.full_depth},
    }
    doc.setdefault("searched", {})[result.stage] = record
    out = io.StringIO()
    yaml.dump(doc, out)
    atomic_write_text(Path(path), out.getvalue())
    return record
