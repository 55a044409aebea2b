"""Runs the runner over 24 slow rows, for the kill-and-resume test (which SIGKILLs it)."""

import json
import sys

import pyarrow as pa
from runner_ops import Square

from osora.config.data import RunnerParams
from osora.data.runner import run_operator
from osora.store import Store

if __name__ == "__main__":
    root, workers = sys.argv[1], int(sys.argv[2])
    inputs = pa.table({"id": [f"r{i:02d}" for i in range(24)], "n": list(range(24))})
    params = RunnerParams(backend="local", workers=workers, timeout_s=30, commit_every=2)
    print("started", flush=True)
    result = run_operator(Square(delay_s=0.25), inputs, stage="kill", store=Store(root),
                          params=params, progress=False)
    print(json.dumps({"processed": result.processed}), flush=True)
