"""MLflow runs for pipeline stages: params, metrics, artifacts, lineage and cost.

    with stage_run("ingest", settings, "data.ingest") as run:
        ...
        run.log_metrics({"videos": n})
        run.log_output(store, "videos", version)

Every run carries the DVC stage, the git commit (and whether the tree was dirty), under
`dvc exp run` the DVC experiment's name and baseline revision, the table versions it read (as
MLflow datasets `<table>@<version>` too) and wrote, the job's size (params
parallel.world_size, parallel.nodes) and its cost (wall seconds, device kind and count,
GPU-hours, CPU-hours, USD) — logged even when the stage fails, because the time was spent all
the same. The experiment is marked as model training (`EXPERIMENT_KIND`).

One run per stage: under torchrun only rank 0 talks to MLflow. The other ranks get an
`OtherRankRun`, with the same methods, that records nothing (the training loop hands rank 0 the
metrics reduced over all ranks), so a stage of N processes is one run, and the ranks of a fresh
project do not race to create the sqlite store.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from osora.config import Settings
from osora.cost import cost_metrics, detect_resources, gpu_price
from osora.job import Job, current_job
from osora.lineage import TableRef, read_receipt, write_receipt
from osora.paths import project_root, workspace_root

if TYPE_CHECKING:
    import pyarrow as pa

    from osora.store import Store

# MLflow 3's experiment kind for model training, the value the UI's own kind setting writes
# (GenAI experiments open on traces). The 3.17 UI picks its view by the sidebar's "GenAI /
# Model training" switch instead, kept per browser: docs/operations.md "Tracking and cost" gives
# the address that opens the runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

# Variables DVC sets for a stage's command under `dvc exp run` (also --temp and queued runs:
# dvc/repo/experiments/queue/base.py `_stash_exp`), and torchrun for a restarted job.
ENV_TAGS = (
    ("DVC_EXP_NAME", "dvc.exp_name"),
    ("DVC_EXP_BASELINE_REV", "dvc.baseline"),
    ("TORCHELASTIC_RUN_ID", "torchrun.run_id"),  # every attempt's run, under one id
    ("TORCHELASTIC_RESTART_COUNT", "torchrun.restart"),
)


def tracking_uri(settings: Settings) -> str:
    """The configured server, or the main checkout's sqlite store as an absolute URI."""
    if settings.tracking.uri:
        return settings.tracking.uri
    db = workspace_root() / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def artifact_root() -> str:
    """Where a new experiment of the local store keeps artifacts (beside mlflow.db)."""
    return (workspace_root() / "mlflow" / "artifacts").as_uri()


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": 1}} under "x" → {"x.a.b": 1}: MLflow params are flat."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}", sub))
        return out
    return {prefix: value}


def section(settings: Settings, dotted: str) -> Any:
    """settings.data.synth for "data.synth", as JSON values: dumped from the whole Settings, so
    a section that is a dataclass (osora.config.base.params_of) gives its params keys too."""
    node: Any = settings.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[part]
    return node


def public_uri(uri: str) -> str:
    """`uri` without a user or password (s3://key:secret@bucket/... → s3://bucket/...): what
    MLflow records must never carry credentials, which belong in the store's settings."""
    parts = urlsplit(uri)
    if not parts.scheme or "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def mlflow_metric_name(name: str) -> str:
    """MLflow allows only alphanumerics and _ - . / space : in metric names; torchtitan's names
    carry units in parentheses: "mfu(%)" → "mfu_pct", "throughput(tps)" → "throughput_tps",
    "memory/max_reserved(GiB)" → "memory/max_reserved_GiB"."""
    name = name.replace("(%)", "_pct")
    return re.sub(r"\(([^)]*)\)", r"_\1", name).replace("%", "pct")


