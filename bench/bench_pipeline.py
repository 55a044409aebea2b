"""The main job as a newcomer runs it: `bash scripts/run_pipeline.sh` in a fresh clone, timed
in all (set-up included) and stage by stage.

Clones the committed HEAD of this repository into a temporary folder, runs its set-up
(`scripts/setup.sh`, timed apart) and then `scripts/run_pipeline.sh` there, then reads every
stage's MLflow run (start and end time, tag `dvc.stage`) from the clone's tracking store.
Prints a markdown table for docs/benchmarks.md: per stage wall seconds, and the totals with and
without set-up. CPU seconds of the whole job come from the process accounting
of the children (user + system).

    .venv/bin/python bench/bench_pipeline.py [--keep DIR] [--reuse-venv]

`--reuse-venv` links this checkout's .venv into the clone instead of building one (times the
pipeline without set-up only). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage_seconds(clone: Path) -> list[tuple[str, float]]:
    """(stage, wall seconds) of every MLflow run of the clone, in start order."""
    import sqlite3

    db = sqlite3.connect(clone / "mlflow" / "mlflow.db")
    rows = db.execute(
        "SELECT t.value, r.start_time, r.end_time FROM runs r JOIN tags t "
        "ON t.run_uuid = r.run_uuid AND t.key = 'dvc.stage' ORDER BY r.start_time").fetchall()
    return [(stage, (end - start) / 1000) for stage, start, end in rows if end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, default=None, help="clone here and keep it")
    parser.add_argument("--reuse-venv", action="store_true")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="osora-bench-"))
    clone = folder / "osora"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    if args.reuse_venv:
        (clone / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "OSORA_"))}
    # set-up first, timed apart; run_pipeline.sh then finds it done (its check takes seconds)
    setup = 0.0 if args.reuse_venv else _timed(["bash", "scripts/setup.sh"], clone, env)
    wall = _timed(["bash", "scripts/run_pipeline.sh"], clone, env)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    stages = stage_seconds(clone)
    print(f"clone: {clone}")
    print("| stage | wall s |\n|---|---|")
    for stage, seconds in stages:
        print(f"| {stage} | {seconds:.1f} |")
    staged = sum(s for _, s in stages)
    print(f"| all stages (MLflow runs) | {staged:.1f} |")
    if not args.reuse_venv:
        print(f"| `bash scripts/setup.sh` (fresh virtualenv) | {setup:.1f} wall |")
    print(f"| `bash scripts/run_pipeline.sh` after set-up | {wall:.1f} wall |")
    print(f"| both | {setup + wall:.1f} wall, {usage.ru_utime + usage.ru_stime:.1f} CPU |")


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of `command`; exits with its output if it fails."""
    began = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                 f"{done.stderr[-3000:]}")
    return time.perf_counter() - began


if __name__ == "__main__":
    main()
