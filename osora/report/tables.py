"""The report's tables, holding the logged numbers themselves (the renderer formats them)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timezone

from osora.report.evals import DETAIL, HEADLINE, Evaluation
from osora.report.runs import LOSS, THROUGHPUT, Run

Cell = str | int | float | None  # None: not logged


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Cell, ...]]


def runs_table(runs: list[Run]) -> Table:
    """Every selected run: where it came from (git commit, `*` for a dirty tree; the DVC
    experiment, if any) and its cost."""
    rows = []
    for r in runs:
        commit = r.tags.get("git.commit", "")[:10]
        dirty = "*" if r.tags.get("git.dirty") == "True" else ""
        rows.append((r.stage, r.short_id, r.status, _utc(r.start_ms), commit + dirty,
                     r.dvc_exp, r.metrics.get("cost.wall_seconds"),
                     r.metrics.get("cost.gpu_hours"), r.metrics.get("cost.usd")))
    return Table("Runs", ("stage", "run", "status", "started (UTC)", "commit", "DVC experiment",
                          "wall s", "GPU-hours", "USD"), rows)


def training_table(runs: list[Run]) -> Table:
    """Final and lowest loss, median throughput over the logged windows (the first window
    includes warm-up and compilation, so not the mean), and cost."""
    rows = []
    for r in runs:
        loss = [v for _, v in r.curves.get(LOSS, [])]
        tps = [v for _, v in r.curves.get(THROUGHPUT, [])]
        rows.append((r.stage, r.short_id, r.curves[LOSS][-1][0] if loss else None,
                     loss[-1] if loss else None, min(loss) if loss else None,
                     statistics.median(tps) if tps else None,
                     r.metrics.get("cost.gpu_hours"), r.metrics.get("cost.usd")))
    return Table("Training", ("stage", "run", "last step", "final loss", "min loss",
                              "median tokens/s", "GPU-hours", "USD"), rows)


def evaluation_tables(evaluations: list[Evaluation]) -> list[Table]:
    """Per evaluation stage: each run's scores beside the training runs it is linked to and
    their summed cost (the cost of the model it scored)."""
    stages: dict[str, list[Evaluation]] = {}
    for e in evaluations:
        stages.setdefault(e.run.stage, []).append(e)
    out = []
    for stage, members in stages.items():
        names = [k for k in HEADLINE + DETAIL if any(k in e.scores for e in members)]
        rows = [(e.run.short_id, " ".join(t.label for t in e.trained_by) or "none found",
                 e.train_gpu_hours if e.trained_by else None,
                 e.train_usd if e.trained_by else None, *(e.scores.get(n) for n in names))
                for e in members]
        out.append(Table(f"Evaluation: {stage}", ("run", "trained by", "training GPU-hours",
                                                  "training USD", *names), rows))
    return out


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
