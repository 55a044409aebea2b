"""DVC stage `dit_sample`: render the eval prompts with the last stage's MMDiT (`osora sample`'s
code) and measure how well the videos follow them.

The eval prompts are the distinct texts of the latent sets the stages trained on, each rendered
(at params/dit.yaml sample's size: a bucket of the last stage's set) as the model saw it in
training (caption, fps and motion score from `split_conditioned_text`); images' texts (the
caption alone: no fps to render a video at) are not eval prompts. On the
tiny synth data the decoded frames are scored against the prompt's shape colour and motion
direction (osora.eval.prompt_following) and compared with chance; VBench's temporal flickering
(osora.eval.flicker, no weights) is reported beside them.

Motion control (osora.eval.motion_control): every video's VMAF motion, measured as the data
pipeline measured its training clips, against the motion score its prompt asked for; and the
first params/eval.yaml motion.contrast_prompts prompts once more at each of
motion.contrast_scores (in <out>/motion_<score>/), so the same prompt asks for little and much.
"""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.fileio import atomic_write_json
from osora.lineage import read_receipt
from osora.paths import project_root
from osora.store import Store
from osora.tracking import stage_run

STAGE = "dit_sample"
PARAMS = ("dit.sample", "dit.text", "dit.train", "eval.motion", "data.scores.motion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latents", type=Path, required=True, help="receipt of the latents")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the MMDiT to sample")
    parser.add_argument("--autoencoder", type=Path, required=True, help="AE weights to decode")
    parser.add_argument("--out", type=Path, required=True, help="folder of the videos")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    args = parser.parse_args()

    from osora.data.scores.motion import vmaf_motion
    from osora.eval.flicker import temporal_flickering
    from osora.eval.motion_control import motion_control
    from osora.eval.prompt_following import follow_rates
    from osora.media.frames import read_video
    from osora.prompts import split_conditioned_text
    from osora.sample.run import SampleRequest, run_sampling

    settings = load_settings()
    store = Store.from_settings(settings.store)
    tables = sorted({f"latents_{s.latents}" for s in settings.dit.train.stages.values()})
    with stage_run(STAGE, settings, PARAMS, device=settings.dit.sample.device) as run:
        run.log_weights(args.checkpoint, "input.checkpoint")
        missing = [t for t in tables if t not in read_receipt(args.latents)]
        if missing:
            raise SystemExit(f"dit_sample: {args.latents} has no table {missing}")
        texts = sorted({text for t in tables
                        for text in _video_texts(run.read_input(store, args.latents, t))})
        # each caption once (VBench names a video by its prompt), with the fps and motion
        # score of its first text
        settings_of: dict[str, tuple[int, int | None]] = {}
        for text in texts:
            caption, fps, motion = split_conditioned_text(text)
            settings_of.setdefault(caption, (fps, motion))
        groups: dict[tuple[int, int | None], list[str]] = {}
        for caption, key in settings_of.items():
            groups.setdefault(key, []).append(caption)

        def render(captions: list[str], fps: int, motion: int | None, out: Path) -> list[Path]:
            request = SampleRequest(captions, args.checkpoint, out, "t2v",
                                    autoencoder=args.autoencoder,
                                    overrides={"fps": fps, "motion_score": motion})
            return run_sampling(settings, request, root=project_root(), progress=False)

        n = settings.dit.sample.num_samples
        videos: list[tuple[Path, str]] = []
        asked: list[tuple[Path, float]] = []  # (video, the motion score its prompt states)
        for (fps, motion), captions in sorted(groups.items(), key=str):
            written = render(captions, fps, motion, args.out)
            videos += zip(written, [c for c in captions for _ in range(n)])
            if motion is not None:
                asked += [(path, motion) for path in written]
        contrast = settings.eval.motion
        by_fps: dict[int, list[str]] = {}
        for caption in list(settings_of)[: contrast.contrast_prompts]:
            by_fps.setdefault(settings_of[caption][0], []).append(caption)
        for score in contrast.contrast_scores:
            for fps, captions in sorted(by_fps.items()):
                written = render(captions, fps, score, args.out / f"motion_{score:g}")
                asked += [(path, score) for path in written]
        width = settings.data.scores.motion.analysis_width
        flicker = [temporal_flickering(read_video(path)) for path, _ in videos]
        metrics = {"videos": len(videos), **follow_rates(videos),
                   "temporal_flickering": sum(flicker) / max(1, len(flicker))}
        if asked:
            metrics.update(motion_control([score for _, score in asked],
                                          [vmaf_motion(path, width) for path, _ in asked]))
        run.log_metrics(metrics)
        atomic_write_json(args.metrics, metrics)


def _video_texts(latents) -> list[str]:
    """The texts of a latents table's video rows (an image's fps is null, its text the caption
    alone: osora.prompts.conditioned_text)."""
    import pyarrow.compute as pc

    return latents.filter(pc.is_valid(latents.column("fps"))).column("text").to_pylist()


if __name__ == "__main__":
    main()
