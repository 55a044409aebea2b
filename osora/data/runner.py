"""Mapping an operator over a table: worker processes, time limits, resumption.

    result = run_operator(op, inputs, stage="shots", store=store, params=settings.data.runner)

Work is logged in a Lance table under `<store>/_work/<stage>-<fingerprint>.lance`, appended
every `commit_every` finished rows. Each logged row records the input key it came from and
whether the input was processed ("ok", "empty": no output rows) or quarantined (with the
reason). A run killed at any point and started again skips the input keys already logged, so
it does only the rest and ends with the same result, with no duplicates: a Lance append is
atomic, so a batch is either wholly logged or not at all.

The fingerprint hashes the operator's class, source file and settings (`Operator.describe`),
so work done by other code or other params is never reused, while unchanged inputs of an
updated input table are not recomputed. `_work/` is a cache: deleting it only costs time.

What is logged, and what stops the stage (osora.data.operator says whose fault is what):
- a bad row (OperatorError, or the per-row time limit) is logged as quarantined, with the
  reason and the work log's fingerprint (the operator's code and params). Work logged under
  another fingerprint is never reused, so a fix or a params change retries quarantined rows;
  `retry_quarantined` retries them explicitly.
- an environment fault (missing binary, refused key, unreachable service, full disk) is
  retried with backoff when transient, then stops the stage with the cause; a bug stops it at
  once. Nothing is logged for that row, so a rerun after the fix does it.
- many quarantines of one cause (reasons alike but for names and numbers; `runner.stop_*`)
  mean a broken environment rather than bad input: the stage stops and forgets them.

A stage holds its lease in the store while it runs (osora.data.lease): a second run of it
waits. Worker processes exit when the parent dies, and each run's temporary files live in one
folder that is removed at the end (or by the next run, if the parent was killed).

Backends: "local" is a spawn-based process pool (Lance, PyAV and torch are not fork-safe);
"ray" runs the same operators on Ray Data, locally or on a cluster (`runner.ray_address`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from osora.data.lease import stage_lease
from osora.data.operator import (
    Operator,
    OperatorError,
    Row,
    environment_cause,
    is_transient,
)
from osora.data.processes import alive, descendants, kill
from osora.data.runner_ray import _map_ray
from osora.progress import progress_bar
from osora.schemas import schema_of

if TYPE_CHECKING:
    from osora.config.data import RunnerParams
    from osora.store import Store

# Work-log bookkeeping columns, added to the operator's output columns (made nullable).
INPUT, STATUS, REASON = "_input", "_status", "_reason"
OK, EMPTY, QUARANTINED = "ok", "empty", "quarantined"
# A row that hit an environment fault or a bug: reported to the parent, never logged.
FAILED = "failed"
# An input in flight when a worker process died this many times is quarantined.
MAX_CRASHES = 2


class StageFailed(RuntimeError):
    """The stage stopped: an environment fault, a bug, or too many quarantines of one cause.
    The message names the cause and the fix; what finished before it stays in the work log."""


@dataclass(frozen=True)
class RunResult:
    rows: pa.Table  # the operator's output rows for every current input, output_table schema
    quarantine: pa.Table  # (id, stage, reason, fingerprint) for each input set aside
    processed: int  # inputs done in this run
    resumed: int  # inputs found done in the work log and skipped
    seconds: float
    retried: int = 0  # quarantined inputs forgotten by retry_quarantined and done again


@dataclass(frozen=True)
class RowPolicy:
    """What a worker needs to run one row: its time limit and how to retry transient faults."""

    timeout_s: float
    retries: int
    backoff_s: float

    @classmethod
    def of(cls, params: RunnerParams) -> RowPolicy:
        return cls(params.timeout_s, params.retries, params.retry_backoff_s)


def run_operator(
    op: Operator,
    inputs: pa.Table,
    *,
    stage: str,
    store: Store,
    params: RunnerParams,
    key: str = "id",
    progress: bool = True,
    retry_quarantined: bool = False,
) -> RunResult:
    """Apply `op` to every row of `inputs` (unique `key`) and return all of its output.

    Raises StageFailed when the environment is broken (see the module docstring)."""
    start = time.perf_counter()
    if key not in inputs.column_names:
        raise ValueError(f"stage {stage!r}: input has no key column {key!r}")
    with stage_lease(store, stage, wait_s=params.lease_wait_s), run_temp_dir(stage):
        log = WorkLog(store, stage, fingerprint(op), schema_of(op.output_table))
        log.repair()
        retried = log.forget(inputs.column(key), QUARANTINED) if retry_quarantined else 0
        is_done = pc.is_in(inputs.column(key), value_set=pa.array(log.done_keys(), pa.string()))
        todo = inputs.filter(pc.invert(is_done))
        rows = (todo.slice(i, 1).to_pylist()[0] for i in range(todo.num_rows))
        backend = _map_local if params.backend == "local" else _map_ray
        bar = progress_bar(todo.num_rows, stage, unit="row", enabled=progress)
        guard = QuarantineGuard(stage, params)
        processed = 0
        results = backend(op, rows, key, params)
        try:
            for batch in _committed_batches(results, params.commit_every, stage):
                log.append(batch)
                inputs_done = len({r[INPUT] for r in batch})
                processed += inputs_done
                bar.update(inputs_done)
                guard.check(batch, log)
        finally:
            results.close()  # a stopped stage does not wait for the rows still in flight
            bar.close()
        output, quarantine = log.result(inputs.column(key), stage)
    return RunResult(
        rows=output,
        quarantine=quarantine,
        processed=processed,
        resumed=inputs.num_rows - todo.num_rows,
        seconds=time.perf_counter() - start,
        retried=retried,
    )


def fingerprint(op: Operator) -> str:
    """Hash of what decides the operator's output besides its input: code and settings."""
    cls = type(op)
    source = Path(inspect.getsourcefile(cls) or "").read_bytes()
    settings = json.dumps(op.describe(), sort_keys=True, default=_jsonable)
    digest = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}".encode())
    digest.update(source)
    digest.update(settings.encode())
    return digest.hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    """Pydantic models and other objects in `describe()`, as JSON (secrets stay masked)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return repr(value)


# -- the work log ---------------------------------------------------------------------------


def work_schema(output_schema: pa.Schema) -> pa.Schema:
    """The operator's output columns, nullable (an "empty" or quarantine row has none), plus
    the bookkeeping columns."""
    return pa.schema(
        [pa.field(f.name, f.type, nullable=True) for f in output_schema]
        + [pa.field(INPUT, pa.string(), False), pa.field(STATUS, pa.string(), False),
           pa.field(REASON, pa.string())]
    )


class WorkLog:
    """The Lance table of logged results for one (stage, fingerprint)."""

    def __init__(self, store: Store, stage: str, fp: str, output_schema: pa.Schema):
        self.uri = f"{store.root}/_work/{stage}-{fp}.lance"
        self.fingerprint = fp
        self.options = store.storage_options or None
        self.output_schema = output_schema
        self.schema = work_schema(output_schema)

    def _dataset(self):
        import lance

        try:
            return lance.dataset(self.uri, storage_options=self.options)
        except ValueError as err:
            if "not found" in str(err).lower():
                return None
            raise

    def done_keys(self) -> list[str]:
        dataset = self._dataset()
        if dataset is None:
            return []
        return pc.unique(dataset.to_table(columns=[INPUT]).column(INPUT)).to_pylist()

    def append(self, rows: list[Row]) -> None:
        import lance

        table = pa.Table.from_pylist(rows, schema=self.schema)
        mode = "append" if self._dataset() is not None else "create"
        lance.write_dataset(table, self.uri, mode=mode, storage_options=self.options)

    def repair(self) -> int:
        """Remove inputs logged more than once (two runs at once, before stages held a lease):
        each input keeps the rows of its first commit. Returns the rows removed."""
        dataset = self._dataset()
        if dataset is None:
            return 0
        # A commit writes new fragments, so a row's fragment (the high half of its row
        # address) tells which commit logged it.
        log = dataset.to_table(columns=[INPUT], with_row_address=True)
        fragment = pc.shift_right(log.column("_rowaddr"), 32)
        first = (
            pa.table({INPUT: log.column(INPUT), "fragment": fragment})
            .group_by(INPUT).aggregate([("fragment", "min")])
        )
        keep = {k: f for k, f in zip(first.column(INPUT).to_pylist(),
                                      first.column("fragment_min").to_pylist())}
        extra = [addr for name, frag, addr in zip(log.column(INPUT).to_pylist(),
                                                   fragment.to_pylist(),
                                                   log.column("_rowaddr").to_pylist())
                 if frag != keep[name]]
        if extra:
            dataset.delete(f"_rowaddr IN ({', '.join(map(str, extra))})")
            print(f"repaired work log {self.uri}: removed {len(extra)} rows logged twice",
                  file=sys.stderr, flush=True)
        return len(extra)

    def forget(self, keys: pa.ChunkedArray | pa.Array | list[str], status: str) -> int:
        """Delete the logged rows of these inputs that have `status`, so the next run does them
        again. Returns the number of inputs forgotten."""
        dataset = self._dataset()
        if dataset is None:
            return 0
        keys = pa.chunked_array([keys]) if isinstance(keys, (list, pa.Array)) else keys
        log = dataset.to_table(columns=[INPUT, STATUS])
        hit = log.filter(pc.and_(pc.equal(log.column(STATUS), status),
                                 pc.is_in(log.column(INPUT),
                                          value_set=keys.combine_chunks().cast(pa.string()))))
        names = sorted(set(hit.column(INPUT).to_pylist()))
        if names:
            quoted = ", ".join("'" + n.replace("'", "''") + "'" for n in names)
            dataset.delete(f"{INPUT} IN ({quoted}) AND {STATUS} = '{status}'")
        return len(names)

    def result(self, keys: pa.ChunkedArray, stage: str) -> tuple[pa.Table, pa.Table]:
        """Output rows and quarantine rows of the inputs in `keys` (inputs that left the input
        table since are dropped)."""
        dataset = self._dataset()
        if dataset is None:
            log = self.schema.empty_table()
        else:
            log = dataset.to_table()
            log = log.filter(pc.is_in(log.column(INPUT), value_set=keys.combine_chunks()))
        ok = log.filter(pc.equal(log.column(STATUS), OK))
        output = ok.select(self.output_schema.names).cast(self.output_schema)
        bad = log.filter(pc.equal(log.column(STATUS), QUARANTINED))
        quarantine = pa.table(
            {
                "id": bad.column(INPUT),
                "stage": pa.array([stage] * bad.num_rows, pa.string()),
                "reason": bad.column(REASON),
                "fingerprint": pa.array([self.fingerprint] * bad.num_rows, pa.string()),
            },
            schema=schema_of(f"{stage}_quarantine"),
        )
        return output, quarantine


# -- stopping on a shared cause ------------------------------------------------------------

# Names (paths, URIs, ids) and numbers in a quarantine reason: "the same cause" ignores them.
_SPECIFICS = re.compile(r"\S*[/\\]\S*|\b[0-9a-f]{8,}\b|\d+(?:\.\d+)?")


def cause_of(reason: str) -> str:
    """A quarantine reason without its specifics, e.g. "clip … (…) cannot be read: …"."""
    return _SPECIFICS.sub("…", reason)[:300]


class QuarantineGuard:
    """Stops a run whose quarantines mostly share one cause: with every row failing alike, the
    cause is the environment (a codec missing from this ffmpeg, a full cache), not the data."""

    def __init__(self, stage: str, params: RunnerParams):
        self.stage = stage
        self.fraction = params.stop_fraction
        self.min_rows = params.stop_min_rows
        self.inputs: set[str] = set()
        self.by_cause: dict[str, list[str]] = {}
        self.example: dict[str, str] = {}

    def check(self, batch: list[Row], log: WorkLog) -> None:
        for row in batch:
            self.inputs.add(row[INPUT])
            if row[STATUS] == QUARANTINED:
                cause = cause_of(row[REASON] or "")
                self.by_cause.setdefault(cause, []).append(row[INPUT])
                self.example.setdefault(cause, row[REASON] or "")
        if self.fraction >= 1.0 or not self.by_cause:
            return
        cause, names = max(self.by_cause.items(), key=lambda item: len(item[1]))
        if len(names) < self.min_rows or len(names) < self.fraction * len(self.inputs):
            return
        log.forget(names, QUARANTINED)  # not the rows' fault: a rerun after the fix redoes them
        raise StageFailed(
            f"stage {self.stage!r} stopped: {len(names)} of the {len(self.inputs)} rows done "
            f"in this run were quarantined for one cause, e.g. {self.example[cause]!r}. That "
            "looks like a broken environment rather than bad input, so they were not recorded; "
            "fix the cause and rerun. If the inputs really are bad, raise runner.stop_fraction "
            "(1.0 never stops)"
        )


# -- running one row --------------------------------------------------------------------------


class RowTimeout(Exception):
    """The per-row time limit expired (not a TimeoutError: socket timeouts are those, and they
    are the environment's fault, not the row's)."""


def process_row(op: Operator, row: Row, key: str, policy: RowPolicy) -> list[Row]:
    """Work-log rows for one input: its output rows, an "empty" marker, a quarantine row, or a
    FAILED row (never logged) when the environment or the code failed.

    The time limit is a SIGALRM in the worker: it interrupts Python code and subprocess waits
    (subprocess.run kills its child when interrupted), so a stuck ffmpeg cannot hold a worker.
    Signals need the main thread; on other threads (Ray Data) osora.data.runner_ray enforces
    the limit with a watchdog.
    """
    marker = {INPUT: str(row[key]), STATUS: EMPTY, REASON: None}
    for attempt in range(policy.retries + 1):
        try:
            out = _timed(op, row, policy.timeout_s)
        except RowTimeout as err:
            return [{**marker, STATUS: QUARANTINED, REASON: f"timeout: {err}"}]
        except Exception as err:  # noqa: BLE001 - sorted by whose fault it is below
            fault = environment_cause(err)
            if fault is None and isinstance(err, OperatorError):
                return [{**marker, STATUS: QUARANTINED, REASON: err.reason}]
            if fault is not None and is_transient(fault) and attempt < policy.retries:
                time.sleep(policy.backoff_s * 2**attempt)
                continue
            return [{**marker, STATUS: FAILED, REASON: _failure(err, fault, attempt)}]
        return [{**r, INPUT: marker[INPUT], STATUS: OK, REASON: None} for r in out] or [marker]
    raise AssertionError("unreachable: the last attempt returns")


def _timed(op: Operator, row: Row, timeout_s: float) -> list[Row]:
    def expire(signum, frame):
        raise RowTimeout(f"took longer than the {timeout_s:g} s limit per row")

    timed = threading.current_thread() is threading.main_thread()
    if timed:
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return op.process(row)
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _failure(err: BaseException, fault: BaseException | None, attempt: int) -> str:
    """Why a row failed the stage, for StageFailed: the environment's cause or the bug."""
    words = f"{type(err).__name__}: {err}".replace("\n", " ")[:2000]
    if fault is None:
        return f"a bug, not bad input ({words})"
    tries = f" after {attempt + 1} tries" if attempt else ""
    cause = f"{type(fault).__name__}: {fault}".replace("\n", " ")[:2000]
    return f"the environment failed{tries} ({cause})" + ("" if fault is err else f"; {words}")


