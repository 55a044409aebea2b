"""Prompt following on synth-style prompts: does a generated video show the prompt's shape, in
the prompt's colour, moving in the prompt's direction?

The tiny pipeline trains on osora.data.synth's videos: one saturated shape moving in a straight
line over a static, muted background, captioned "A cyan circle moves steadily diagonally up and
to the right across a background of diagonal purple stripes. ...". So three facts of a prompt can
be checked on pixels alone:

- colour: `shape_colour` predicts the moving shape's colour from the frames only (never from
  the prompt), among the synth palette; `colour_correct` compares it with the prompt's colour.
- shape: `predicted_shape` matches the outline of the prompt colour's moving pixels against
  each synth shape drawn at the same centre and area (osora.data.synth_shapes).
- direction: `motion_direction` tracks the centroid of the prompt colour's *moving* pixels;
  `direction_cosine` is the cosine between that velocity and the prompt's direction, and
  `direction_correct` says whether it lies in the prompt's 45° sector of the 8 directions.

Colour membership is soft: each pixel is split between the palette colours and a "none of
them" class by a softmax over −d²/2σ² (d: RGB distance; "none" sits at distance `REJECT_RGB`).
Exact synth colours get weight ≈ 1, blurred or washed-out generated colours a partial weight,
and far-off pixels (the muted backgrounds) ≈ 0, with no hard threshold for codec noise to flip.

Only numpy is imported (and the synth set's vocabulary and shapes, osora.data.synth_vocab and
synth_shapes), so scoring runs anywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from osora.data.synth_shapes import AREA_PER_R2, coverage
from osora.data.synth_vocab import (
    BACKGROUND_WORDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    TINTS,
)

# --- Scoring constants.
SIGMA_RGB = 20.0  # softness of colour membership, RGB units
# Distance at which a pixel is as likely "none" as the colour: synth colours survive H.264 and
# blur well within it. Synth keeps each tint ≥ 150 from its shape's colour, but the textures'
# darkest and brightest pixels come within ~70 (black on green): they are static, so the
# motion-based measures below cancel them rather than this threshold.
REJECT_RGB = 80.0
MIN_MOVING_FRACTION = 1e-3  # below this, nothing moves: colour falls back to the most abundant
MIN_MASS_PX = 4.0  # a frame shows the colour when its moving membership sums to this many pixels
MIN_SHAPE_MASS_PX = 20.0  # … and shows its outline when it sums to this many (a shape of ~5 px)
MIN_SPEED_PX = 0.02  # px/frame: slower centroids count as static (no direction)
SECTOR_COS = math.cos(math.radians(22.5))  # within the 8-way sector of the prompt's direction
STATIC_QUANTILE = 0.1  # per-pixel low quantile over time taken as the static part of a colour


@dataclass(frozen=True)
class PromptFacts:
    """What a synth-style prompt says about its video.

    `direction` is a unit vector (dx, dy) in image coordinates (x right, y down);
    `background` is "noise", "stripes" or "flat", and both background fields are None when the
    prompt does not describe the background in synth's words.
    """

    colour: str
    shape: str
    direction_name: str
    direction: tuple[float, float]
    background_colour: str | None
    background: str | None


def _phrase(words: str) -> str:
    """A regex for the words with any whitespace between them."""
    return r"\s+".join(re.escape(w) for w in words.split())


def _alternation(phrases) -> str:
    # Longest first, so no alternative is cut short by a prefix of another.
    return "|".join(_phrase(p) for p in sorted(phrases, key=len, reverse=True))


_DIRECTION_BY_WORDS = {words: name for name, (_, words) in DIRECTIONS.items()}
_BACKGROUNDS = "|".join(
    f"(?P<{kind}>" + _phrase(words.format("TINT")).replace("TINT", f"(?:{_alternation(TINTS)})")
    + ")"
    for kind, words in BACKGROUND_WORDS.items()
)
_SUBJECT = re.compile(
    rf"\ban?\s+(?P<colour>{_alternation(COLOURS)})\s+(?P<shape>{_alternation(SHAPES)})"
    rf"\s+(?:that\s+)?moves\s+(?:steadily\s+)?(?P<direction>{_alternation(_DIRECTION_BY_WORDS)})"
    rf"(?:\s+across\s+(?:{_BACKGROUNDS}))?",
    re.IGNORECASE,
)


def parse_prompt(prompt: str) -> PromptFacts:
    """The shape colour, shape, direction and background of a single-shot synth caption.

    Accepts synth's wording anywhere in the text (so conditioned prompts ending in
    "24 FPS, 4 motion score." parse too), case-insensitively. Raises ValueError naming the
    prompt when no shape-and-motion clause is found, or when several are (a multi-shot caption:
    one video-level score cannot say which shot it measured).
    """
    matches = list(_SUBJECT.finditer(prompt))
    if not matches:
        raise ValueError(
            f"cannot parse prompt {prompt!r}: expected synth's wording, e.g. 'A red circle moves "
            f"steadily from left to right across a plain grey background.' (colours: "
            f"{', '.join(COLOURS)}; shapes: {', '.join(SHAPES)})"
        )
    if len(matches) > 1:
        raise ValueError(
            f"cannot score prompt {prompt!r}: it describes {len(matches)} shots; prompt "
            "following is measured on single-shot prompts only"
        )
    return _facts(matches[0])


def _facts(m: re.Match) -> PromptFacts:
    name = _DIRECTION_BY_WORDS[" ".join(m["direction"].lower().split())]
    dx, dy = DIRECTIONS[name][0]
    norm = math.hypot(dx, dy)  # synth's diagonals are rounded to 0.7071
    kind = next((k for k in BACKGROUND_WORDS if m[k]), None)
    tint = None
    if kind:
        tint = next(t for t in TINTS if re.search(rf"\b{t}\b", m[kind], re.IGNORECASE))
    return PromptFacts(
        colour=m["colour"].lower(),
        shape=m["shape"].lower(),
        direction_name=name,
        direction=(dx / norm, dy / norm),
        background_colour=tint,
        background=kind,
    )


# ---------------------------------------------------------------------------------------------
# Colour membership.


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape) == 0:
        raise ValueError(f"expected RGB frames (F, H, W, 3), got shape {frames.shape}")
    return frames


def _membership(frame: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Soft membership (H, W, K) of each pixel in each of K colours (K, 3); the rest of each
    pixel's weight, 1 − sum over K, is "none of them"."""
    # |p − c|² expanded: a matmul, without an (H, W, K, 3) temporary; rounding can dip below 0.
    d2 = (frame**2).sum(-1, keepdims=True) - 2 * frame @ colours.T + (colours**2).sum(-1)
    logits = -np.maximum(d2, 0.0) / (2 * SIGMA_RGB**2)  # (H, W, K)
    reject = -(REJECT_RGB**2) / (2 * SIGMA_RGB**2)
    top = np.maximum(logits.max(-1, keepdims=True), reject)  # (H, W, 1): stable softmax
    e = np.exp(logits - top)
    return e / (e.sum(-1, keepdims=True) + np.exp(reject - top))


