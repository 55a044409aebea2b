"""A 2-rank FSDP2 run under torchrun, asynchronous checkpoints, one rank SIGKILLed mid-run: the
rerun resumes from the newest complete checkpoint and logs exactly the losses of a run that was
never interrupted (RECIPE §6: checkpoints complete or absent, never half)."""

import os
import subprocess
import sys
from pathlib import Path

from free_port import free_port

CHILD = Path(__file__).with_name("resume_child.py")


def torchrun(out: Path, **env: str) -> subprocess.CompletedProcess:
    out.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(CHILD), str(out)]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600)


def losses(out: Path) -> dict[int, str]:
    """step → loss as logged (the last line of a step wins: a resumed run logs it again)."""
    lines = (out / "losses.txt").read_text().split("\n")
    return {int(step): loss for step, loss in (line.split() for line in lines if line)}


def test_killed_rank_then_resume_gives_the_uninterrupted_losses(tmp_path):
    straight = torchrun(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = losses(tmp_path / "straight")
    assert sorted(expected) == list(range(1, 9))

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
