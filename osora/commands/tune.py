"""`osora tune buckets`: per-bucket batch-size search (docs/recipe.md §6) for params/tune.yaml's
stage, model and hardware; the batch sizes go into params/buckets.yaml (--dry-run: printed
only). Studies live in params/tune.yaml `storage` (default sqlite optuna/tune.db); watch them
with `optuna-dashboard sqlite:///optuna/tune.db`."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="search per-bucket batch sizes (docs/recipe.md §6)",
                       description=__doc__)
    what = p.add_subparsers(dest="what", required=True)
    b = what.add_parser("buckets", help="the largest batch per bucket that fits and keeps pace",
                        description=__doc__)
    b.add_argument("--profile", default="tiny", help="params profile")
    b.add_argument("--dry-run", action="store_true", help="print, do not write params/")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from osora.config import load_settings
    from osora.paths import project_root
    from osora.tune.stage import run_stage

    settings = load_settings(args.profile)
    result = run_stage(settings, project_root(), write=not args.dry_run)
    for frames, batch in sorted(result.batches.items()):
        print(f"  {frames:>4} frames: batch {batch}")
    return 0
