"""The report's figures, drawn with matplotlib's object API (Agg canvas, no pyplot state):
per-step curves with one axes per stage and one line per run, and training cost against each
evaluation score."""

from __future__ import annotations

import io
import math

from matplotlib.figure import Figure

from osora.report.evals import HEADLINE, Evaluation
from osora.report.runs import Run

PANEL = (5.0, 3.2)  # inches per axes
COLUMNS = 3


def curves_figure(runs: list[Run], metric: str, ylabel: str) -> Figure | None:
    """`metric` against step: an axes per stage, a line per run (None: no run logged it)."""
    stages: dict[str, list[Run]] = {}
    for run in runs:
        if run.curves.get(metric):
            stages.setdefault(run.stage, []).append(run)
    if not stages:
        return None
    fig, axes = _grid(len(stages))
    for ax, (stage, members) in zip(axes, stages.items()):
        for run in members:
            steps, values = zip(*run.curves[metric])
            ax.plot(steps, values, label=run.short_id, linewidth=1.2)
        ax.set(title=stage, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def cost_score_figure(evaluations: list[Evaluation]) -> Figure | None:
    """Each headline score against the summed USD of the training runs behind the evaluation
    (None: no evaluation is linked to a training run)."""
    linked = [e for e in evaluations if e.trained_by]
    names = [k for k in HEADLINE if any(k in e.headline for e in linked)]
    if not names:
        return None
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names):
        points: dict[tuple[float, float], list[str]] = {}  # equal points share one label
        for e in linked:
            if name in e.headline:
                points.setdefault((e.train_usd, e.headline[name]), []).append(e.run.short_id)
        ax.scatter([x for x, _ in points], [y for _, y in points])
        for (x, y), ids in points.items():
            ax.annotate(", ".join(ids), (x, y), fontsize="x-small", xytext=(3, 3),
                        textcoords="offset points")
        ax.set(title=name, xlabel="training cost (USD)", ylabel=name)
        ax.grid(alpha=0.3)
    return fig


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes, without matplotlib's version in the metadata (the same runs give
    the same file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _grid(n: int):
    cols = min(n, COLUMNS)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]
