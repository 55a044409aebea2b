"""A 2-rank FSDP2 run under torchrun with asynchronous checkpoints: one rank SIGKILLed mid-run,
the rerun resumes from the newest complete checkpoint and logs exactly the losses of a run that
was never interrupted (docs/recipe.md §6: checkpoints whole or absent); one rank hung,
the watchdogs end the workers, torchrun restarts them and they finish with the same losses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("resume_child.py")


def torchrun(out: Path, restarts: int = 0, **env: str) -> subprocess.CompletedProcess:
    out.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "--max-restarts", str(restarts), str(CHILD), str(out)]
    # a restart must not read the first attempt's addresses from a shared store (pytorch#135712)
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **env}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def losses(out: Path) -> dict[int, str]:
    """step → loss as logged (the last line of a step wins: a resumed run logs it again)."""
    lines = (out / "losses.txt").read_text().split("\n")
    return {int(step): loss for step, loss in (line.split() for line in lines if line)}


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> dict[int, str]:
    """The losses of an uninterrupted run."""
    out = tmp_path_factory.mktemp("straight")
    straight = torchrun(out)
    assert straight.returncode == 0, straight.stderr[-3000:]
    found = losses(out)
    assert sorted(found) == list(range(1, 9))
    return found


def test_killed_rank_then_resume_gives_the_uninterrupted_losses(tmp_path, expected):
    run = tmp_path / "killed"
    crashed = torchrun(run, KILL_AT="5")
    assert crashed.returncode != 0  # torchrun reports the dead worker
    before = losses(run)
    assert max(before) <= 5 and not list(run.glob("checkpoints/step_*6"))
    logged_before = len((run / "losses.txt").read_text().splitlines())
    resumed = torchrun(run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rerun = (run / "losses.txt").read_text().splitlines()[logged_before:]
    first = int(rerun[0].split()[0])
    assert first in (3, 5), rerun  # resumed after the checkpoint of step 2 or 4, not from 0
    assert losses(run) == expected  # bit for bit: the same float reprs
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000006",
                                                                       "step_00000008"]


def test_a_hung_rank_is_restarted_by_torchrun_and_finishes_the_same(tmp_path, expected):
    run = tmp_path / "hung"
    done = torchrun(run, restarts=1, HANG_AT="5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "osora watchdog: no step for" in done.stderr
    assert losses(run) == expected
