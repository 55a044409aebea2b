"""`osora report`: compare MLflow runs — loss curves, throughput, cost against evaluation
scores — in one HTML file (plots inline) or Markdown (plots as PNGs beside it). By default the
newest finished run of every stage in params/tracking.yaml's experiment; with --experiment,
of the runs of one DVC experiment (`dvc exp run -n NAME`, `dvc exp show`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="compare MLflow runs: loss, throughput, cost vs scores",
                       description=__doc__)
    p.add_argument("--run", action="append", default=[], metavar="ID",
                   help="a run id (repeatable)")
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="the newest --last finished runs of this stage, e.g. dit_stage1 "
                   "(repeatable)")
    p.add_argument("--last", type=int, default=5, help="runs per --stage (default 5)")
    p.add_argument("--experiment", metavar="NAME",
                   help="only the runs of this DVC experiment (a name `dvc exp show` lists): "
                   "the stages it ran")
    p.add_argument("--mlflow-experiment", metavar="NAME",
                   help="MLflow experiment (default: params/tracking.yaml)")
    p.add_argument("--out", type=Path, default=Path("reports/runs.html"),
                   help=".html (self-contained) or .md (PNGs beside it)")
    p.add_argument("--profile", default="tiny", help="params profile (tracking store)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from osora.config import load_settings
    from osora.report.build import build_report
    from osora.report.render import check_format, write_report
    from osora.report.runs import connect
    from osora.tracking import tracking_uri

    check_format(args.out)  # before reading any run
    if args.last < 1:
        raise ValueError(f"--last {args.last}: give at least 1")
    settings = load_settings(args.profile)
    uri = tracking_uri(settings)
    report = build_report(connect(uri), uri,
                          args.mlflow_experiment or settings.tracking.experiment,
                          args.run, args.stage, args.last, args.experiment)
    written = write_report(report, args.out)
    print(f"report: {', '.join(map(str, written))}")
    return 0
