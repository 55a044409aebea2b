"""`osora cost`: Table 3 (docs/recipe.md §6) from the logged DiT stage runs, or (`--forecast FILE`)
forecast from measured per-bucket throughput before a recipe is launched."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("cost", help="GPU-days and USD per training stage (docs/recipe.md Table 3)",
                       description=__doc__)
    p.add_argument("--profile", default="tiny", help="params profile (stages, batch sizes)")
    p.add_argument("--forecast", type=Path, help="a throughput table (see "
                   "bench/throughput_table5.yaml): forecast instead of report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from osora.config import load_settings
    from osora.cost import gpu_price
    from osora.cost_table import forecast_stage, format_table, logged_costs

    settings = load_settings(args.profile)
    stages = list(settings.dit.train.stages)
    if args.forecast is None:
        from mlflow import MlflowClient
        from osora.tracking import tracking_uri

        rows = logged_costs(MlflowClient(tracking_uri(settings)),
                            settings.tracking.experiment, stages)
        if not rows:
            print("no finished DiT stage runs logged yet: run the pipeline (`dvc repro`)")
            return 0
    else:
        table = yaml.safe_load(args.forecast.read_text())
        price = gpu_price(table["gpu"], settings.cost)
        unknown = sorted(set(table["stages"]) - set(stages))
        if unknown:
            raise ValueError(f"{args.forecast}: stages {unknown} are not in the profile's "
                             f"params/dit.yaml train.stages ({', '.join(stages)})")
        left_out = [s for s in stages if s not in table["stages"]]
        if left_out:  # e.g. the fine-tuning stage of a forecast of the paper's three stages
            print(f"not forecast (no entry in {args.forecast}): {', '.join(left_out)}")
        rows = []
        for stage in (s for s in stages if s in table["stages"]):
            t = table["stages"][stage]
            batch = {f: r.batch_size for f, r in settings.buckets.stages[stage].items()}
            rows.append(forecast_stage(stage, settings.dit.train.stages[stage].steps, t["gpus"],
                                       batch, t["throughput"], t["share"], price,
                                       cp=t.get("cp", 1), data=t.get("data")))
    print(format_table(rows))
    return 0
