"""The loss curve a training stage writes for `dvc plots`: one CSV row per logged step."""

from __future__ import annotations

import csv
from pathlib import Path


def write_curve(path: Path, rows: list[dict[str, float]]) -> None:
    """rows: {"step": n, metric: value, …} as logged; columns: step, then the metrics sorted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r} - {"step"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", *keys])
        writer.writeheader()
        writer.writerows(rows)


class CurveLog:
    """The loop's `log` callback for a stage: every logged window goes to MLflow (through the
    stage run) and into the curve, which `finish` saves with the stage's summary."""

    def __init__(self, run):
        self.run, self.rows = run, []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.run.log_metrics(metrics, step=step)
        self.rows.append({"step": step, **metrics})

    def finish(self, metrics: dict[str, float], metrics_path: Path, curve_path: Path) -> None:
        """The stage's end: its summary metrics to MLflow and the DVC metrics JSON, the curve
        to its CSV."""
        from osora.fileio import atomic_write_json

        self.run.log_metrics(metrics)
        atomic_write_json(metrics_path, metrics)
        write_curve(curve_path, self.rows)
