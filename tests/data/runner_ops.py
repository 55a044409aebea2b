"""Operators for the runner tests (a module of its own so spawn workers can import them)."""

import errno
import os
import time
from pathlib import Path

from osora.data.operator import EnvironmentFault, Operator, OperatorError


class Square(Operator):
    """score_motion rows: motion = n², with behaviour chosen by the input id's prefix:
    "none-" → no output, "bad-" → OperatorError, "boom-" → a bug, "slow-" → sleeps past any
    limit, "die-" → the worker process dies."""

    output_table = "score_motion"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def process(self, row):
        time.sleep(self.delay_s)
        name = row["id"]
        if name.startswith("none-"):
            return []
        if name.startswith("bad-"):
            raise OperatorError(f"{name} is bad on purpose")
        if name.startswith("boom-"):
            raise ZeroDivisionError("division by zero")
        if name.startswith("slow-"):
            time.sleep(60)
        if name.startswith("die-"):
            os._exit(13)
        return [{"id": name, "motion": float(row["n"]) ** 2}]


class Pieces(Operator):
    """clips-like fan-out: input n gives n output rows (like one video giving n clips)."""

    output_table = "score_motion"

    def process(self, row):
        return [{"id": f"{row['id']}-{i}", "motion": float(i)} for i in range(row["n"])]


class Flaky(Operator):
    """Fails with an environment fault the first `failures` times each input is tried (tries
    are counted in files under `tally`, since every try may run in another worker), then
    gives motion = n. `transient` chooses a retryable fault or a permanent one ("key refused");
    "disk-" inputs raise an OperatorError caused by a full disk."""

    output_table = "score_motion"

    def __init__(self, tally: str, failures: int, transient: bool = True):
        self.tally, self.failures, self.transient = tally, failures, transient

    def process(self, row):
        name = row["id"]
        if name.startswith("disk-"):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as err:
                raise OperatorError(f"{name}: cannot write the clip") from err
        count = Path(self.tally) / name
        tries = int(count.read_text()) if count.exists() else 0
        count.write_text(str(tries + 1))
        if tries < self.failures:
            raise EnvironmentFault("endpoint http://127.0.0.1:9/v1 did not answer",
                                   transient=self.transient)
        return [{"id": name, "motion": float(row["n"])}]


class Sleepy(Operator):
    """Sleeps a long time in a child process of the worker (like a long ffmpeg), writing a
    temporary file first; the pids of worker and child go to `pids`."""

    output_table = "score_motion"

    def __init__(self, pids: str):
        self.pids = pids

    def process(self, row):
        import subprocess
        import sys
        import tempfile

        tempfile.NamedTemporaryFile(prefix="osora-test-", delete=False).close()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(self.pids, "a") as f:
            f.write(f"{os.getpid()} {child.pid}\n")
        child.wait()
        return [{"id": row["id"], "motion": 0.0}]
