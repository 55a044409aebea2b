"""DVC stage `captions`: a caption per clip from the configured captioner."""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.data.captions import CaptionOperator
from osora.data.runner import run_operator
from osora.data.stage import publish
from osora.store import Store
from osora.tracking import stage_run

STAGE = "captions"
PARAMS = "data.captions"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=Path, required=True, help="receipt of the videos table")
    parser.add_argument("--clips", type=Path, required=True, help="receipt of the clips table")
    parser.add_argument("--receipt", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()

    settings = load_settings()
    store = Store.from_settings(settings.store)
    with stage_run(STAGE, settings, PARAMS) as run:
        videos = run.read_input(store, args.videos, "videos")
        clips = run.read_input(store, args.clips, "clips")
        # The source video's own caption (sidecar or manifest) rides along for the sidecar
        # captioner and as a hint for the others.
        sources = videos.select(["id", "caption"]).rename_columns(["video_id", "source_caption"])
        inputs = clips.join(sources, "video_id", join_type="left outer").sort_by("id")
        operator = CaptionOperator(settings.data.captions, settings.store)
        result = run_operator(operator, inputs, stage=STAGE, store=store,
                              params=settings.data.runner)
        publish(run, store, {"captions": result.rows}, result, args.receipt, args.metrics)


if __name__ == "__main__":
    main()
