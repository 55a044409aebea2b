"""DVC stage `dit_sample`: render prompts with the last stage's MMDiT (`osora sample`'s code),
measure how well the videos follow them, and draw what came out.

The protocol (osora.eval.sample_eval, params/eval.yaml follow): the held-out prompts
(`--held-out`, the synth grid's combinations never rendered) at every training motion score,
and a few training captions at their own fps and motion score, `follow.seeds` videos each, at
params/dit.yaml sample's size (a bucket of the last stage's set). Each video is scored on its
decoded frames for the prompt's colour, shape and direction (osora.eval.prompt_following) and
its VMAF motion, measured as the data pipeline measured the training clips, against the motion
score asked; each measure is reported per group with a 95% interval beside chance. VBench's
temporal flickering (osora.eval.flicker, no weights) is reported beside them. A contact sheet
and an animated preview of every video go to `--previews` and MLflow.
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
PARAMS = ("dit.sample", "dit.text", "dit.train", "eval.follow", "data.scores.motion")
SUMMARY_SHEET = "contact_sheet_summary.png"  # a few rows to share (docs/evaluation.md shows one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latents", type=Path, required=True, help="receipt of the latents")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the MMDiT to sample")
    parser.add_argument("--autoencoder", type=Path, required=True, help="AE weights to decode")
    parser.add_argument("--held-out", type=Path, default=None,
                        help="captions never trained on, one per line (synth's held_out.txt)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the videos")
    parser.add_argument("--previews", type=Path, required=True,
                        help="folder for the contact sheet and the animated preview")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    args = parser.parse_args()

    from osora.data.scores.motion import vmaf_motion
    from osora.eval import sample_eval
    from osora.eval.flicker import temporal_flickering
    from osora.eval.preview import PreviewItem, contact_sheet, write_previews
    from osora.eval.prompt_following import score_video
    from osora.media.frames import read_video
    from osora.prompts import split_conditioned_text
    from osora.sample.run import SampleRequest, run_sampling

    settings = load_settings()
    store = Store.from_settings(settings.store)
    tables = sorted({f"latents_{s.latents}" for s in settings.dit.train.stages.values()})
    follow = settings.eval.follow
    with stage_run(STAGE, settings, PARAMS, device=settings.dit.sample.device) as run:
        run.log_weights(args.checkpoint, "input.checkpoint")
        missing = [t for t in tables if t not in read_receipt(args.latents)]
        if missing:
            raise SystemExit(f"dit_sample: {args.latents} has no table {missing}")
        trained: dict[str, tuple[int, int | None]] = {}  # caption → its first (fps, motion)
        for text in sorted({text for t in tables
                            for text in _video_texts(run.read_input(store, args.latents, t))}):
            caption, fps, motion = split_conditioned_text(text)
            trained.setdefault(caption, (fps, motion))
        held_out = _read_held_out(args.held_out)
        try:
            jobs = sample_eval.plan_jobs(trained, held_out, follow.train_prompts,
                                         follow.motion_scores)
        except ValueError as error:
            raise SystemExit(f"dit_sample: {args.held_out}: {error}") from None

        width = settings.data.scores.motion.analysis_width
        videos: list[tuple[Path, str, sample_eval.Job, dict]] = []
        for job in jobs:
            request = SampleRequest(list(job.captions), args.checkpoint, args.out / job.folder,
                                    "t2v", autoencoder=args.autoencoder,
                                    overrides={"fps": job.fps, "motion_score": job.motion,
                                               "num_samples": follow.seeds})
            written = run_sampling(settings, request, root=project_root(), progress=False)
            prompts = [c for c in job.captions for _ in range(follow.seeds)]
            for path, prompt in zip(written, prompts, strict=True):
                frames = read_video(path)
                score = {**score_video(frames, prompt), "motion": vmaf_motion(path, width),
                         "flicker": temporal_flickering(frames)}
                videos.append((path, prompt, job, score))

        metrics = {"videos": len(videos), **sample_eval.chance()}
        for group in ("held_out", "train"):
            mine = [(job, s) for _, _, job, s in videos if job.group == group]
            metrics.update(sample_eval.summarise(
                group, [s for _, s in mine], [job.motion for job, _ in mine],
                [s["motion"] for _, s in mine]))
        metrics["temporal_flickering"] = (sum(s["flicker"] for *_, s in videos)
                                          / max(1, len(videos)))
        run.log_metrics(metrics)
        items = [PreviewItem(path, prompt, held_out=job.group == "held_out",
                             note=f"{sample_eval.note(s)}  motion "
                                  + ("" if job.motion is None else f"asked {job.motion}, ")
                                  + f"measured {s['motion']:.2f}")
                 for path, prompt, job, s in videos]
        title = f"dit_sample: {Path(args.checkpoint).parent.name}, {len(items)} videos"
        previews = write_previews(items, args.previews, title=title)
        previews["summary"] = contact_sheet(_summary(items), args.previews / SUMMARY_SHEET,
                                            title=title.replace(f"{len(items)} videos",
                                                                "a few of its videos"))
        for path in previews.values():
            run.log_artifact(path)
        atomic_write_json(args.metrics, metrics)


def _summary(items: list, held_out: int = 4, train: int = 2) -> list:
    """The first video of the first few held-out and training prompts."""
    firsts = {}
    for item in items:
        firsts.setdefault((item.held_out, item.prompt), item)
    rows = list(firsts.values())
    return ([i for i in rows if i.held_out][:held_out]
            + [i for i in rows if not i.held_out][:train])


def _read_held_out(path: Path | None) -> list[str]:
    """The held-out captions, one per line (none without a file: a user's own data has no
    held-out combinations unless they write some)."""
    if path is None:
        return []
    if not path.is_file():
        raise SystemExit(f"dit_sample: --held-out {path}: no such file (the synth stage writes "
                         "it; leave the argument out to score training prompts only)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _video_texts(latents) -> list[str]:
    """The texts of a latents table's video rows (an image's fps is null, its text the caption
    alone: osora.prompts.conditioned_text)."""
    import pyarrow.compute as pc

    return latents.filter(pc.is_valid(latents.column("fps"))).column("text").to_pylist()


if __name__ == "__main__":
    main()
