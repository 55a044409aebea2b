"""One run of the batch-size search as `osora tune buckets` and the DVC stage `tune_buckets`
both run it: an MLflow run, the search, the result written into params/buckets.yaml and a
metrics file."""

from __future__ import annotations

from pathlib import Path

from osora.fileio import atomic_write_json
from osora.tracking import stage_run
from osora.tune.run import TuneResult, tune_buckets
from osora.tune.write_back import write_buckets

# What it reads (dvc.yaml tracks these; launch: the probes' ranks). Not params/buckets.yaml:
# it reads only the stage's bucket frame counts there, and writes the file.
PARAMS = ("tune", "dit.model", "dit.text", "dit.train", "ae.latents", "ae.autoencoder",
          "launch.nodes", "launch.nproc_per_node")


def run_stage(settings, root: Path, *, write: bool = True,
              metrics: Path | None = None) -> TuneResult:
    t = settings.tune
    with stage_run("tune_buckets", settings, PARAMS, device=t.device) as run:
        result = tune_buckets(settings, root)
        values = {f"batch/{f}": b for f, b in result.batches.items()}
        values.update(probes=result.probes,
                      probes_in_studies=sum(len(s.results) for s in result.searches.values()))
        run.log_metrics(values)
        if write:
            record = write_buckets(root / "params" / "buckets.yaml", result, settings)
            print(f"tune: params/buckets.yaml stages.{result.stage} updated for "
                  f"{record['hardware']} ({record['date']})")
        if metrics is not None:
            atomic_write_json(metrics, {**values, "hardware": result.hardware})
    return result
