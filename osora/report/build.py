"""A report: the selected runs turned into tables and figures, in reading order."""

from __future__ import annotations

from dataclasses import dataclass

from osora.report import evals, plots, tables
from osora.report.runs import LOSS, THROUGHPUT, Run, finished_training_runs, select_runs


@dataclass(frozen=True)
class Plot:
    name: str  # file-name stem for Markdown's PNG files
    title: str
    png: bytes


@dataclass(frozen=True)
class Report:
    title: str
    notes: tuple[str, ...]
    sections: tuple[tables.Table | Plot, ...]


def build_report(client, uri: str, experiment: str, run_ids: list[str], stages: list[str],
                 last: int = 5, dvc_exp: str | None = None) -> Report:
    """The report on the runs `select_runs` picks (see there). Evaluations link to training
    runs of any DVC experiment: one that reran only the evaluation scored the model an earlier
    run trained."""
    runs = select_runs(client, uri, experiment, run_ids, stages, last, dvc_exp)
    training = [r for r in runs if r.is_training]
    evaluations = _evaluations(client, [r for r in runs if evals.is_evaluation(r)])

    sections: list[tables.Table | Plot] = [tables.runs_table(runs)]
    if training:
        sections.append(tables.training_table(training))
        sections += _plot("loss", "Training loss", plots.curves_figure(training, LOSS, "loss"))
        sections += _plot("throughput", "Throughput",
                          plots.curves_figure(training, THROUGHPUT, "tokens/s per device"))
    if evaluations:
        sections += tables.evaluation_tables(evaluations)
        sections += _plot("cost_vs_score", "Training cost against evaluation scores",
                          plots.cost_score_figure(evaluations))
    notes = (f"Tracking store: {uri}", f"MLflow experiment: {experiment}",
             *([f"DVC experiment: {dvc_exp} (the stages it ran; `dvc exp show` has its "
                "metrics)"] if dvc_exp else []),
             "An evaluation is linked to the training runs that wrote the weights it loaded, "
             "back to a fresh start (sha256 tags); runs without those tags, to the newest "
             "training run of each stage that finished before it and recorded the same params "
             "and input table versions (osora/report/evals.py).")
    return Report("osora runs", notes, tuple(sections))


def _evaluations(client, runs: list[Run]) -> list[evals.Evaluation]:
    candidates: dict[str, list[Run]] = {}
    out = []
    for run in runs:
        if run.experiment_id not in candidates:
            candidates[run.experiment_id] = finished_training_runs(client, run.experiment_id)
        out.append(evals.Evaluation(run, evals.trained_by(run, candidates[run.experiment_id])))
    return out


def _plot(name: str, title: str, figure) -> list[Plot]:
    return [] if figure is None else [Plot(name, title, plots.png(figure))]
