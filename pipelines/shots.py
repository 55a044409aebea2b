"""DVC stage `shots`: scene cuts and black-border crop of every kept video, one decode each."""

import pyarrow.compute as pc

from osora.data.runner import run_operator
from osora.data.shots import ShotDetector
from osora.data.stage import publish, stage_cli
from osora.tracking import stage_run

STAGE = "shots"
PARAMS = "data.shots"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    args, settings, store = stage_cli(
        __doc__,
        {"videos": "receipt of the videos table", "preprocess": "receipt of verdicts"},
    )
    with stage_run(STAGE, settings, PARAMS) as run:
        videos = run.read_input(store, args.videos, "videos")
        verdicts = run.read_input(store, args.preprocess, "preprocess")
        kept = verdicts.filter(verdicts.column("keep")).column("id")
        inputs = videos.filter(pc.is_in(videos.column("id"), value_set=kept.combine_chunks()))
        result = run_operator(ShotDetector(settings.data.shots, settings.store), inputs,
                              stage=STAGE, store=store, params=settings.data.runner,
                              retry_quarantined=args.retry_quarantined)
        cuts = sum(len(c) for c in result.rows.column("cut_frames").to_pylist())
        publish(run, store, {"shots": result.rows}, result, args.receipt, args.metrics,
                {"videos": inputs.num_rows, "cuts": cuts})


if __name__ == "__main__":
    main()
