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

Backends: "local" is a spawn-based process pool (Lance, PyAV and torch are not fork-safe);
"ray" runs the same operators on Ray Data, locally or on a cluster (`runner.ray_address`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from osora.data.operator import Operator, OperatorError, Row
from osora.schemas import schema_of

if TYPE_CHECKING:
    from osora.config.data import RunnerParams
    from osora.store import Store

# Work-log bookkeeping columns, added to the operator's output columns (made nullable).
INPUT, STATUS, REASON = "_input", "_status", "_reason"
OK, EMPTY, QUARANTINED = "ok", "empty", "quarantined"
# An input in flight when a worker process died this many times is quarantined.
MAX_CRASHES = 2


@dataclass(frozen=True)
class RunResult:
    rows: pa.Table  # the operator's output rows for every current input, output_table schema
    quarantine: pa.Table  # (id, stage, reason) for each input set aside
    processed: int  # inputs done in this run
    resumed: int  # inputs found done in the work log and skipped
    seconds: float


def run_operator(
    op: Operator,
    inputs: pa.Table,
    *,
    stage: str,
    store: Store,
    params: RunnerParams,
    key: str = "id",
    progress: bool = True,
) -> RunResult:
    """Apply `op` to every row of `inputs` (unique `key`) and return all of its output."""
    start = time.perf_counter()
    if key not in inputs.column_names:
        raise ValueError(f"stage {stage!r}: input has no key column {key!r}")
    log = WorkLog(store, stage, fingerprint(op), schema_of(op.output_table))
    done = log.done_keys()
    is_done = pc.is_in(inputs.column(key), value_set=pa.array(done, pa.string()))
    todo = inputs.filter(pc.invert(is_done))
    rows = (todo.slice(i, 1).to_pylist()[0] for i in range(todo.num_rows))
    backend = _map_local if params.backend == "local" else _map_ray
    processed = 0
    bar = _progress(todo.num_rows, stage, progress)
    for batch in _batched(backend(op, rows, key, params), params.commit_every):
        log.append(batch)
        processed += len({r[INPUT] for r in batch})
        bar.update(len({r[INPUT] for r in batch}))
    bar.close()
    output, quarantine = log.result(inputs.column(key), stage)
    return RunResult(
        rows=output,
        quarantine=quarantine,
        processed=processed,
        resumed=inputs.num_rows - todo.num_rows,
        seconds=time.perf_counter() - start,
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
            },
            schema=schema_of(f"{stage}_quarantine"),
        )
        return output, quarantine


# -- running one row --------------------------------------------------------------------------


def process_row(op: Operator, row: Row, key: str, timeout_s: float) -> list[Row]:
    """Work-log rows for one input: its output rows, an "empty" marker, or a quarantine row.

    The time limit is a SIGALRM in the worker: it interrupts Python code and subprocess waits
    (subprocess.run kills its child when interrupted), so a stuck ffmpeg cannot hold a worker.
    Signals need the main thread; Ray Data calls operators on another thread, where the limit
    is not enforced by the runner (operators still bound their own ffmpeg calls).
    """
    marker = {INPUT: str(row[key]), STATUS: EMPTY, REASON: None}

    def expire(signum, frame):
        raise TimeoutError(f"took longer than the {timeout_s:g} s limit per row")

    timed = threading.current_thread() is threading.main_thread()
    if timed:
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        out = op.process(row)
    except OperatorError as err:
        return [{**marker, STATUS: QUARANTINED, REASON: err.reason}]
    except TimeoutError as err:
        return [{**marker, STATUS: QUARANTINED, REASON: f"timeout: {err}"}]
    except Exception as err:  # noqa: BLE001 - one bad row must not stop the stage
        reason = f"{type(err).__name__}: {err}".replace("\n", " ")[:2000]
        return [{**marker, STATUS: QUARANTINED, REASON: reason}]
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return [{**r, INPUT: marker[INPUT], STATUS: OK, REASON: None} for r in out] or [marker]


