"""Scorer throughput: seconds of clip video scored per wall-second on one core.

    .venv/bin/python bench/bench_scores.py [--repeats 3]

Scores the readable synthetic videos (as clip files) with every scorer that can run here
(aesthetic needs CLIP weights: skipped unless configured), pinned to one CPU, and prints a
Markdown table of medians. Setup (model loading) is timed apart from scoring.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from osora.config import load_settings
from osora.data.scores import SCORERS
from osora.data.synth import generate


def clip_rows(folder: Path) -> list[dict]:
    videos = generate(load_settings().data.synth, folder)
    return [
        {"id": v.file, "uri": str(folder / v.file), "fps": float(v.fps), "width": v.width,
         "height": v.height, "num_frames": v.num_frames, "duration_s": v.duration_s}
        for v in videos if v.expected_reason != "unreadable"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, children too

    settings = load_settings()
    with tempfile.TemporaryDirectory() as tmp:
        rows = clip_rows(Path(tmp))
        seconds_of_video = sum(r["duration_s"] for r in rows)
        print(f"{len(rows)} clips, {seconds_of_video:.1f} s of video, one core\n")
        print("| scorer | setup s | score s (median) | video s per wall s |")
        print("|---|---|---|---|")
        for name, cls in SCORERS.items():
            scorer = cls(getattr(settings.data.scores, name), settings.store)
            if scorer.available():
                print(f"| {name} | — | — | not run: {scorer.available()} |")
                continue
            start = time.perf_counter()
            scorer.setup()
            setup_s = time.perf_counter() - start
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for row in rows:
                    scorer.process(row)
                runs.append(time.perf_counter() - start)
            median = statistics.median(runs)
            print(f"| {name} | {setup_s:.2f} | {median:.2f} | {seconds_of_video / median:.1f} |")


if __name__ == "__main__":
    main()
