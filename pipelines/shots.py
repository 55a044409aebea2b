"""DVC stage `shots`: scene cuts and black-border crop of every kept video, one decode each."""

import argparse
from pathlib import Path

import pyarrow.compute as pc

from osora.config import load_settings
from osora.data.runner import run_operator
from osora.data.shots import ShotDetector
from osora.data.stage import publish
from osora.store import Store
from osora.tracking import stage_run

STAGE = "shots"
PARAMS = "data.shots"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=Path, required=True, help="receipt of the videos table")
    parser.add_argument("--preprocess", type=Path, required=True, help="receipt of verdicts")
    parser.add_argument("--receipt", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()

    settings = load_settings()
    store = Store.from_settings(settings.store)
    with stage_run(STAGE, settings, PARAMS) as run:
        videos = run.read_input(store, args.videos, "videos")
        verdicts = run.read_input(store, args.preprocess, "preprocess")
        kept = verdicts.filter(verdicts.column("keep")).column("id")
        inputs = videos.filter(pc.is_in(videos.column("id"), value_set=kept.combine_chunks()))
        result = run_operator(ShotDetector(settings.data.shots), inputs, stage=STAGE,
                              store=store, params=settings.data.runner)
        cuts = sum(len(c) for c in result.rows.column("cut_frames").to_pylist())
        publish(run, store, {"shots": result.rows}, result, args.receipt, args.metrics,
                {"videos": inputs.num_rows, "cuts": cuts})


if __name__ == "__main__":
    main()
