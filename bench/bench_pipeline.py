"""The main job as a newcomer runs it: `bash scripts/run_pipeline.sh` in a fresh clone, timed
in all (set-up included) and stage by stage.

Clones the committed HEAD of this repository into a temporary folder, runs the script there,
then reads every stage's MLflow run (start and end time, tag `dvc.stage`) from the clone's
tracking store. Prints a markdown table for docs/benchmarks.md: per stage wall seconds, and the
totals with and without set-up. CPU seconds of the whole job come from the process accounting
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
    began = time.perf_counter()
    done = subprocess.run(["bash", "scripts/run_pipeline.sh"], cwd=clone, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode:
        sys.exit(f"run_pipeline.sh failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                 f"{done.stderr[-3000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    stages = stage_seconds(clone)
    print(f"clone: {clone}")
    print("| stage | wall s |\n|---|---|")
    for stage, seconds in stages:
        print(f"| {stage} | {seconds:.1f} |")
    staged = sum(s for _, s in stages)
    print(f"| all stages (MLflow runs) | {staged:.1f} |")
    print(f"| `bash scripts/run_pipeline.sh` (set-up {'reused' if args.reuse_venv else 'included'}"
          f") | {wall:.1f} wall, {usage.ru_utime + usage.ru_stime:.1f} CPU |")


if __name__ == "__main__":
    main()