# -- local backend: a spawn process pool -------------------------------------------------------

_WORKER_OP: Operator | None = None
PARENT_CHECK_S = 0.5


def _worker_init(op: Operator) -> None:
    global _WORKER_OP
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _exit_with_parent(os.getppid())
    op.setup()
    _WORKER_OP = op


def _exit_with_parent(parent: int) -> None:
    """End this worker (and the ffmpeg or other children it started) once its parent is gone:
    a killed stage must not leave workers holding models in memory."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        kill(descendants())
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _worker_run(row: Row, key: str, policy: RowPolicy) -> list[Row]:
    assert _WORKER_OP is not None, "worker not initialised"
    return process_row(_WORKER_OP, row, key, policy)


def _map_local(
    op: Operator, rows: Iterator[Row], key: str, params: RunnerParams
) -> Iterator[list[Row]]:
    """Work-log rows per input, in completion order; at most `workers` inputs in flight, so
    memory stays bounded and a crash implicates few inputs."""
    crashes: dict[str, int] = {}
    pending: list[Row] = []  # inputs to (re)submit before taking new ones
    source = iter(rows)
    policy = RowPolicy.of(params)
    while True:
        pool = ProcessPoolExecutor(params.workers, mp_context=get_context("spawn"),
                                   initializer=_worker_init, initargs=(op,))
        inflight: dict[Future, Row] = {}
        try:
            while True:
                while len(inflight) < params.workers:
                    row = pending.pop() if pending else next(source, None)
                    if row is None:
                        break
                    inflight[pool.submit(_worker_run, row, key, policy)] = row
                if not inflight:
                    pool.shutdown()
                    return
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in finished:
                    out = future.result()  # raises BrokenProcessPool if its worker died
                    del inflight[future]
                    yield out
        except BrokenProcessPool:
            # A worker died (segfault, out of memory): retry its inputs in a fresh pool,
            # quarantining any that were in flight during repeated crashes.
            _terminate(pool)
            for row in inflight.values():
                name = str(row[key])
                crashes[name] = crashes.get(name, 0) + 1
                if crashes[name] >= MAX_CRASHES:
                    yield [{INPUT: name, STATUS: QUARANTINED,
                            REASON: "worker process died while processing it"}]
                else:
                    pending.append(row)
        except BaseException:
            # The stage stops (a failed row, Ctrl-C, SIGTERM): do not wait for rows in flight.
            _terminate(pool)
            raise


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel queued work and kill its workers (and their children)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        kill(descendants(process.pid))
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)


# -- helpers -----------------------------------------------------------------------------------


def _committed_batches(
    results: Iterable[list[Row]], inputs_per_batch: int, stage: str
) -> Iterator[list[Row]]:
    """Group per-input results so each commit holds whole inputs (never half of one's rows).
    A FAILED input stops the stage: what finished before it is yielded (committed) first."""
    batch: list[Row] = []
    count = 0
    for rows in results:
        failed = [r for r in rows if r[STATUS] == FAILED]
        if failed:
            if batch:
                yield batch
            raise StageFailed(
                f"stage {stage!r} stopped at input {failed[0][INPUT]}: {failed[0][REASON]}. "
                "Nothing was recorded for that input; the inputs finished before it are kept, "
                "so a rerun after the fix resumes"
            )
        batch.extend(rows)
        count += 1
        if count >= inputs_per_batch:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


# Each run's temporary folder: osora-run-<pid>-<random> in the system's temporary directory.
_RUN_DIR = re.compile(r"osora-run-(\d+)-")


@contextmanager
def run_temp_dir(stage: str) -> Iterator[Path]:
    """One temporary folder for the run, its workers and their ffmpeg children (TMPDIR), removed
    at the end. Folders of runs whose process is gone (killed) are removed first. SIGTERM ends
    the run through the same clean-up as Ctrl-C."""
    base = Path(tempfile.gettempdir())
    for old in base.glob("osora-run-*"):
        match = _RUN_DIR.match(old.name)
        if match and not alive(int(match.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"osora-run-{os.getpid()}-", dir=base))
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(path), str(path)
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_term) if on_main else None
    try:
        yield path
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(path, ignore_errors=True)


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)
