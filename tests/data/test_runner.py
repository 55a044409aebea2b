"""The runner: results, quarantine, time limits, worker crashes, kill-and-resume, Ray."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from runner_ops import Pieces, Square

from osora.config.data import RunnerParams
from osora.data.runner import fingerprint, run_operator
from osora.store import Store

HERE = Path(__file__).resolve().parent


def params(**change) -> RunnerParams:
    base = dict(backend="local", workers=2, timeout_s=20, commit_every=3)
    return RunnerParams(**{**base, **change})


def as_dict(table: pa.Table) -> dict:
    return dict(zip(table.column("id").to_pylist(), table.column("motion").to_pylist()))


def test_outputs_empty_and_quarantined_rows(tmp_path):
    ids = ["a", "b", "none-c", "bad-d", "boom-e", "slow-f", "g"]
    inputs = pa.table({"id": ids, "n": list(range(len(ids)))})
    result = run_operator(Square(), inputs, stage="t", store=Store(str(tmp_path)),
                          params=params(timeout_s=2), progress=False)
    assert as_dict(result.rows) == {"a": 0.0, "b": 1.0, "g": 36.0}
    reasons = dict(zip(result.quarantine.column("id").to_pylist(),
                       result.quarantine.column("reason").to_pylist()))
    assert reasons["bad-d"] == "bad-d is bad on purpose"
    assert reasons["boom-e"] == "ZeroDivisionError: division by zero"
    assert reasons["slow-f"].startswith("timeout: took longer than the 2 s limit")
    assert set(reasons) == {"bad-d", "boom-e", "slow-f"}  # "none-c" was done, with no output
    assert result.quarantine.column("stage").to_pylist() == ["t"] * 3
    assert result.processed == len(ids) and result.resumed == 0


def test_a_dying_worker_quarantines_only_its_row(tmp_path):
    ids = ["a", "die-b", "c", "d"]
    inputs = pa.table({"id": ids, "n": [1, 2, 3, 4]})
    result = run_operator(Square(), inputs, stage="t", store=Store(str(tmp_path)),
                          params=params(workers=1), progress=False)
    assert as_dict(result.rows) == {"a": 1.0, "c": 9.0, "d": 16.0}
    assert result.quarantine.column("reason").to_pylist() == [
        "worker process died while processing it"
    ]


def test_fan_out_and_a_second_run_resumes_everything(tmp_path):
    inputs = pa.table({"id": ["x", "y", "z"], "n": [2, 0, 3]})
    store = Store(str(tmp_path))
    first = run_operator(Pieces(), inputs, stage="t", store=store, params=params(),
                         progress=False)
    assert sorted(first.rows.column("id").to_pylist()) == ["x-0", "x-1", "z-0", "z-1", "z-2"]
    again = run_operator(Pieces(), inputs, stage="t", store=store, params=params(),
                         progress=False)
    assert (again.processed, again.resumed) == (0, 3)
    assert again.rows.sort_by("id").equals(first.rows.sort_by("id"))
    # Inputs that leave the input table leave the result; new ones are the only work done.
    fewer = pa.table({"id": ["x", "w"], "n": [2, 1]})
    third = run_operator(Pieces(), fewer, stage="t", store=store, params=params(),
                         progress=False)
    assert (third.processed, third.resumed) == (1, 1)
    assert sorted(third.rows.column("id").to_pylist()) == ["w-0", "x-0", "x-1"]


def test_other_settings_do_not_reuse_work():
    assert fingerprint(Square(delay_s=0.0)) != fingerprint(Square(delay_s=0.1))
    assert fingerprint(Square()) == fingerprint(Square())
    assert fingerprint(Square()) != fingerprint(Pieces())


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL the whole process group mid-run, start again: only the rest is done, and the
    result equals an uninterrupted run's, without duplicates."""
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    child = subprocess.Popen(
        [sys.executable, str(HERE / "runner_child.py"), str(killed_root), "2"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert child.stdout.readline().strip() == "started"
    work = killed_root / "_work"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until a few commits have landed
        logs = list(work.glob("kill-*.lance/_versions/*")) if work.exists() else []
        if len(logs) >= 3:
            break
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL

    inputs = pa.table({"id": [f"r{i:02d}" for i in range(24)], "n": list(range(24))})
    p = params(commit_every=2, timeout_s=30)
    resumed = run_operator(Square(delay_s=0.25), inputs, stage="kill",
                           store=Store(str(killed_root)), params=p, progress=False)
    assert 0 < resumed.resumed < 24
    assert resumed.processed == 24 - resumed.resumed
    clean = run_operator(Square(delay_s=0.25), inputs, stage="kill",
                         store=Store(str(clean_root)), params=p, progress=False)
    assert resumed.rows.num_rows == 24
    assert resumed.rows.sort_by("id").equals(clean.rows.sort_by("id"))


@pytest.mark.slow
def test_ray_backend_gives_the_local_result(tmp_path):
    pytest.importorskip("ray")
    ids = ["a", "b", "none-c", "bad-d", "e"]
    inputs = pa.table({"id": ids, "n": list(range(len(ids)))})
    local = run_operator(Square(), inputs, stage="t", store=Store(str(tmp_path / "l")),
                         params=params(), progress=False)
    ray_run = run_operator(Square(), inputs, stage="t", store=Store(str(tmp_path / "r")),
                           params=params(backend="ray"), progress=False)
    assert ray_run.rows.sort_by("id").equals(local.rows.sort_by("id"))
    assert ray_run.quarantine.sort_by("id").equals(local.quarantine.sort_by("id"))
