"""Operators for the Ray backend's tests (a module of its own so Ray's workers can import them)."""

import os
import subprocess
import sys
import time
from pathlib import Path

from osora.data.operator import Operator


class Stalls(Operator):
    """score_motion rows (motion = n²), except that "slow-" inputs loop in Python for a minute
    and "hang-" inputs wait two minutes on a child process (as on a stuck ffmpeg), writing its
    pid to `<pids>/<input>` first."""

    output_table = "score_motion"

    def __init__(self, pids: str):
        self.pids = pids

    def process(self, row):
        name = row["id"]
        if name.startswith("slow-"):
            end = time.monotonic() + 60
            while time.monotonic() < end:
                time.sleep(0.05)
        if name.startswith("hang-"):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            (Path(self.pids) / name).write_text(str(child.pid))
            child.wait()
        return [{"id": name, "motion": float(row["n"]) ** 2}]


class Where(Operator):
    """motion = n, recording where it ran: `setup()` and each row write "<Ray node id> <GPU ids
    Ray gave this worker>" to a file of their own under `record`."""

    output_table = "score_motion"

    def __init__(self, record: str):
        self.record = record

    def setup(self):
        self._note(f"setup-{os.getpid()}")

    def process(self, row):
        self._note(f"row-{row['id']}")
        return [{"id": row["id"], "motion": float(row["n"])}]

    def _note(self, name: str) -> None:
        import ray

        gpus = ",".join(str(g) for g in ray.get_gpu_ids())
        node = ray.get_runtime_context().get_node_id()
        (Path(self.record) / name).write_text(f"{node} {gpus}")


class WhereOnGpu(Where):
    """Where, run by workers that each hold one GPU."""

    num_gpus = 1.0
