"""Benchmark: shot detection + clip cutting, osora vs the reference tools' approach.

Measures seconds of source video processed per wall-clock second on ONE core (the process and
every ffmpeg it starts are pinned to one CPU, so "per core" is honest), for the same videos:

- osora:     probe → ShotDetector (one ffmpeg pass: scdet + cropdetect) → ClipCutter (per
             video, one ffmpeg process stream-copies every clip that can be copied and one
             re-encodes the rest) → files copied into a local Store; once more with
             `stream_copy: false` (every clip re-encoded, the cutter before stream copy);
- reference: probe → PySceneDetect `detect()` with ContentDetector (OpenCV decode, as the
             Open-Sora tools do) → one ffmpeg process per clip (`-ss/-to` input seek,
             re-encode), the approach of Open-Sora's tools/scene_cut.

Both cut by the same rules (osora.data.clips.plan_spans on their own cuts) with the same
frame-rate and size caps. The "reference" row encodes with osora's x264 settings (the fair
comparison of approaches); the "as shipped" row with libx264's defaults, as the Open-Sora cut
script does. The reference does no border crop (its tools have no border detection). The
approaches alternate run by run; medians of wall and CPU seconds are reported. After the timed
runs, one more untimed osora run says which clips were stream copies: a clip is one when its
packets are exactly the source's packets of its span.

    .venv/bin/python bench/bench_clips.py            # prints a Markdown table + environment
    .venv/bin/python bench/bench_clips.py --repeats 5 --width 1280 --height 720

Not a test: nothing here asserts. Results and their context go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from osora.config import load_settings
from osora.config.data import ClipsParams, SynthParams
from osora.config.store import StoreSettings
from osora.data.clips import ClipCutter, clip_format, plan_spans
from osora.data.shots import ShotDetector, ffmpeg_input
from osora.data.synth import plan, render_frames
from osora.media.ffmpeg import encode_frames, ffmpeg_exe, run_ffmpeg
from osora.media.probe import probe

REPO = Path(__file__).resolve().parents[1]
# Synthetic videos with single shots, borders, shake, cuts and a long take: every code path.
BENCH_VIDEOS = ("clean_00", "clean_01", "black_borders", "camera_shake", "scene_cuts",
                "long_take")

Stages = dict[str, float]  # "<stage> wall" / "<stage> cpu" -> seconds
STAGES = ("probe", "shots", "clips")


def make_videos(out: Path, width: int, height: int, duration_s: float, seed: int,
                keyint_s: float, names: tuple[str, ...] = BENCH_VIDEOS) -> list[Path]:
    """Render the benchmark's synthetic videos (longer and larger than the tests' set), with a
    key frame every `keyint_s` seconds at most (x264 may add more at scene cuts)."""
    params = SynthParams(seed=seed, num_clean=2, width=width, height=height, fps=24,
                         duration_s=duration_s, crf=23)
    paths = []
    for video in plan(params):
        if video.stem not in names:
            continue
        path = out / video.file
        if not path.exists():
            encode_frames(render_frames(video, seed), path, video.fps, crf=video.crf,
                          keyint=round(keyint_s * video.fps))
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children (ffmpeg)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(stages: Stages, name: str, fn: Callable, *args):
    """Call fn(*args), adding its wall and CPU time to stages[f"{name} wall"/"... cpu"].

    CPU seconds are the steadier measure on a shared machine: other processes' load stretches
    wall time, not the CPU time this work needs."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args)
    for key, spent in ((f"{name} wall", time.perf_counter() - wall),
                       (f"{name} cpu", cpu_seconds() - cpu)):
        stages[key] = stages.get(key, 0.0) + spent
    return result


def video_row(path: Path) -> dict:
    info = probe(path)
    return {"id": path.stem, "uri": str(path), "fps": info.fps, "width": info.width,
            "height": info.height, "num_frames": info.num_frames}


def run_osora(paths: list[Path], settings, work: Path,
              stream_copy: bool = True) -> tuple[Stages, int]:
    """probe + ShotDetector + ClipCutter over every video; (stage seconds, clips written)."""
    stages, rows = cut_with_osora(paths, settings, work, stream_copy)
    return stages, len(rows)


