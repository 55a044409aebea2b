"""The MLflow runs a report compares, read once from the tracking store into plain records:
params, the last value of every metric, tags, and the per-step curves that get plotted.

Runs of one DVC experiment are those stage_run tagged `dvc.exp_name` under `dvc exp run`: the
stages that experiment ran, not those it skipped as unchanged (their runs belong to an earlier
experiment or `dvc repro`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

LOSS = "loss_metrics/global_avg_loss"  # every training loop logs it (torchtitan's name)
THROUGHPUT = "throughput_tps"  # tokens/s per device: torchtitan's throughput(tps) in MLflow
CURVES = (LOSS, THROUGHPUT)
FINISHED = "attributes.status = 'FINISHED'"
EXP_TAG = "dvc.exp_name"  # osora.tracking.ENV_TAGS: the DVC experiment a run belongs to


@dataclass(frozen=True)
class Run:
    run_id: str
    experiment_id: str
    stage: str  # the `osora.stage` tag stage_run sets; the run name for other runs
    status: str
    start_ms: int
    end_ms: int | None  # None while running
    params: dict[str, str]
    metrics: dict[str, float]  # the last value of each
    tags: dict[str, str]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (step, value)

    @property
    def short_id(self) -> str:
        return self.run_id[:8]

    @property
    def label(self) -> str:
        return f"{self.stage} {self.short_id}"

    @property
    def is_training(self) -> bool:
        return LOSS in self.metrics

    @property
    def dvc_exp(self) -> str | None:
        return self.tags.get(EXP_TAG)


def connect(uri: str):
    """An MlflowClient on `uri`; a local sqlite store must exist already (reading must not
    create an empty one)."""
    from mlflow import MlflowClient

    prefix = "sqlite:///"  # then a relative path, or /absolute (SQLAlchemy's form)
    if uri.startswith(prefix) and not Path(uri[len(prefix):].split("?")[0]).is_file():
        raise FileNotFoundError(f"no MLflow store at {uri}: run the pipeline first (`dvc repro`) "
                                "or point params/tracking.yaml uri at the store to report on")
    return MlflowClient(uri)


def experiment_id(client, uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise ValueError(f"no MLflow experiment {name!r} in {uri} (experiments: {known}): "
                         "run the pipeline first (`dvc repro`) or pass --mlflow-experiment")
    return experiment.experiment_id


def select_runs(client, uri: str, experiment: str, run_ids: Iterable[str] = (),
                stages: Iterable[str] = (), last: int = 5, dvc_exp: str | None = None
                ) -> list[Run]:
    """Runs by id (any status, any experiment), plus the newest `last` finished runs of each
    named stage; with neither, the newest finished run of every stage in `experiment`; with
    `dvc_exp`, of that DVC experiment's runs only. Training runs come with their loss and
    throughput curves."""
    from mlflow.exceptions import MlflowException

    run_ids, stages = list(run_ids), list(stages)
    picked = []
    for run_id in run_ids:
        try:
            picked.append(client.get_run(run_id))
        except MlflowException:
            raise ValueError(f"no MLflow run {run_id!r} in {uri}: copy the id from the MLflow "
                             "UI or `osora report` without --run") from None
    if stages or not run_ids:
        by_stage = _finished_by_stage(client, uri, experiment, dvc_exp)
        for stage in stages:
            if stage not in by_stage:
                where = f" (DVC experiment {dvc_exp!r})" if dvc_exp else ""
                raise ValueError(f"no finished run of stage {stage!r} in experiment "
                                 f"{experiment!r}{where} at {uri} (stages with runs: "
                                 f"{', '.join(sorted(by_stage))}): run it first")
            picked += by_stage[stage][:last]
        if not stages:
            picked += [runs[0] for runs in by_stage.values()]
    unique = {run.info.run_id: run for run in picked}
    return [_with_curves(client, _record(run)) for run in unique.values()]


def _finished_by_stage(client, uri: str, experiment: str, dvc_exp: str | None
                       ) -> dict[str, list]:
    """The finished runs of `experiment` (of DVC experiment `dvc_exp` only, if given) by
    stage, newest first; none is an error that says what there is."""
    exp_id = experiment_id(client, uri, experiment)
    finished = f"{FINISHED} and {exp_filter(dvc_exp)}" if dvc_exp else FINISHED
    by_stage: dict[str, list] = {}
    for run in _search(client, exp_id, finished):
        by_stage.setdefault(_stage(run), []).append(run)
    if not by_stage and dvc_exp:
        known = ", ".join(dvc_experiments(client, exp_id)) or "none"
        raise ValueError(f"no finished runs of DVC experiment {dvc_exp!r} in experiment "
                         f"{experiment!r} at {uri} (DVC experiments with runs: {known}): "
                         "`dvc exp show` lists the names")
    if not by_stage:
        raise ValueError(f"no finished runs in experiment {experiment!r} at {uri}: run the "
                         "pipeline first (`dvc repro`)")
    return by_stage


def exp_filter(dvc_exp: str) -> str:
    """The search filter for the runs of DVC experiment `dvc_exp` (MLflow's filters have no
    escapes: a name holding one kind of quote is quoted with the other)."""
    quote = '"' if "'" in dvc_exp else "'"
    if quote in dvc_exp:
        raise ValueError(f"DVC experiment {dvc_exp!r}: a name with both ' and \" cannot be "
                         "searched for in MLflow; rename it (`dvc exp rename`)")
    return f"tags.`{EXP_TAG}` = {quote}{dvc_exp}{quote}"


def dvc_experiments(client, exp_id: str) -> list[str]:
    """The DVC experiments that have runs in an MLflow experiment, sorted."""
    tagged = _search(client, exp_id, f"tags.`{EXP_TAG}` LIKE '%'")
    return sorted({run.data.tags[EXP_TAG] for run in tagged})


def finished_training_runs(client, exp_id: str) -> list[Run]:
    """Every finished run of an experiment that logged a loss (without curves)."""
    has_loss = f"{FINISHED} and metrics.`{LOSS}` > -1e300"
    return [_record(run) for run in _search(client, exp_id, has_loss)]


def _search(client, exp_id: str, filter_string: str) -> Iterator:
    """Runs newest first, page by page."""
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string,
                                  order_by=["attributes.start_time DESC"], max_results=1000,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _stage(run) -> str:
    return run.data.tags.get("osora.stage") or run.info.run_name or run.info.run_id


def _record(run) -> Run:
    return Run(run.info.run_id, run.info.experiment_id, _stage(run), run.info.status,
               run.info.start_time, run.info.end_time, dict(run.data.params),
               dict(run.data.metrics), dict(run.data.tags))


def _with_curves(client, run: Run) -> Run:
    if not run.is_training:
        return run
    curves = {}
    for key in CURVES:
        if key in run.metrics:
            history = client.get_metric_history(run.run_id, key)
            curves[key] = [(m.step, m.value)
                           for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
    return replace(run, curves=curves)