def _smoothed(frame: np.ndarray) -> np.ndarray:
    """The frame (H, W, 3) as float32, 3×3 box-averaged (edges repeated): a third of the
    per-pixel noise of a generated video, while a shape of 10+ px keeps its colour inside."""
    f = np.pad(frame.astype(np.float32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = frame.shape[:2]
    return sum(f[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def colour_scores(
    frames: np.ndarray, palette: Mapping[str, tuple[int, int, int]] = COLOURS
) -> dict[str, dict[str, float]]:
    """Per palette colour: "moving", the mean over pixels of the std over time of its membership
    that is not frame-to-frame flicker, and "abundance", its mean membership.

    "Not flicker": the variance minus half the mean squared difference of successive frames
    (von Neumann's noise estimate). Independent noise from frame to frame has variance ≈ half
    its squared step, so it cancels; a shape passing over a pixel changes its membership only
    as it enters and leaves, so its variance stays. 0 for static content, and for frames in
    random order.
    """
    frames = _check_frames(frames)
    colours = np.array(list(palette.values()), np.float32)  # (K, 3)
    h, w = frames.shape[1:3]
    s1 = np.zeros((h, w, len(palette)), np.float64)  # running sums over time
    s2, steps = np.zeros_like(s1), np.zeros_like(s1)
    prev = None
    for frame in frames:  # one frame at a time keeps memory at (H, W, K)
        m = _membership(_smoothed(frame), colours).astype(np.float64)  # (H, W, K)
        s1 += m
        s2 += m**2
        if prev is not None:
            steps += (m - prev) ** 2
        prev = m
    n = len(frames)
    mean = s1 / n
    flicker = steps / (2 * (n - 1)) if n > 1 else 0.0
    std = np.sqrt(np.maximum(s2 / n - mean**2 - flicker, 0.0))  # (H, W, K)
    moving, abundance = std.mean((0, 1)), mean.mean((0, 1))  # (K,) each
    return {name: {"moving": float(moving[k]), "abundance": float(abundance[k])}
            for k, name in enumerate(palette)}


def shape_colour(
    frames: np.ndarray, palette: Mapping[str, tuple[int, int, int]] = COLOURS
) -> str:
    """The palette colour of the video's moving shape, from the frames (F, H, W, 3) alone.

    The colour whose membership changes most over time, flicker aside (`colour_scores`), wins:
    synth backgrounds are static, so the shape is the only thing that moves, and its colour
    sweeps on and off every pixel of its path at full weight. A background that happens to sit
    near a palette colour only changes where the shape covers it, over part of the path and at
    partial weight. When nothing moves coherently (a score below MIN_MOVING_FRACTION: a static
    or temporally shuffled video), the most abundant palette colour is returned instead.
    """
    if not palette:
        raise ValueError("shape_colour: the palette is empty")
    scores = colour_scores(frames, palette)
    best = max(scores, key=lambda c: scores[c]["moving"])
    if scores[best]["moving"] >= MIN_MOVING_FRACTION:
        return best
    return max(scores, key=lambda c: scores[c]["abundance"])


# ---------------------------------------------------------------------------------------------
# Motion.


def _rivals(colour_rgb, palette: Mapping[str, tuple[int, int, int]] | None) -> np.ndarray:
    """The colour first, then the palette's other colours, (K, 3) float32."""
    others = [c for c in (palette or {}).values() if tuple(c) != tuple(colour_rgb)]
    return np.array([colour_rgb, *others], np.float32)


def moving_membership(
    frames: np.ndarray,
    colour_rgb: tuple[int, int, int],
    palette: Mapping[str, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """(F, H, W): each pixel's membership in the colour minus its low quantile over time.

    Static pixels of the colour (a background that resembles it) cancel, so what is left is
    the colour where it moves. With a palette, pixels nearer another palette colour do not count
    (a red shape is no orange one, though the two are only 100 apart).
    """
    frames = _check_frames(frames)
    colours = _rivals(colour_rgb, palette)  # (K, 3), the colour at index 0
    member = np.stack([_membership(_smoothed(f), colours)[..., 0] for f in frames])  # (F, H, W)
    return np.maximum(member - np.quantile(member, STATIC_QUANTILE, axis=0), 0.0)


def shape_membership(
    frames: np.ndarray,
    colour_rgb: tuple[int, int, int],
    palette: Mapping[str, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """(F, H, W): the colour's membership inside its largest blob (8-connected pixels of
    membership > 0.5), zero elsewhere and on frames where that blob touches the border.

    What the outline is judged on. Not `moving_membership`: a shape that moves less than its
    own size overlaps itself in every frame, and subtracting the static part would leave only
    a crescent. Texture pixels that resemble the colour are scattered, so the largest blob is
    the shape; a blob cut by the frame's edge has no outline to judge."""
    import cv2

    frames = _check_frames(frames)
    colours = _rivals(colour_rgb, palette)  # (K, 3), the colour at index 0
    out = np.zeros(frames.shape[:3], np.float32)  # (F, H, W)
    for i, frame in enumerate(frames):
        member = _membership(_smoothed(frame), colours)[..., 0]  # (H, W)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            (member > 0.5).astype(np.uint8), connectivity=8)
        if count < 2:  # label 0 is the rest of the frame
            continue
        blob = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        mask = labels == blob  # (H, W)
        rows, cols = np.nonzero(mask)
        if min(rows) == 0 or min(cols) == 0 or max(rows) == mask.shape[0] - 1 \
                or max(cols) == mask.shape[1] - 1:
            continue
        # the blob and the anti-aliased rim just outside it
        rim = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        out[i] = np.where(rim, member, 0.0)
    return out


def _centroids(moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of (F, H, W) weights: centroid (F, 2) as (x, y) at pixel centres, and mass (F,)."""
    mass = moving.sum((1, 2))  # (F,)
    yy, xx = np.mgrid[0 : moving.shape[1], 0 : moving.shape[2]]  # (H, W) each
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (moving * (xx + 0.5)).sum((1, 2)) / mass  # (F,) pixel centres at +0.5
        cy = (moving * (yy + 0.5)).sum((1, 2)) / mass
    return np.stack([cx, cy], 1), mass


def centroid_track(
    frames: np.ndarray,
    colour_rgb: tuple[int, int, int],
    palette: Mapping[str, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Centroid (x, y) per frame of the colour's moving pixels (`moving_membership`), (F, 2),
    NaN where a frame shows fewer than MIN_MASS_PX pixels of it."""
    track, mass = _centroids(moving_membership(frames, colour_rgb, palette))
    track[mass < MIN_MASS_PX] = np.nan
    return track


def motion_direction(
    frames: np.ndarray,
    colour_rgb: tuple[int, int, int],
    palette: Mapping[str, tuple[int, int, int]] | None = None,
) -> tuple[float, float] | None:
    """Unit velocity (dx, dy) of the colour's centroid (x right, y down), a least-squares line
    through its track over the frames that show it (`centroid_track`; a palette makes the
    palette's other colours compete for each pixel).

    None when fewer than two frames show the colour or its centroid moves slower than
    MIN_SPEED_PX per frame: then the video shows no motion of that colour to judge.
    """
    track = centroid_track(frames, colour_rgb, palette)  # (F, 2)
    t = np.flatnonzero(~np.isnan(track[:, 0]))  # frames showing the colour
    if len(t) < 2:
        return None
    tc = t - t.mean()
    velocity = (tc[:, None] * track[t]).sum(0) / (tc**2).sum()  # (2,) px/frame
    speed = float(np.hypot(*velocity))
    if speed < MIN_SPEED_PX:
        return None
    return float(velocity[0] / speed), float(velocity[1] / speed)


# ---------------------------------------------------------------------------------------------
# Shape.


def shape_scores(
    frames: np.ndarray,
    colour_rgb: tuple[int, int, int],
    palette: Mapping[str, tuple[int, int, int]] | None = None,
) -> dict[str, float]:
    """Per synth shape, how well it matches the colour's blob: the mean over frames (those with
    at least MIN_SHAPE_MASS_PX of blob membership) of the soft IoU
    Σ min(m, t) / Σ max(m, t) between the frame's blob membership m (`shape_membership`) and
    the shape's coverage t, drawn as synth draws it at the frame's centroid with the frame's
    moving area. Matching area and centre leaves only the outline to compare, so a blurred or
    shrunken shape still matches its own outline best. {} when no frame shows enough.
    """
    moving = shape_membership(frames, colour_rgb, palette)  # (F, H, W)
    centres, mass = _centroids(moving)  # (F, 2), (F,)
    yy, xx = np.mgrid[0 : moving.shape[1], 0 : moving.shape[2]].astype(np.float32)
    ious: dict[str, list[float]] = {shape: [] for shape in SHAPES}
    for m, (cx, cy), area in zip(moving, centres, mass):
        if area < MIN_SHAPE_MASS_PX:
            continue
        dx, dy = xx + 0.5 - cx, yy + 0.5 - cy  # (H, W) each
        for shape in SHAPES:
            t = coverage(shape, dx, dy, math.sqrt(area / AREA_PER_R2[shape]))  # (H, W)
            ious[shape].append(float(np.minimum(m, t).sum() / np.maximum(m, t).sum()))
    return {shape: float(np.mean(v)) for shape, v in ious.items() if v}


def predicted_shape(
    frames: np.ndarray,
    colour_rgb: tuple[int, int, int],
    palette: Mapping[str, tuple[int, int, int]] | None = None,
) -> str | None:
    """The synth shape that best matches the colour's moving pixels (`shape_scores`); None when
    no frame shows enough of the colour moving."""
    scores = shape_scores(frames, colour_rgb, palette)
    return max(scores, key=scores.get) if scores else None


# ---------------------------------------------------------------------------------------------
# Scores.


def score_video(
    frames: np.ndarray, prompt: str, palette: Mapping[str, tuple[int, int, int]] = COLOURS
) -> dict:
    """How well frames (F, H, W, 3) follow a single-shot synth-style prompt.

    colour_correct: the colour predicted from the frames alone is the prompt's colour.
    predicted_colour: that prediction.
    shape_correct: the synth shape whose outline best matches the prompt colour's moving pixels
        is the prompt's shape (`predicted_shape`, None when too little of the colour moves).
    direction_cosine: cosine between the measured motion of the prompt's colour (pixels
        nearer it than any other palette colour) and the prompt's direction, in [-1, 1];
        0.0 when the colour shows no measurable motion.
    direction_correct: direction_cosine > cos 22.5°, i.e. within the prompt's 8-way sector.
    """
    facts = parse_prompt(prompt)
    if facts.colour not in palette:
        raise ValueError(
            f"prompt {prompt!r}: colour {facts.colour!r} is not in the palette "
            f"({', '.join(palette)})"
        )
    predicted = shape_colour(frames, palette)
    shape = predicted_shape(frames, palette[facts.colour], palette)
    measured = motion_direction(frames, palette[facts.colour], palette)
    cosine = 0.0
    if measured is not None:
        cosine = float(np.clip(np.dot(measured, facts.direction), -1.0, 1.0))
    return {
        "colour_correct": predicted == facts.colour,
        "predicted_colour": predicted,
        "shape_correct": shape == facts.shape,
        "predicted_shape": shape,
        "direction_cosine": cosine,
        "direction_correct": cosine > SECTOR_COS,
    }


def chance_levels(
    palette_size: int = len(COLOURS), num_directions: int = len(DIRECTIONS),
    num_shapes: int = len(SHAPES),
) -> dict[str, float]:
    """Accuracy of guessing: colour 1/palette_size; direction 1/num_directions; shape
    1/num_shapes.

    For direction this is also the chance of a uniformly random motion (e.g. noise) landing in
    the prompt's sector: the sector is 360°/8 = 45° wide.
    """
    if min(palette_size, num_directions, num_shapes) < 1:
        raise ValueError(
            f"chance_levels: need palette_size, num_directions and num_shapes ≥ 1, got "
            f"{palette_size}, {num_directions} and {num_shapes}"
        )
    return {"colour": 1.0 / palette_size, "direction": 1.0 / num_directions,
            "shape": 1.0 / num_shapes}


def follow_rates(videos: list[tuple[str | object, str]]) -> dict[str, float]:
    """Scores over (video file, prompt) pairs: the share with the right colour and direction,
    the mean direction cosine, and the chance levels to compare with. Prompts that are not
    single-shot synth prompts are counted as `unscored`, not guessed."""
    from osora.media.frames import read_video

    scores, unscored = [], 0
    for path, prompt in videos:
        try:
            parse_prompt(prompt)
        except ValueError:
            unscored += 1
            continue
        scores.append(score_video(read_video(path), prompt))
    chance = chance_levels()
    n = max(1, len(scores))
    return {
        "scored": len(scores),
        "unscored": unscored,
        "colour_accuracy": sum(s["colour_correct"] for s in scores) / n,
        "shape_accuracy": sum(s["shape_correct"] for s in scores) / n,
        "direction_accuracy": sum(s["direction_correct"] for s in scores) / n,
        "direction_cosine": sum(s["direction_cosine"] for s in scores) / n,
        "colour_chance": chance["colour"],
        "direction_chance": chance["direction"],
        "shape_chance": chance["shape"],
    }
