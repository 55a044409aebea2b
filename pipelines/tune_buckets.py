"""DVC stage `tune_buckets` (frozen: run it on purpose, `dvc unfreeze tune_buckets && dvc repro
tune_buckets`, or `osora tune buckets`): the per-bucket batch-size search, written into
params/buckets.yaml for the training stages to pick up. This process runs the search; each
probe is a torchrun job of params/launch.yaml's ranks (osora.tune.probe), so run it where the
training stage would run (e.g. on the SLURM allocation's first node)."""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.paths import project_root
from osora.tune.stage import PARAMS  # noqa: F401  (the sections read; dvc.yaml tracks them)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", type=Path, help="also write the batch sizes here (JSON)")
    args = parser.parse_args()
    from osora.tune.stage import run_stage

    run_stage(load_settings(), project_root(), metrics=args.metrics)


if __name__ == "__main__":
    main()
