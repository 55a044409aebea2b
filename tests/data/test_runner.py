"""The runner: results, quarantine, time limits, worker crashes, kill-and-resume, Ray."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pytest
from runner_ops import Flaky, Pieces, Square

from osora.config.data import RunnerParams
from osora.data.lease import LeaseHeld, stage_lease
from osora.data.runner import StageFailed, WorkLog, cause_of, fingerprint, run_operator
from osora.schemas import schema_of
from osora.store import Store

HERE = Path(__file__).resolve().parent


def params(**change) -> RunnerParams:
    base = dict(backend="local", workers=2, timeout_s=20, commit_every=3)
    return RunnerParams(**{**base, **change})


def as_dict(table: pa.Table) -> dict:
    return dict(zip(table.column("id").to_pylist(), table.column("motion").to_pylist()))


def test_outputs_empty_and_quarantined_rows(tmp_path):
    ids = ["a", "b", "none-c", "bad-d", "slow-f", "g"]
    inputs = pa.table({"id": ids, "n": list(range(len(ids)))})
    result = run_operator(Square(), inputs, stage="t", store=Store(str(tmp_path)),
                          params=params(timeout_s=2), progress=False)
    assert as_dict(result.rows) == {"a": 0.0, "b": 1.0, "g": 25.0}
    reasons = dict(zip(result.quarantine.column("id").to_pylist(),
                       result.quarantine.column("reason").to_pylist()))
    assert reasons["bad-d"] == "bad-d is bad on purpose"
    assert reasons["slow-f"].startswith("timeout: took longer than the 2 s limit")
    assert set(reasons) == {"bad-d", "slow-f"}  # "none-c" was done, with no output
    assert result.quarantine.column("stage").to_pylist() == ["t"] * 2
    # Each quarantine names the code + params that set it aside: another fingerprint retries.
    assert result.quarantine.column("fingerprint").to_pylist() == [fingerprint(Square())] * 2
    assert result.processed == len(ids) and result.resumed == 0


def logged(store: Store, op, stage="t") -> pa.Table:
    return WorkLog(store, stage, fingerprint(op), schema_of(op.output_table))._dataset().to_table()


def test_a_bug_stops_the_stage_and_records_nothing_for_its_row(tmp_path):
    store = Store(str(tmp_path))
    inputs = pa.table({"id": ["a", "b", "boom-c", "d"], "n": [1, 2, 3, 4]})
    with pytest.raises(StageFailed, match=r"boom-c: a bug, not bad input \(ZeroDivisionError"):
        run_operator(Square(), inputs, stage="t", store=store,
                     params=params(workers=1, commit_every=1), progress=False)
    log = logged(store, Square())
    assert "boom-c" not in log.column("_input").to_pylist()
    assert set(log.column("_status").to_pylist()) <= {"ok"}  # nothing quarantined


def test_a_broken_environment_is_retried_then_fails_and_is_done_after_the_fix(tmp_path):
    (tmp_path / "tally").mkdir()
    store = Store(str(tmp_path / "store"))
    inputs = pa.table({"id": ["a", "b"], "n": [1, 2]})
    tally = str(tmp_path / "tally")
    # Transient: two failures each, three retries allowed: every row gets done.
    done = run_operator(Flaky(tally, failures=2), inputs, stage="t", store=store,
                        params=params(retries=3, retry_backoff_s=0.01), progress=False)
    assert as_dict(done.rows) == {"a": 1.0, "b": 2.0}
    assert (tmp_path / "tally" / "a").read_text() == "3"
    # Permanent (a refused key): no retry, the stage fails naming the cause, nothing is logged.
    for f in (tmp_path / "tally").iterdir():
        f.unlink()
    refused = Flaky(tally, failures=1, transient=False)
    with pytest.raises(StageFailed, match=r"environment failed \(EnvironmentFault: endpoint "
                       r"http://127.0.0.1:9/v1 did not answer"):
        run_operator(refused, inputs, stage="t2", store=store,
                     params=params(retries=3, retry_backoff_s=0.01), progress=False)
    assert (tmp_path / "tally" / "a").read_text() == "1" or \
        (tmp_path / "tally" / "b").read_text() == "1"
    # The environment is fixed (the fault happened once): the rerun does every row.
    again = run_operator(refused, inputs, stage="t2", store=store, params=params(),
                         progress=False)
    assert as_dict(again.rows) == {"a": 1.0, "b": 2.0} and again.quarantine.num_rows == 0


def test_a_quarantine_caused_by_a_full_disk_is_a_fault(tmp_path):
    inputs = pa.table({"id": ["disk-a"], "n": [1]})
    with pytest.raises(StageFailed, match="No space left on device"):
        run_operator(Flaky(str(tmp_path), failures=0), inputs, stage="t",
                     store=Store(str(tmp_path / "s")), params=params(), progress=False)


def test_many_quarantines_of_one_cause_stop_the_stage_and_are_forgotten(tmp_path):
    store = Store(str(tmp_path))
    ids = [f"bad-{i:02d}" for i in range(10)] + ["a", "b"]
    inputs = pa.table({"id": ids, "n": list(range(12))})
    with pytest.raises(StageFailed, match="quarantined for one cause"):
        run_operator(Square(), inputs, stage="t", store=store,
                     params=params(commit_every=12, stop_min_rows=8), progress=False)
    assert "quarantined" not in logged(store, Square()).column("_status").to_pylist()
    # Allowed to be bad (stop_fraction 1.0): they are quarantined and recorded.
    result = run_operator(Square(), inputs, stage="t", store=store,
                          params=params(stop_fraction=1.0), progress=False)
    assert result.quarantine.num_rows == 10


def test_the_same_cause_ignores_names_and_numbers():
    a = "score: clip 3f2a9c1b0d (s3://b/clips/1.mp4) cannot be read: frame 12 of 40"
    b = "score: clip 9e8d7c6b5a (/data/x/2.mp4) cannot be read: frame 3 of 7"
    assert cause_of(a) == cause_of(b)
    assert cause_of(a) != cause_of("score: clip 3f2a9c1b0d: no file at /x")


def test_retry_quarantined_redoes_only_those_rows(tmp_path):
    store = Store(str(tmp_path))
    inputs = pa.table({"id": ["a", "bad-b"], "n": [1, 2]})
    run_operator(Square(), inputs, stage="t", store=store, params=params(), progress=False)
    again = run_operator(Square(), inputs, stage="t", store=store, params=params(),
                         progress=False, retry_quarantined=True)
    assert (again.retried, again.processed, again.resumed) == (1, 1, 1)
    assert again.quarantine.column("id").to_pylist() == ["bad-b"]


def test_a_log_with_duplicates_is_repaired(tmp_path):
    """Two runs at once (before stages held a lease) logged inputs twice; every later run
    failed on duplicate ids. The next run removes the second copies."""
    store = Store(str(tmp_path))
    op = Square()
    log = WorkLog(store, "t", fingerprint(op), schema_of(op.output_table))
    row = {"id": "a", "motion": 1.0, "_input": "a", "_status": "ok", "_reason": None}
    log.append([row])
    log.append([row, {**row, "id": "b", "_input": "b"}])
    inputs = pa.table({"id": ["a", "b"], "n": [1, 2]})
    result = run_operator(op, inputs, stage="t", store=store, params=params(), progress=False)
    assert sorted(result.rows.column("id").to_pylist()) == ["a", "b"]
    assert logged(store, op).num_rows == 2


def test_a_second_run_of_a_stage_waits_for_the_lease(tmp_path):
    store = Store(str(tmp_path))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from osora.store import Store; from osora.data.lease import "
         "stage_lease\nwith stage_lease(Store(sys.argv[1]), 't', wait_s=0):\n"
         "    print('held', flush=True); time.sleep(3)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    inputs = pa.table({"id": ["a"], "n": [1]})
    with pytest.raises(LeaseHeld, match=r"stage 't' is already running on store .* pid"):
        run_operator(Square(), inputs, stage="t", store=store, params=params(lease_wait_s=0),
                     progress=False)
    start = time.monotonic()
    result = run_operator(Square(), inputs, stage="t", store=store,
                          params=params(lease_wait_s=30), progress=False)
    assert result.processed == 1 and time.monotonic() - start < 30
    holder.wait()


def test_the_s3_lease_has_one_holder_and_a_dead_holder_expires(s3_server):
    store = Store.from_settings(s3_server.store_settings("lease"))
    with stage_lease(store, "t", wait_s=0, ttl_s=2):
        with pytest.raises(LeaseHeld, match="already running"):
            with stage_lease(store, "t", wait_s=0):
                pass
    with stage_lease(store, "t", wait_s=0):  # released: free again
        pass
    # A holder that died without releasing: its lease expires after ttl_s.
    from osora.data.lease import _S3Lease

    dead = _S3Lease(store, "t", ttl_s=1)
    assert dead.try_acquire()
    dead._stop.set()  # it stops renewing, as a killed process would
    with stage_lease(store, "t", wait_s=10):
        pass


def test_killing_the_stage_ends_its_workers_and_their_children(tmp_path):
    pids = tmp_path / "pids"
    script = (
        "import sys, pyarrow as pa\n"
        "sys.path.insert(0, sys.argv[3])\n"
        "from runner_ops import Sleepy\n"
        "from osora.config.data import RunnerParams\n"
        "from osora.data.runner import run_operator\n"
        "from osora.store import Store\n"
        "p = RunnerParams(backend='local', workers=2, timeout_s=300, commit_every=1)\n"
        "run_operator(Sleepy(sys.argv[2]), pa.table({'id': ['a', 'b'], 'n': [1, 2]}), "
        "stage='t', store=Store(sys.argv[1]), params=p, progress=False)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "s"), str(pids),
                               str(HERE)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            not pids.exists() or len(pids.read_text().splitlines()) < 2):
        time.sleep(0.1)
    started = [int(p) for line in pids.read_text().splitlines() for p in line.split()]
    run_dirs = list(Path(tempfile.gettempdir()).glob(f"osora-run-{parent.pid}-*"))
    assert len(run_dirs) == 1 and any(run_dirs[0].rglob("osora-test-*"))  # workers' temp files
    parent.kill()  # SIGKILL: no clean-up code of the parent runs
    parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(p) for p in started):
        time.sleep(0.1)
    assert not any(alive(p) for p in started)
    # The next run removes the killed run's temporary folder.
    run_operator(Square(), pa.table({"id": ["x"], "n": [1]}), stage="t2",
                 store=Store(str(tmp_path / "s")), params=params(), progress=False)
    assert not run_dirs[0].exists()


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


def test_osora_data_retry_forgets_a_stages_quarantines_under_any_fingerprint(tmp_path):
    from osora.data.dropped import dropped, forget_quarantined

    store = Store(str(tmp_path))
    inputs = pa.table({"id": ["a", "bad-b"], "n": [1, 2]})
    first = run_operator(Square(), inputs, stage="t", store=store, params=params(),
                         progress=False)
    store.sync("t_quarantine", first.quarantine)
    causes = dropped(store, "t")
    assert [(c.stage, c.count, c.example) for c in causes] == [
        ("t", 1, "bad-b is bad on purpose")]
    run_operator(Square(delay_s=0.01), inputs, stage="t", store=store, params=params(),
                 progress=False)  # another fingerprint: a second work log
    assert forget_quarantined(store, "t") == 2
    again = run_operator(Square(), inputs, stage="t", store=store, params=params(),
                         progress=False)
    assert (again.processed, again.resumed) == (1, 1)
