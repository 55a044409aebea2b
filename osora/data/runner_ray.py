"""The runner's Ray Data backend (`runner.backend: ray`): the local pool's operators and work-log
rows, on a Ray cluster (`runner.ray_address`) or on a Ray started for the stage.

    results = _map_ray(op, rows, key, params)  # each input's work-log rows, as they finish

Streaming. The driver never holds the inputs as a list of Python rows. It reads `rows` (the
runner's iterator over the Arrow table of inputs still to do) a block of `commit_every` rows at
a time, pickles each row into a one-column Arrow block (pickled as the local pool sends rows to
its workers, so an operator sees the same values on either backend, whatever the input's
types) and puts the block in Ray's object store, keeping only its reference. One Dataset over
those blocks goes through one actor pool of `workers` actors, so each actor loads its model
(`setup()`) once per stage, and `iter_batches` hands back results as blocks finish: the runner
commits them as they arrive, and a killed stage loses only the blocks in flight. Each output row
is one input's work-log rows, pickled, so an input's rows can never straddle two commits.
All blocks are put before the Dataset starts, since Ray Data plans over a known list of blocks;
that pass costs a put and a metadata task per block (a few ms each), so stages of millions of
rows want a larger `commit_every`, which sets both the block and the commit size. Driver memory
is then the Arrow input plus one object reference per block; the pickled rows live in the
object store, which spills to disk when full, until the stage ends.

GPUs. Each actor asks for `op.num_gpus` GPUs (osora.data.operator), so a GPU operator's workers
are placed on nodes with a free GPU and each sees only its own.

Time limit. Ray Data calls the operator on a thread of its actor, where SIGALRM (the local
pool's limit) cannot reach. A watchdog thread per row takes its place: when the limit passes it
raises RowTimeout in the working thread (PyThreadState_SetAsyncExc) and kills the processes the
row started, such as an ffmpeg stuck on a clip, so the row is quarantined with the local pool's
"timeout: …" reason. The exception lands when that thread next runs Python code: a subprocess
wait returns as soon as its child is killed, but one long C call (a time.sleep, a socket read
without a timeout) is only left when it returns.

Unlike the local pool, a row that kills its worker process (segfault, out of memory) is not
quarantined: Ray restarts the actor and retries its block (the fault tolerance that lets a
stage survive a lost node) up to MAX_CRASHES times, then the stage fails naming Ray's error.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from osora.data.processes import descendants, kill

if TYPE_CHECKING:
    from osora.config.data import RunnerParams
    from osora.data.operator import Operator, Row
    from osora.data.runner import RowPolicy

# osora.data.runner imports this module for its dispatch, so names from it are imported where
# they are used, once both modules are loaded.

# The one column of an input block (a pickled input row) and of an output block (an input's
# pickled list of work-log rows).
ROW, ROWS = "row", "rows"


def _map_ray(
    op: Operator, rows: Iterator[Row], key: str, params: RunnerParams
) -> Iterator[list[Row]]:
    """Work-log rows per input, in completion order (see the module docstring). Disconnects
    from (or stops) Ray at the end if it connected (or started) it."""
    import ray

    from osora.data.runner import MAX_CRASHES, RowPolicy

    source = iter(rows)
    first = list(islice(source, params.commit_every))
    if not first:
        return  # all done already: no Ray to start
    connected = _connect(params)
    try:
        blocks = _put_blocks(chain(first, source), params.commit_every)
        dataset = ray.data.from_arrow_refs(blocks).map_batches(
            _RayRows,
            fn_constructor_args=(op, key, RowPolicy.of(params)),
            batch_size=params.commit_every,  # a block per call (GPU requests need a size)
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=params.workers),
            num_gpus=float(op.num_gpus),
            # A row that kills its actor is retried a few times (a lost node is survived),
            # then the stage fails, rather than retrying it forever (Ray's default).
            max_restarts=MAX_CRASHES,
            max_task_retries=MAX_CRASHES,
        )
        del blocks  # the dataset holds the references now
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for done in batch.column(ROWS).to_pylist():
                yield pickle.loads(done)
    finally:
        if connected:
            ray.shutdown()  # also ends the actors of a stage that stopped early


def _connect(params: RunnerParams) -> bool:
    """Connect to `runner.ray_address`, or start a Ray of `workers` CPUs on this machine, unless
    the caller already did; True when this stage did (and so must let go at its end)."""
    import ray

    if ray.is_initialized():
        return False
    if params.ray_address:  # a cluster: its nodes must have osora installed (Dockerfile)
        ray.init(address=params.ray_address, log_to_driver=False)
        return True
    # Its workers import what this process imports. Started inside the run's temporary folder
    # (TMPDIR), so its files go with it.
    path = os.pathsep.join(p for p in sys.path if p)
    with _private_ray():
        ray.init(num_cpus=params.workers, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    return True


@contextmanager
def _private_ray() -> Iterator[None]:
    """While a Ray for this stage alone starts: it reports no usage statistics, and it listens
    on the loopback only. Ray otherwise takes this node to be the address of the route to the
    internet and listens on every interface; with its cluster mode off (its setting for
    laptops) it uses 127.0.0.1. Both are read when Ray starts, so they are restored after."""
    from ray._private import ray_constants

    saved_env = os.environ.get("RAY_USAGE_STATS_ENABLED")
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster
        if saved_env is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = saved_env


def _put_blocks(rows: Iterator[Row], rows_per_block: int) -> list[Any]:
    """Object-store references to blocks of `rows_per_block` pickled rows; only one block's rows
    are in this process at a time."""
    import ray

    blocks = []
    source = iter(rows)
    while chunk := list(islice(source, rows_per_block)):
        pickled = pa.array([pickle.dumps(row, protocol=5) for row in chunk], pa.binary())
        blocks.append(ray.put(pa.table({ROW: pickled})))
    return blocks


class _RayRows:
    """A Ray Data map_batches callable: `setup()` once per actor, then for each input row of a
    block one output row holding its work-log rows (osora.data.runner.process_row)."""

    def __init__(self, op: Operator, key: str, policy: RowPolicy):
        op.setup()
        self.op, self.key, self.policy = op, key, policy

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = [pickle.dumps(self._rows(pickle.loads(row)), protocol=5)
                for row in batch.column(ROW).to_pylist()]
        return pa.table({ROWS: pa.array(done, pa.binary())})

    def _rows(self, row: Row) -> list[Row]:
        from osora.data.runner import process_row

        op = self.op
        if threading.current_thread() is not threading.main_thread():
            op = _TimeLimited(op, self.policy.timeout_s)  # process_row's SIGALRM cannot fire
        return process_row(op, row, self.key, self.policy)


# -- the time limit off the main thread ----------------------------------------------------------


class _TimeLimited:
    """`op` with each `process` call under a watchdog: what process_row's SIGALRM does on a main
    thread, so each try of a row (process_row retries transient faults) has its own limit."""

    def __init__(self, op: Operator, timeout_s: float):
        self.op, self.timeout_s = op, timeout_s

    def process(self, row: Row) -> list[Row]:
        with _Watchdog(self.timeout_s):
            return self.op.process(row)


class _Watchdog:
    """Raises RowTimeout in the thread that entered it once `timeout_s` have passed, and kills
    the processes started since (their waits then return, so the exception lands).

    Leaving disarms it under a lock, and withdraws an exception sent but not yet raised: a row
    that finished just in time keeps its result, and no RowTimeout can escape into Ray's code
    or the next row. One watchdog per call, so a lock left held by an exception is harmless."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._armed = False
        self._fired = False

    def __enter__(self) -> _Watchdog:
        self._thread = threading.get_ident()
        self._before = descendants()
        self._armed = True
        self._timer = threading.Timer(self.timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._armed = False
            if self._fired:
                _raise_in(self._thread, None)

    def _expire(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self._armed = False
            self._fired = True
            _raise_in(self._thread, _limit_passed(self.timeout_s))
        kill(descendants() - self._before)


def _limit_passed(timeout_s: float) -> type[Exception]:
    """A RowTimeout class whose instances say which limit passed: an exception raised in another
    thread is given as a class and made without arguments."""
    from osora.data.runner import RowTimeout

    message = f"took longer than the {timeout_s:g} s limit per row"  # as process_row says it

    class LimitPassed(RowTimeout):
        def __init__(self, *args: object):
            super().__init__(*(args or (message,)))

    return LimitPassed


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Make `thread_id` raise `exc_type` at its next Python instruction; None withdraws one not
    yet raised."""
    import ctypes

    exc = None if exc_type is None else ctypes.py_object(exc_type)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