def cut_with_osora(paths: list[Path], settings, work: Path,
                   stream_copy: bool = True) -> tuple[Stages, list[dict]]:
    """osora's probe + shots + clips over every video: (stage seconds, the clip rows)."""
    stages: Stages = {}
    detector = ShotDetector(settings.shots)
    params = settings.clips.model_copy(update={"stream_copy": stream_copy})
    cutter = ClipCutter(params, StoreSettings(uri=str(work / "store")))
    cutter.setup()
    rows = []
    for path in paths:
        row = timed(stages, "probe", video_row, path)
        (shots,) = timed(stages, "shots", detector.process, row)
        clip_row = {**shots, "uri": row["uri"], "width": row["width"], "height": row["height"]}
        rows += timed(stages, "clips", cutter.process, clip_row)
    return stages, rows


def packets(path: Path) -> list[bytes]:
    """A file's video packets in decode order."""
    import av

    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


def copied_clips(paths: list[Path], settings, work: Path) -> list[str]:
    """One untimed osora run: "<video> frames a..b: copy/encode" for every clip. A clip is a
    copy when its packets are the source's packets of its span (at a cut point a frame's
    decode position is its number); a re-encode never reproduces the source's bytes."""
    _, rows = cut_with_osora(paths, settings, work)
    sources = {p.stem: packets(p) for p in paths}
    lines = []
    for row in rows:
        start, end = row["start_frame"], row["end_frame"]
        copy = packets(Path(row["uri"])) == sources[row["video_id"]][start:end]
        lines.append(f"{row['video_id']} frames {start}..{end - 1} "
                     f"({(end - start) / row['fps']:.2f} s): {'copy' if copy else 'encode'}")
    return lines


def run_reference(paths: list[Path], settings, work: Path,
                  encoder: dict | None = None) -> tuple[Stages, int]:
    """probe + PySceneDetect ContentDetector + one `ffmpeg -ss/-to` re-encode per clip.

    `encoder` overrides the x264 settings (e.g. the reference tools' own: libx264's defaults);
    the clip rules stay osora's either way."""
    from scenedetect import ContentDetector, detect

    clips_params = settings.clips.model_copy(update=encoder or {})
    stages: Stages = {}
    out = work / "reference"
    out.mkdir(parents=True, exist_ok=True)
    clips = 0
    for path in paths:
        row = timed(stages, "probe", video_row, path)
        scenes = timed(stages, "shots", partial(detect, start_in_scene=True), str(path),
                       ContentDetector())
        cuts = [start.frame_num for start, _ in scenes[1:]]
        spans = plan_spans(row["num_frames"], row["fps"], cuts, clips_params)
        for i, (start, end) in enumerate(spans):
            timed(stages, "clips", reference_cut, path, row, start, end, clips_params,
                  out / f"{path.stem}-{i:03d}.mp4")
        clips += len(spans)
    return stages, clips


def reference_cut(path: Path, row: dict, start: int, end: int, params: ClipsParams,
                  dest: Path) -> None:
    """One clip as the reference tools write it: input seek to the clip, decode, re-encode."""
    fmt = clip_format({**row, "crop_x": 0, "crop_y": 0, "crop_w": row["width"],
                       "crop_h": row["height"]}, params)
    vf = [f"fps={fmt.fps.numerator}/{fmt.fps.denominator}"] if fmt.step > 1 else []
    if fmt.size != (row["width"], row["height"]):
        vf.append(f"scale={fmt.size[0]}:{fmt.size[1]}")
    run_ffmpeg([
        "-y", "-ss", f"{start / row['fps']:.6f}", "-to", f"{end / row['fps']:.6f}",
        "-i", ffmpeg_input(path), *(["-vf", ",".join(vf)] if vf else []),
        "-an", "-c:v", "libx264", "-preset", params.preset, "-crf", str(params.crf),
        "-pix_fmt", "yuv420p", str(dest),
    ])


# name -> runner; the first reference row is the comparison the goal is about (same encoder).
APPROACHES: dict[str, Callable] = {
    "osora": run_osora,
    "osora, stream copy off": partial(run_osora, stream_copy=False),
    "reference": run_reference,
    "reference, x264 defaults (as shipped)": partial(
        run_reference, encoder={"preset": "medium", "crf": 23}
    ),
}