class StageRun:
    """The handle a stage logs through while its MLflow run is open."""

    def __init__(self, stage: str, run_id: str):
        self.stage = stage
        self.run_id = run_id
        self.outputs: list[TableRef] = []
        self.events: list[dict] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({mlflow_metric_name(k): float(v) for k, v in metrics.items()},
                           step=step)

    def log_event(self, event: dict) -> None:
        """A training event (osora.train.recovery: nan, spike, restored, slow, hang): the metric
        `event/<kind>` at its step, and every event so far in the artifact `events.json`."""
        import mlflow

        self.events.append(event)
        mlflow.log_metric(f"event/{event['kind']}", 1.0, step=event.get("step") or 0)
        mlflow.log_dict({"events": self.events}, "events.json")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_input(self, ref: TableRef) -> None:
        """Record that this run read `ref` (lineage: which version fed which run): the MLflow
        dataset `<table>@<version>` in context "input" (the UI's Dataset column), and the
        tags `lance.input.<table>.version/uri` that reports match runs by."""
        import mlflow
        from osora.lance_dataset import table_dataset

        mlflow.set_tags({
            f"lance.input.{ref.table}.version": ref.version,
            f"lance.input.{ref.table}.uri": public_uri(ref.uri),
        })
        mlflow.log_input(table_dataset(ref), context="input")

    def log_weights(self, path: Path, role: str) -> None:
        """Record a weights file this run read or wrote by content: tag
        `weights.<role>.sha256`, role "output" for what it trains, e.g. "input.init" or
        "input.checkpoint" for what it starts from or evaluates. Reports follow these hashes
        from an evaluation back to the training runs behind it (osora/report/evals.py)."""
        import mlflow
        from osora.fileio import file_sha256

        mlflow.set_tags({f"weights.{role}.sha256": file_sha256(path),
                         f"weights.{role}.path": str(path)})

    def read_input(self, store: "Store", receipt: Path, table: str,
                   columns: list[str] | None = None) -> "pa.Table":
        """The version of `table` that an upstream stage's receipt pins (its `columns`, or all),
        logged as this run's input: every stage reads exactly what the DVC graph says it
        depends on."""
        return store.read(table, version=self.pin_input(receipt, table).version, columns=columns)

    def pin_input(self, receipt: Path, table: str) -> TableRef:
        """The version of `table` that the receipt pins, logged as this run's input, for a
        stage that reads it a few rows at a time (training) rather than whole."""
        ref = read_receipt(receipt)[table]
        self.log_input(ref)
        return ref

    def log_output(self, store: "Store", table: str, version: int) -> TableRef:
        """Record the table version this run produced, tagged `<stage>-<run id>` in Lance.

        A version that an earlier run of this stage already produced (a rerun that changed
        nothing) keeps that run's tag, so the receipt stays byte-identical and DVC does not
        rerun the stages downstream of a table that did not change."""
        import mlflow

        earlier = sorted(t for t, v in store.tags(table).items()
                         if v == version and t.startswith(f"{self.stage}-"))
        tag = earlier[0] if earlier else f"{self.stage}-{self.run_id}"
        if not earlier:
            store.tag(table, tag, version)
        ref = TableRef(table=table, uri=store.table_uri(table), version=version, tag=tag)
        mlflow.set_tags({  # tags: MLflow 3 logs only models as a run's outputs
            f"lance.output.{table}.version": version,
            f"lance.output.{table}.uri": public_uri(ref.uri),
            f"lance.output.{table}.tag": tag,
        })
        self.outputs.append(ref)
        return ref

    def write_receipt(self, path: Path) -> None:
        write_receipt(path, stage=self.stage, outputs=self.outputs)


