"""VBench on a folder of VBench-named videos (docs/recipe.md §7): every selected dimension
is scored by VBench itself when its weights and VBench's executable are given, by osora when it
needs no learned weights (temporal flickering), else reported as not evaluated with the reason,
never filled in. Where both ran, the two scores are reported side by side as a check.

The report (a JSON-able dict) holds each dimension's score and source, per-video scores, the
not-evaluated dimensions and why, the osora-vs-VBench checks, and VBench's Quality, Semantic
and Total (osora.eval.vbench_score; None while a dimension they need is missing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from osora.eval.flicker import temporal_flickering
from osora.eval.vbench_score import DIMENSIONS, summarize
from osora.eval.vbench_suite import SuitePrompt, restricted_suite
from osora.eval.vbench_tool import VBenchError, run_dimension, weights_cache
from osora.eval.vbench_weights import missing_weights
from osora.fileio import atomic_write_json

# Dimensions osora computes itself, with no learned weights: frames (T, H, W, 3) → score.
SELF_COMPUTED: dict[str, Callable[[np.ndarray], float]] = {
    "temporal_flickering": temporal_flickering,
}


def video_names(prompt: str, videos_per_prompt: int) -> list[str]:
    """VBench's names of a prompt's videos. A prompt too long to be a file name whole cannot
    be found by VBench: an error, not a silently different name."""
    from osora.sample.outputs import sample_stem

    names = []
    for index in range(videos_per_prompt):
        stem = sample_stem(prompt, index)
        if stem != f"{prompt}-{index}":
            raise ValueError(f"VBench prompt {prompt[:60]!r}…: too long for a file name whole, "
                             "so VBench could not find its videos; drop it from the suite")
        names.append(f"{stem}.mp4")
    return names


def evaluate(params, suite_entries: list[dict], prompts: list[SuitePrompt], videos: Path,
             work: Path) -> dict:
    """Score `videos` (made for `prompts`, params.videos_per_prompt each) on params.dimensions;
    VBench's files (suite, cache of weight links, per-dimension outputs and logs) go to `work`.
    Raises VBenchError after scoring every other dimension when a VBench run failed."""
    from osora.media.frames import read_video

    missing = [n for p in prompts for n in video_names(p.text, params.videos_per_prompt)
               if not (videos / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{videos}: {len(missing)} of the suite's videos are missing, "
                                f"e.g. {missing[0]!r}; sample every prompt "
                                f"{params.videos_per_prompt}× (params/eval.yaml vbench)")
    work.mkdir(parents=True, exist_ok=True)
    suite = work / "suite.json"
    atomic_write_json(suite, restricted_suite(suite_entries, prompts))
    cache = weights_cache(params.weights, work / "cache") if params.executable else None
    report: dict = {"scores": {}, "source": {}, "per_video": {}, "not_evaluated": {},
                    "checks": {}}
    failures = []
    for dim in params.dimensions:
        names = [n for p in prompts if dim in p.dimensions
                 for n in video_names(p.text, params.videos_per_prompt)]
        if not names:
            report["not_evaluated"][dim] = "no prompt of the suite reads it"
            continue
        own = None
        if dim in SELF_COMPUTED:
            own = {n: SELF_COMPUTED[dim](read_video(videos / n)) for n in names}
        missing = missing_weights(dim, params.weights)
        if params.executable and not missing:
            try:
                result = run_dimension(params.executable, dim, videos=videos, suite=suite,
                                       out=work / dim, cache=cache, timeout_s=params.timeout_s)
            except VBenchError as err:
                failures.append(str(err))
                report["not_evaluated"][dim] = f"VBench failed: {err}"
                continue
            report["scores"][dim], report["source"][dim] = result.score, "vbench"
            report["per_video"][dim] = result.per_video
            if own is not None:
                mean = float(np.mean(list(own.values())))
                report["checks"][dim] = {"osora": mean, "vbench": result.score,
                                         "abs_diff": abs(mean - result.score)}
        elif own is not None:
            report["scores"][dim] = float(np.mean(list(own.values())))  # VBench: mean of videos
            report["source"][dim], report["per_video"][dim] = "osora", own
        else:
            report["not_evaluated"][dim] = (
                f"weights not given: params/eval.yaml vbench.weights {missing}" if missing
                else "no VBench executable: params/eval.yaml vbench.executable")
    for dim in DIMENSIONS:
        if dim not in params.dimensions:
            report["not_evaluated"][dim] = "not selected: params/eval.yaml vbench.dimensions"
    summary = summarize(report["scores"])
    report.update(quality=summary.quality, semantic=summary.semantic, total=summary.total,
                  normalized=summary.normalized)
    atomic_write_json(work / "report.json", report)
    if failures:
        raise VBenchError("; ".join(failures) + f" (the other dimensions: {work / 'report.json'})")
    return report


def flat_metrics(report: dict, videos: int, prompts: int) -> dict[str, float]:
    """The report's numbers for DVC and MLflow: counts, each evaluated dimension's raw score,
    and Quality / Semantic / Total where defined."""
    metrics: dict[str, float] = {"videos": videos, "prompts": prompts,
                                 "evaluated": len(report["scores"]),
                                 "not_evaluated": len(report["not_evaluated"])}
    metrics.update(report["scores"])
    for key in ("quality", "semantic", "total"):
        if report[key] is not None:
            metrics[key] = report[key]
    return metrics
