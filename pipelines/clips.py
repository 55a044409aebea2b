"""DVC stage `clips`: cut shots into 2–8 s H.264 clips in the artifact store (an image: one
1-frame PNG clip)."""

import pyarrow.compute as pc

from osora.data.clips import ClipCutter, clip_inputs
from osora.data.runner import run_operator
from osora.data.stage import publish, stage_cli
from osora.tracking import stage_run

STAGE = "clips"
PARAMS = "data.clips"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    args, settings, store = stage_cli(
        __doc__,
        {"videos": "receipt of the videos table", "shots": "receipt of the shots table"},
    )
    with stage_run(STAGE, settings, PARAMS) as run:
        videos = run.read_input(store, args.videos, "videos")
        shots = run.read_input(store, args.shots, "shots")
        inputs = clip_inputs(videos, shots)
        cutter = ClipCutter(settings.data.clips, settings.store)
        result = run_operator(cutter, inputs, stage=STAGE, store=store,
                              params=settings.data.runner,
                              retry_quarantined=args.retry_quarantined)
        seconds = pc.sum(result.rows.column("duration_s")).as_py() or 0.0  # images: null
        images = pc.sum(pc.equal(inputs.column("kind"), "image")).as_py() or 0
        publish(run, store, {"clips": result.rows}, result, args.receipt, args.metrics,
                {"videos": inputs.num_rows - images, "images": images,
                 "clip_seconds": round(seconds, 3)})


if __name__ == "__main__":
    main()