class OtherRankRun(StageRun):
    """The handle of a rank other than 0: the same calls, none of which reaches MLflow (rank 0
    owns the stage's run). Inputs are still read; events go to stderr."""

    def __init__(self, stage: str, rank: int):
        super().__init__(stage, run_id="")
        self.rank = rank

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Nothing: rank 0 logs the metrics the training loop reduced over ranks."""

    def log_event(self, event: dict) -> None:
        self.events.append(event)
        print(f"{self.stage} rank {self.rank}: {event['kind']} at step {event.get('step')}: "
              f"{event.get('detail', '')}", file=sys.stderr, flush=True)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Nothing: artifacts are rank 0's to log."""

    def log_input(self, ref: TableRef) -> None:
        """Nothing: rank 0 records the inputs (every rank reads the same receipt)."""

    def log_weights(self, path: Path, role: str) -> None:
        """Nothing: rank 0 records the weights."""

    def log_output(self, store: "Store", table: str, version: int) -> TableRef:
        raise RuntimeError(f"{self.stage}: rank {self.rank} recorded the output table "
                           f"{table}; only rank 0 records outputs (guard with dist.is_main)")

    def write_receipt(self, path: Path) -> None:
        raise RuntimeError(f"{self.stage}: rank {self.rank} wrote the receipt {path}; only "
                           "rank 0 writes receipts (guard with dist.is_main)")


@contextmanager
def stage_run(
    stage: str, settings: Settings, params_key: str | tuple[str, ...], *, device: str = "cpu"
) -> Iterator[StageRun]:
    """Open an MLflow run for one execution of `stage`, whose params are `params_key`
    (a dotted path into the settings, e.g. "data.synth", or several — the same keys dvc.yaml
    tracks). On the other ranks of a torchrun job: an `OtherRankRun`, no MLflow."""
    job = current_job()
    if job.rank != 0:
        yield OtherRankRun(stage, job.rank)
        return
    with _logged_run(stage, settings, params_key, device, job) as run:
        yield run


@contextmanager
def _logged_run(stage: str, settings: Settings, params_key: str | tuple[str, ...],
                device: str, job: Job) -> Iterator[StageRun]:
    import mlflow

    resources = detect_resources(device)
    if resources.device_count:
        gpu_price(resources.device_kind, settings.cost)  # fails fast on a GPU with no price
    mlflow.set_tracking_uri(tracking_uri(settings))
    _open_experiment(settings)
    tags = {
        "osora.stage": stage,
        "dvc.stage": os.environ.get("DVC_STAGE", stage),
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))),
        "osora.device_kind": resources.device_kind,
        **{tag: os.environ[env] for env, tag in ENV_TAGS if os.environ.get(env)},
    }

    start = time.perf_counter()
    with _sigterm_as_exit(), mlflow.start_run(run_name=stage, tags=tags) as active:
        keys = (params_key,) if isinstance(params_key, str) else params_key
        params = {k: v for key in keys for k, v in flatten(key, section(settings, key)).items()}
        params["store.uri"] = public_uri(settings.store.uri)
        params["cost.device_kind"] = resources.device_kind
        params["parallel.world_size"] = job.world_size
        params["parallel.nodes"] = job.nodes
        mlflow.log_params(params)
        run = StageRun(stage, active.info.run_id)
        try:
            yield run
        finally:
            wall = time.perf_counter() - start
            mlflow.log_metrics(cost_metrics(wall, resources, settings.cost))


def _open_experiment(settings: Settings) -> None:
    """Make the configured experiment the active one: created on first use (the local store's
    artifacts beside mlflow.db) and marked as model training unless it has a kind already (a
    kind chosen in the UI stays)."""
    import mlflow

    name = settings.tracking.experiment
    if mlflow.get_experiment_by_name(name) is None:
        location = None if settings.tracking.uri else artifact_root()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            pass  # created meanwhile by a concurrent stage
    experiment = mlflow.set_experiment(name)
    key, kind = EXPERIMENT_KIND
    if key not in experiment.tags:
        mlflow.set_experiment_tag(key, kind)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit meanwhile, so the run ends as failed with its cost logged:
    torchrun stops the surviving ranks so when one fails (and SLURM a cancelled job)."""
    if threading.current_thread() is not threading.main_thread():  # only main sets handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _git(*args: str) -> str | None:
    """Git output in the checkout that is running (a DVC temp copy runs its own commit)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=project_root(), capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired, FileNotFoundError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
