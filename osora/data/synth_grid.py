"""The synthetic set's training grid: which colour × shape × direction combinations are rendered
and which are held out.

A model that only memorises its training captions cannot draw a combination it never saw; one
that learned colour, shape and direction as separate words can. So `held_out` combinations are
chosen at random among those no other synth video shows, and never rendered; the sample stage
asks for them (osora.data.synth writes their captions to held_out.txt). The other combinations
are shuffled and taken in turn by the grid videos, each with the next speed of `speeds` and a
plain background tint that contrasts with its colour. numpy only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from osora.data.synth_vocab import COLOURS, DIRECTIONS, SHAPES, TINTS

MIN_CONTRAST_RGB = 150.0  # a subject colour this far from its background reads as separate
# The motion score (VMAF motion) sees luma only: a moving shape's score grows with its luma
# contrast as much as with its speed. Keeping every colour's contrast in one band makes the
# score a measure of speed, which the model can learn to follow.
LUMA_CONTRAST = (70.0, 135.0)


@dataclass(frozen=True)
class Combo:
    """What a grid video shows: a `colour` `shape` moving in `direction` over a plain `tint`."""

    colour: str
    shape: str
    direction: str


def all_combos() -> list[Combo]:
    return [Combo(c, s, d) for c, s, d in itertools.product(COLOURS, SHAPES, DIRECTIONS)]


def split_combos(rng: np.random.Generator, held_out: int, shown: set[Combo]
                 ) -> tuple[list[Combo], list[Combo]]:
    """(training combinations in a random order, held-out ones): `held_out` drawn among the
    combinations not in `shown` (those the other synth videos show), so no held-out prompt
    describes any training video."""
    combos = all_combos()
    free = [c for c in combos if c not in shown]
    if held_out > len(free):
        raise ValueError(f"synth.grid.held_out: {held_out} combinations asked for, only "
                         f"{len(free)} are free; lower it")
    chosen = {free[i] for i in rng.choice(len(free), size=held_out, replace=False)}
    training = [c for c in combos if c not in chosen]
    order = rng.permutation(len(training))
    return [training[i] for i in order], sorted(chosen, key=combos.index)


def contrasting_tint(colour: str, rng: np.random.Generator) -> str:
    """A random background tint far enough from the subject colour to read as separate, with a
    luma contrast in LUMA_CONTRAST."""
    rgb = np.array(COLOURS[colour], float)
    ok = [t for t, tint in TINTS.items()
          if np.linalg.norm(np.array(tint, float) - rgb) >= MIN_CONTRAST_RGB
          and LUMA_CONTRAST[0] <= abs(_luma(tint) - _luma(rgb)) <= LUMA_CONTRAST[1]]
    if not ok:
        raise ValueError(f"synth: no background tint contrasts with {colour}")
    return ok[int(rng.integers(len(ok)))]


def _luma(rgb) -> float:
    """BT.601 luma, as the H.264 encoder's RGB → YUV conversion computes it."""
    r, g, b = (float(c) for c in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b
