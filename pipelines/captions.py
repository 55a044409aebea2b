"""DVC stage `captions`: a caption per clip from the configured captioner."""

from osora.data.captions import CaptionOperator
from osora.data.captions.operator import check_captioner_has_text
from osora.data.runner import run_operator
from osora.data.stage import publish, stage_cli
from osora.tracking import stage_run

STAGE = "captions"
PARAMS = "data.captions"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    args, settings, store = stage_cli(
        __doc__,
        {"videos": "receipt of the videos table", "clips": "receipt of the clips table"},
    )
    with stage_run(STAGE, settings, PARAMS) as run:
        videos = run.read_input(store, args.videos, "videos")
        clips = run.read_input(store, args.clips, "clips")
        # The source video's own caption (sidecar or manifest) rides along for the sidecar
        # captioner and as a hint for the others.
        sources = videos.select(["id", "caption"]).rename_columns(["video_id", "source_caption"])
        inputs = clips.join(sources, "video_id", join_type="left outer").sort_by("id")
        check_captioner_has_text(settings.data.captions, inputs)
        operator = CaptionOperator(settings.data.captions, settings.store)
        result = run_operator(operator, inputs, stage=STAGE, store=store,
                              params=settings.data.runner,
                              retry_quarantined=args.retry_quarantined)
        publish(run, store, {"captions": result.rows}, result, args.receipt, args.metrics)


if __name__ == "__main__":
    main()
