"""The sample stage's protocol: which prompts are rendered, and how the videos are summed up.

Two groups of prompts, each rendered with several seeds:
- `held_out`: captions of combinations the model never saw (the synth grid's held_out.txt),
  each asked at every motion score of the training captions, so motion control is measured on
  new prompts too;
- `train`: a few training captions, evenly spread, at the fps and motion score they were
  trained with (memorisation, for comparison).
Per group: the share of videos with the prompt's colour, shape and direction, and the Spearman
ρ between the motion score asked and the one measured, each with its 95% interval
(osora.eval.intervals), beside the chance levels. numpy only (through prompt_following).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from osora.eval.intervals import spearman_interval, wilson_interval
from osora.eval.motion_control import rank_correlation
from osora.eval.prompt_following import chance_levels, parse_prompt

MEASURES = ("colour", "shape", "direction")
MIN_SCORE_SHARE = 0.05  # held-out prompts are asked at motion scores this common in training


@dataclass(frozen=True)
class Job:
    """Videos to render: `captions` × seeds at one fps and motion score, into `folder`."""

    group: str  # "held_out" or "train"
    captions: tuple[str, ...]
    fps: int
    motion: int | None
    folder: str


def scorable(caption: str) -> bool:
    """A single-shot synth caption: the measures can read its colour, shape and direction."""
    try:
        parse_prompt(caption)
    except ValueError:
        return False
    return True


def evenly_spread(items: Sequence[str], k: int) -> list[str]:
    """k items spread over the sorted list (all of them when there are no more than k)."""
    items = sorted(items)
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / max(1, k - 1))] for i in range(k)]


def plan_jobs(trained: dict[str, tuple[int, int | None]], held_out: Sequence[str],
              train_prompts: int, motion_scores: Sequence[int] | None) -> list[Job]:
    """The renders of both groups. `trained`: each training caption's (fps, motion score);
    held-out captions are asked at the commonest training fps and at each of `motion_scores`
    (None: every motion score at least 5% of the training captions state)."""
    leaked = sorted(set(held_out) & set(trained))
    if leaked:
        raise ValueError(f"{len(leaked)} held-out prompts are training captions (e.g. "
                         f"{leaked[0]!r}): they measure memorisation, not generalisation; "
                         "regenerate the synth set (its grid never renders them)")
    jobs: list[Job] = []
    if held_out:
        fps_counts: dict[int, int] = {}
        for fps, _ in trained.values():
            fps_counts[fps] = fps_counts.get(fps, 0) + 1
        fps = max(sorted(fps_counts), key=fps_counts.get)
        scores = motion_scores if motion_scores is not None else common_motion_scores(
            [m for _, m in trained.values()])
        for motion in scores or [None]:
            folder = "held_out" if motion is None else f"held_out/motion_{motion:g}"
            jobs.append(Job("held_out", tuple(held_out), fps, motion, folder))
    chosen = evenly_spread([c for c in trained if scorable(c)], train_prompts)
    by_setting: dict[tuple[int, int | None], list[str]] = {}
    for caption in chosen:
        by_setting.setdefault(trained[caption], []).append(caption)
    for (fps, motion), captions in sorted(by_setting.items(), key=str):
        jobs.append(Job("train", tuple(captions), fps, motion, "train"))
    return jobs


def common_motion_scores(scores: Sequence[int | None], share: float = MIN_SCORE_SHARE
                         ) -> list[int]:
    """The motion scores at least `share` of the training captions state: a score one odd clip
    states cannot be learned, so asking for it measures nothing."""
    stated = [m for m in scores if m is not None]
    return sorted(m for m in set(stated) if stated.count(m) >= share * len(stated))


def summarise(group: str, scores: Sequence[dict], asked: Sequence[int | None],
              measured: Sequence[float]) -> dict[str, float]:
    """`<group>/<measure>` with `_lo`/`_hi` (95%), `<group>/videos`, and for motion
    `<group>/motion_rho` (with its interval) and `<group>/motion_at_<score>` (mean measured).
    `scores`: osora.eval.prompt_following.score_video per video; `asked`/`measured`: each
    video's motion score asked (None: not stated) and VMAF motion measured."""
    n = len(scores)
    out: dict[str, float] = {f"{group}/videos": n}
    if n == 0:
        return out
    for measure in MEASURES:
        k = sum(bool(s[f"{measure}_correct"]) for s in scores)
        lo, hi = wilson_interval(k, n)
        out.update({f"{group}/{measure}": k / n, f"{group}/{measure}_lo": lo,
                    f"{group}/{measure}_hi": hi})
    pairs = [(a, m) for a, m in zip(asked, measured, strict=True) if a is not None]
    if pairs:
        rho = rank_correlation([a for a, _ in pairs], [m for _, m in pairs])
        interval = spearman_interval(rho, len(pairs)) if rho is not None else None
        if rho is not None:
            out[f"{group}/motion_rho"] = rho
        if interval is not None:
            out[f"{group}/motion_rho_lo"], out[f"{group}/motion_rho_hi"] = interval
        for score in sorted({a for a, _ in pairs}):
            got = [m for a, m in pairs if a == score]
            out[f"{group}/motion_at_{score:g}"] = sum(got) / len(got)
    return out


def chance() -> dict[str, float]:
    """`chance/<measure>`: the rate of guessing (and 0 for ρ)."""
    return {f"chance/{k}": v for k, v in chance_levels().items()}


def note(score: dict) -> str:
    """One line for a contact sheet: which measures the video got right."""
    return "  ".join(f"{m} {'✓' if score[f'{m}_correct'] else '✗'}" for m in MEASURES)
