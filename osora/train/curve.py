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
