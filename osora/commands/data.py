"""`osora data`: what the data pyramid dropped and why, and retrying quarantined rows."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="what the data pyramid dropped, and retrying it",
                       description=__doc__)
    data_sub = p.add_subparsers(dest="action", required=True)
    show = data_sub.add_parser(
        "dropped", help="every dropped or quarantined row, grouped by cause",
        description="Rows set aside by each stage (preprocess drop rules, <stage>_quarantine "
        "tables, ingest's unreadable paths), grouped by cause with an example reason.")
    show.add_argument("--stage", help="one stage only, e.g. shots, clips, score_motion")
    show.set_defaults(func=run_dropped)
    retry = data_sub.add_parser(
        "retry", help="forget a stage's quarantines so its next run retries them",
        description="Delete the quarantined rows of STAGE from its work logs; then rerun it "
        "with `dvc repro --force --single-item <dvc stage>` and `dvc repro` for the rest.")
    retry.add_argument("stage", help="the runner stage, e.g. shots, clips, captions, "
                       "score_ocr, latents_low")
    retry.set_defaults(func=run_retry)


def _store():
    from osora.config import load_settings
    from osora.store import Store

    return Store.from_settings(load_settings().store)


def run_dropped(args: argparse.Namespace) -> int:
    from osora.data.dropped import dropped

    causes = dropped(_store(), args.stage)
    if not causes:
        print("nothing was dropped" + (f" by {args.stage}" if args.stage else ""))
        return 0
    for cause in causes:
        print(f"{cause.stage:<16} {cause.count:>6}  {cause.example}")
        print(f"{'':<16} {'':>6}  e.g. {', '.join(cause.ids)}")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    from osora.data.dropped import forget_quarantined

    count = forget_quarantined(_store(), args.stage)
    print(f"{args.stage}: {count} quarantined rows will be retried on the stage's next run; "
          "rerun it, e.g. `dvc repro --force --single-item <its dvc stage>`, then `dvc repro`")
    return 0