# -- local backend: a spawn process pool -------------------------------------------------------

_WORKER_OP: Operator | None = None


def _worker_init(op: Operator) -> None:
    global _WORKER_OP
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    op.setup()
    _WORKER_OP = op


def _worker_run(row: Row, key: str, timeout_s: float) -> list[Row]:
    assert _WORKER_OP is not None, "worker not initialised"
    return process_row(_WORKER_OP, row, key, timeout_s)


def _map_local(
    op: Operator, rows: Iterator[Row], key: str, params: RunnerParams
) -> Iterator[list[Row]]:
    """Work-log rows per input, in completion order; at most `workers` inputs in flight, so
    memory stays bounded and a crash implicates few inputs."""
    crashes: dict[str, int] = {}
    pending: list[Row] = []  # inputs to (re)submit before taking new ones
    source = iter(rows)
    while True:
        with ProcessPoolExecutor(
            params.workers, mp_context=get_context("spawn"), initializer=_worker_init,
            initargs=(op,),
        ) as pool:
            inflight: dict[Future, Row] = {}
            try:
                while True:
                    while len(inflight) < params.workers:
                        row = pending.pop() if pending else next(source, None)
                        if row is None:
                            break
                        inflight[pool.submit(_worker_run, row, key, params.timeout_s)] = row
                    if not inflight:
                        return
                    finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        out = future.result()  # raises BrokenProcessPool if its worker died
                        del inflight[future]
                        yield out
            except BrokenProcessPool:
                # A worker died (segfault, out of memory): retry its inputs in a fresh pool,
                # quarantining any that were in flight during repeated crashes.
                for row in inflight.values():
                    name = str(row[key])
                    crashes[name] = crashes.get(name, 0) + 1
                    if crashes[name] >= MAX_CRASHES:
                        yield [{INPUT: name, STATUS: QUARANTINED,
                                REASON: "worker process died while processing it"}]
                    else:
                        pending.append(row)


# -- Ray Data backend --------------------------------------------------------------------------


class _RayRows:
    """A Ray Data map_batches callable: setup once per actor, one work-log list per row."""

    def __init__(self, op: Operator, key: str, timeout_s: float, schema: pa.Schema):
        op.setup()
        self.op, self.key, self.timeout_s, self.schema = op, key, timeout_s, schema

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: list[Row] = []
        for row in batch.to_pylist():
            out.extend(process_row(self.op, row, self.key, self.timeout_s))
        return pa.Table.from_pylist(out, schema=self.schema)


def _map_ray(
    op: Operator, rows: Iterator[Row], key: str, params: RunnerParams
) -> Iterator[list[Row]]:
    import ray

    if not ray.is_initialized():
        if params.ray_address:  # a cluster: its nodes must have osora installed (Dockerfile)
            ray.init(address=params.ray_address, log_to_driver=False)
        else:  # local Ray: workers import what this process imports
            import os

            path = os.pathsep.join(p for p in sys.path if p)
            ray.init(num_cpus=params.workers, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
    materialised = list(rows)
    if not materialised:
        return
    dataset = ray.data.from_items(materialised).map_batches(
        _RayRows,
        fn_constructor_args=(op, key, params.timeout_s, work_schema(schema_of(op.output_table))),
        batch_size=1,
        batch_format="pyarrow",
        concurrency=params.workers,
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        by_input: dict[str, list[Row]] = {}
        for r in batch.to_pylist():
            by_input.setdefault(r[INPUT], []).append(r)
        yield from by_input.values()


# -- helpers -----------------------------------------------------------------------------------


def _batched(results: Iterable[list[Row]], inputs_per_batch: int) -> Iterator[list[Row]]:
    """Group per-input results so each commit holds whole inputs (never half of one's rows)."""
    batch: list[Row] = []
    count = 0
    for rows in results:
        batch.extend(rows)
        count += 1
        if count >= inputs_per_batch:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


def _progress(total: int, stage: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=stage, unit="row", disable=not enabled, file=sys.stderr)