def pin_to_one_core() -> int:
    """Pin this process (and so every child it starts) to one CPU; return which."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def environment() -> dict[str, str]:
    """Versions and hardware to print beside the numbers."""
    import av
    import cv2
    import scenedetect

    ffmpeg_version = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True,
                                    text=True).stdout.split("\n", 1)[0]
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                  if line.startswith("Model name")), platform.processor())
    return {
        "python": platform.python_version(),
        "ffmpeg": ffmpeg_version.removeprefix("ffmpeg version ").split(" Copyright")[0],
        "PyAV": av.__version__,
        "scenedetect": scenedetect.__version__,
        "opencv": cv2.__version__,
        "cpu": f"{model}, {os.cpu_count()} cores (benchmark pinned to 1)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--duration", type=float, default=15.0, help="single-shot videos, s")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--keyint", type=float, default=1.0,
                        help="GOP length of the source videos, s (x264's default is ~10 s)")
    parser.add_argument("--only", type=lambda v: tuple(v.split(",")), default=BENCH_VIDEOS,
                        help=f"comma-separated subset of {','.join(BENCH_VIDEOS)}")
    parser.add_argument("--videos", type=Path, default=None,
                        help="folder to keep the rendered videos in (default: a temporary one)")
    args = parser.parse_args()
    if unknown := set(args.only) - set(BENCH_VIDEOS):
        parser.error(f"--only: no benchmark video {', '.join(sorted(unknown))}")

    settings = load_settings(params_dir=REPO / "params").data
    cpu = pin_to_one_core()
    with tempfile.TemporaryDirectory(prefix="osora-bench-") as tmp:
        folder = args.videos or Path(tmp) / "videos"
        folder.mkdir(parents=True, exist_ok=True)
        paths = make_videos(folder, args.width, args.height, args.duration, args.seed,
                            args.keyint, args.only)
        source_s = sum(probe(p).duration_s for p in paths)
        results: dict[str, list[tuple[Stages, int]]] = {k: [] for k in APPROACHES}
        for repeat in range(args.repeats):  # alternate, so drifting load hits all alike
            for i, (name, fn) in enumerate(APPROACHES.items()):
                work = Path(tmp) / f"run-{repeat}-{i}"
                totals: Stages = {}
                stages, clips = timed(totals, "total", fn, paths, settings, work)
                results[name].append(({**stages, **totals}, clips))
                shutil.rmtree(work, ignore_errors=True)
                print(f"run {repeat + 1}/{args.repeats} {name}: {clips} clips, "
                      f"{totals['total wall']:.2f} s wall, {totals['total cpu']:.2f} s CPU",
                      file=sys.stderr)
        kinds = copied_clips(paths, settings, Path(tmp) / "copied")
    print(report(results, source_s, len(paths), args, cpu, kinds))


def report(results: dict[str, list[tuple[Stages, int]]], source_s: float, n_videos: int,
           args, cpu: int, kinds: list[str]) -> str:
    """The Markdown table of medians (wall and CPU seconds per stage) and the environment."""
    def median(runs, key: str) -> float:
        return statistics.median(stages.get(key, 0.0) for stages, _ in runs)

    total = {name: {kind: median(runs, f"total {kind}") for kind in ("wall", "cpu")}
             for name, runs in results.items()}
    ours = total["osora"]
    lines = [
        f"{n_videos} videos, {source_s:.1f} s of {args.width}x{args.height} 24 fps source "
        f"(key frame every {args.keyint:g} s); "
        f"{args.repeats} runs per approach, alternating; medians; pinned to CPU {cpu}.",
        "",
        "| approach | clips | wall s | CPU s | probe / shots / cut CPU s "
        "| source s per wall s | source s per CPU s | osora faster by (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        t = total[name]
        stage = " / ".join(f"{median(runs, f'{k} cpu'):.2f}" for k in STAGES)
        faster = "—" if name == "osora" else (
            f"{t['wall'] / ours['wall']:.2f}× / {t['cpu'] / ours['cpu']:.2f}×")
        lines.append(
            f"| {name} | {runs[0][1]} | {t['wall']:.2f} | {t['cpu']:.2f} | {stage} "
            f"| {source_s / t['wall']:.1f} | {source_s / t['cpu']:.1f} | {faster} |"
        )
    copies = sum(line.endswith(": copy") for line in kinds)
    lines += ["", f"osora's clips ({copies} of {len(kinds)} stream-copied):",
              *(f"- {line}" for line in kinds)]
    lines += ["", *(f"- {k}: {v}" for k, v in environment().items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
