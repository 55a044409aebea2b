"""The synthetic demo set: short H.264 videos whose content and defects are known exactly.

Every later stage of the data pyramid can be tested against this set: each video is a coloured
shape moving in a known direction at a known speed over a textured background, and all but the
clean ones carry one defect that a filter must catch (too short, low fps, extreme aspect ratio,
too few bits per pixel, Constrained Baseline profile, unreadable) or a property a stage must
measure (black borders to crop, burned-in text, blur, camera shake, scene cuts, a long take to
split). `plan` decides everything (the ground truth *is* the recipe), `render_frames` draws it,
`generate` encodes it and writes `truth.json` last.

Rendering uses only correctly rounded float operations (+, ×, sqrt; no sin/exp, whose last bits
differ between maths libraries), so the same seed gives the same frames everywhere and, with
ffmpeg's bit-exact flags, byte-identical files.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from osora.config.data import SynthParams
from osora.data.bitmap_font import GLYPH_H, GLYPH_W, text_mask
from osora.data.synth_grid import MIN_CONTRAST_RGB, Combo, contrasting_tint, split_combos
from osora.data.synth_shapes import coverage
from osora.data.synth_vocab import (
    BACKGROUND_WORDS,
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    TINTS,
)
from osora.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from osora.media.ffmpeg import encode_frames

TRUTH_FILE = "truth.json"
HELD_OUT_FILE = "held_out.txt"  # captions of the grid's held-out combinations, one per line

# Every `expected_reason` in the set: the filter that must reject the video.
REASONS = (
    "too_short", "low_fps", "aspect_ratio", "low_bpp", "constrained_baseline", "unreadable",
    "text", "blur", "jitter",
)


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in frame pixels: top-left (x, y), size (w, h)."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Shot:
    """One continuous shot: a shape moving in a straight line at constant velocity.

    Coordinates are picture pixels (inside `crop` when the video has borders), x right, y down;
    the shape's centre at frame t of the shot is start_xy + t · velocity.
    """

    start_frame: int
    num_frames: int
    shape: str
    colour: str
    size_px: int
    background: str
    background_colour: str
    direction: str
    speed_px_per_frame: float
    velocity: tuple[float, float]
    start_xy: tuple[float, float]


@dataclass(frozen=True)
class SynthVideo:
    """Ground truth of one synthetic video, and the recipe it is rendered from.

    `expected_reason` is the preprocessing/score filter that must reject it (None: keep).
    `cuts` are the first frame indices of shots 2, 3, ...; `crop` the real picture inside black
    borders; `text_boxes` one box per burned-in text line. For the unreadable file the other
    fields describe the video it was cut from.
    """

    file: str
    caption: str
    expected_reason: str | None
    width: int
    height: int
    fps: int
    num_frames: int
    duration_s: float
    crf: int | None
    profile: str | None
    bitrate: int | None
    shots: tuple[Shot, ...]
    cuts: tuple[int, ...] = ()
    crop: Box | None = None
    text: str | None = None
    text_boxes: tuple[Box, ...] = ()
    blur_sigma_px: float | None = None
    jitter_px: int | None = None
    truncated_to_bytes: int | None = None

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    @property
    def picture_size(self) -> tuple[int, int]:
        """(H, W) of the real picture: the crop box when there are borders, else the frame."""
        return (self.crop.h, self.crop.w) if self.crop else (self.height, self.width)

    @classmethod
    def from_dict(cls, d: dict) -> SynthVideo:
        """Inverse of dataclasses.asdict, for reading truth.json back."""
        d = dict(d)
        d["shots"] = tuple(
            Shot(**{**s, "velocity": tuple(s["velocity"]), "start_xy": tuple(s["start_xy"])})
            for s in d["shots"]
        )
        d["cuts"] = tuple(d["cuts"])
        d["crop"] = Box(**d["crop"]) if d["crop"] else None
        d["text_boxes"] = tuple(Box(**b) for b in d["text_boxes"])
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Planning: every number of every video, decided before any pixel is drawn.


@dataclass(frozen=True)
class _Look:
    """The free choices of one shot (what it shows); the motion is fitted to the frame later."""

    shape: str
    colour: str
    background: str
    tint: str
    direction: str


@dataclass(frozen=True)
class _Plan:
    """Arguments of one planned video beyond the clean defaults."""

    name: str
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    fps: int | None = None
    duration_s: float | None = None
    crf: int | None = None
    bitrate: int | None = None
    profile: str | None = None
    shot_seconds: tuple[float, ...] = ()
    looks: tuple[_Look, ...] = ()
    crop: Box | None = None
    text: str | None = None
    blur_box_px: int | None = None
    jitter_px: int | None = None
    truncated_to_bytes: int | None = None
    shape_fraction: float = 0.3  # the shape's size / the picture's short side
    speed_px_per_frame: float | None = None  # None: a random speed the picture has room for
    from_edge: bool = False  # the path starts at the edge it comes from, not centred


def plan(params: SynthParams) -> list[SynthVideo]:
    """The whole set's ground truth, deterministic in `params` (no files written)."""
    _check_params(params)
    plans = _plans(params)
    grid, _ = _grid_plans(params, plans)
    return [_build(p, params) for p in plans + grid]


def held_out(params: SynthParams) -> list[SynthVideo]:
    """The grid's held-out combinations as videos planned but never rendered: their captions
    are the prompts the model never saw (osora.data.synth_grid)."""
    _check_params(params)
    _, held = _grid_plans(params, _plans(params))
    return [_build(p, params) for p in held]


def _check_params(params: SynthParams) -> None:
    if params.width % 8 or params.height % 2:
        raise ValueError(
            f"synth: width must be a multiple of 8 (so the 4:1 video's height is even) and "
            f"height even (H.264 yuv420p), got {params.width}x{params.height}"
        )
    if params.width < params.height:
        raise ValueError(
            f"synth: expects landscape clean videos, got {params.width}x{params.height}"
        )


def _plans(params: SynthParams) -> list[_Plan]:
    """One entry per video: the clean ones, then one per defect or property to detect."""
    looks = _clean_looks(params)
    w, h, fps = params.width, params.height, params.fps
    aspect_h = _even(w / 4)
    text_look = replace(looks[1 % len(looks)], direction="up")
    # Dark, bright, mid: the shots differ in brightness as well as texture, as real cuts do.
    cut_looks = (
        _Look("circle", "yellow", "noise", "navy", "right"),
        _Look("triangle", "magenta", "stripes", "sand", "up"),
        _Look("square", "white", "noise", "green", "left"),
    )
    return [
        *(_Plan(f"clean_{i:02d}", looks=(look,)) for i, look in enumerate(looks)),
        _Plan("too_short", "too_short", duration_s=1.25, looks=(looks[0],)),
        _Plan("low_fps", "low_fps", fps=12,
              looks=(replace(looks[1 % len(looks)], direction="left"),)),
        _Plan("aspect_4x1", "aspect_ratio", width=w, height=aspect_h,
              looks=(_Look("circle", "orange", "stripes", "teal", "right"),)),
        _Plan("low_bpp", "low_bpp", crf=51, bitrate=max(2000, w * h * fps // 200),
              looks=(_Look("square", "red", "flat", "grey", "right"),)),
        _Plan("baseline_profile", "constrained_baseline", profile="baseline",
              looks=(replace(looks[2 % len(looks)], direction="down"),)),
        _Plan("unreadable", "unreadable", looks=(looks[0],), truncated_to_bytes=4096),
        _Plan("black_borders", looks=(_Look("diamond", "yellow", "noise", "green", "up-right"),),
              crop=_letterbox_box(w, h)),
        _Plan("burned_text", "text", looks=(text_look,), text="BIG SALE"),
        # Encoded at higher quality, so that only the blur filter rejects it, not the bpp one.
        _Plan("blurred", "blur", crf=max(0, params.crf - 10), blur_box_px=_odd(h / 20),
              looks=(_Look("circle", "white", "stripes", "blue", "left"),)),
        _Plan("camera_shake", "jitter", jitter_px=max(4, round(h / 30)),
              looks=(_Look("triangle", "red", "noise", "teal", "right"),)),
        _Plan("scene_cuts", shot_seconds=(2.5, 2.25, 2.25), looks=cut_looks),
        _Plan("long_take", duration_s=10.0,
              looks=(_Look("square", "orange", "stripes", "purple", "right"),)),
    ]


def _grid_plans(params: SynthParams, others: list[_Plan]) -> tuple[list[_Plan], list[_Plan]]:
    """(grid videos, held-out ones): one combination each, the speeds taken in turn."""
    g = params.grid
    if g is None:
        return [], []
    shown = {Combo(lk.colour, lk.shape, lk.direction) for p in others for lk in p.looks}
    rng = _rng(params.seed, "grid")
    training, held = split_combos(rng, g.held_out, shown)

    def plans(prefix: str, combos: list[Combo], count: int) -> list[_Plan]:
        return [_Plan(
            f"{prefix}_{i:03d}", width=g.size, height=g.size, fps=g.fps, duration_s=g.duration_s,
            crf=g.crf,
            looks=(_Look(c.shape, c.colour, "flat", contrasting_tint(c.colour, rng), c.direction),),
            shape_fraction=g.shape_fraction, speed_px_per_frame=g.speeds[i % len(g.speeds)],
            # every path of a direction starts at the same place whatever its speed: the
            # opening frames show the direction, and fast paths run on to the far edge
            from_edge=True,
        ) for i, c in enumerate(itertools.islice(itertools.cycle(combos), count))]

    return plans("grid", training, g.count), plans("held_out", held, len(held))


def _clean_looks(params: SynthParams) -> list[_Look]:
    """Varied shape, colour, background and direction for the clean videos, from the seed."""
    rng = _rng(params.seed, "clean")
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))]
    tints = [list(TINTS)[i] for i in rng.permutation(len(TINTS))]
    directions = [list(DIRECTIONS)[i] for i in rng.permutation(len(DIRECTIONS))]
    looks = []
    for i in range(params.num_clean):
        tint = tints[i % len(tints)]
        looks.append(_Look(
            shape=shapes[i % len(shapes)],
            colour=_contrasting(colours[i:] + colours[:i], tint, [lk.colour for lk in looks]),
            background=BACKGROUNDS[i % len(BACKGROUNDS)],
            tint=tint,
            direction=directions[i % len(directions)],
        ))
    return looks


def _contrasting(colours: list[str], tint: str, used: list[str]) -> str:
    """The first colour far enough from the background tint to read as a separate subject,
    preferring colours not used yet."""
    bg = np.array(TINTS[tint], float)
    ok = [c for c in colours
          if np.linalg.norm(np.array(COLOURS[c], float) - bg) >= MIN_CONTRAST_RGB]
    if not ok:
        raise ValueError(f"synth: no subject colour contrasts with the {tint} background")
    return next((c for c in ok if c not in used), ok[0])


def _build(p: _Plan, params: SynthParams) -> SynthVideo:
    """Turn a plan into ground truth: frame counts, shot timing, motion, text boxes, caption."""
    width, height = p.width or params.width, p.height or params.height
    fps = p.fps or params.fps
    crop = p.crop
    pic_h, pic_w = (crop.h, crop.w) if crop else (height, width)
    seconds = p.shot_seconds or (p.duration_s or params.duration_s,)
    lengths = [round(s * fps) for s in seconds]
    starts = np.cumsum([0, *lengths[:-1]]).tolist()
    rng = _rng(params.seed, p.name, "plan")
    shots = tuple(
        _shot(look, start, n, (pic_h, pic_w), rng, p.shape_fraction, p.speed_px_per_frame,
              p.from_edge)
        for look, start, n in zip(p.looks, starts, lengths, strict=True)
    )
    text, box = p.text, p.blur_box_px
    video = SynthVideo(
        file=f"{p.name}.mp4",
        caption="",
        expected_reason=p.reason,
        width=width,
        height=height,
        fps=fps,
        num_frames=sum(lengths),
        duration_s=sum(lengths) / fps,
        crf=p.crf if p.crf is not None else params.crf,
        profile=p.profile,
        bitrate=p.bitrate,
        shots=shots,
        cuts=tuple(starts[1:]),
        crop=crop,
        text=text,
        text_boxes=_text_layout(text, pic_h, pic_w)[1] if text else (),
        blur_sigma_px=round(float(np.sqrt(3 * (box**2 - 1) / 12)), 3) if box else None,
        jitter_px=p.jitter_px,
        truncated_to_bytes=p.truncated_to_bytes,
    )
    return replace(video, caption=caption(video))


def _shot(look: _Look, start: int, n: int, pic: tuple[int, int], rng, shape_fraction: float,
          speed: float | None, from_edge: bool = False) -> Shot:
    """Fit a straight constant-speed path, at `speed` or a random speed it has room for: centred
    in the picture with the whole shape inside throughout, or (`from_edge`) starting with the
    whole shape just inside the edge it comes from, its centre inside until the last frame."""
    pic_h, pic_w = pic
    size = _even(shape_fraction * min(pic_h, pic_w))
    (ux, uy), _ = DIRECTIONS[look.direction]
    margin = 0.65 * size + 2  # the shape's half-extent (triangles reach furthest) plus a pixel
    if from_edge:
        room = [(pic_w - margin - 0.5, abs(ux)), (pic_h - margin - 0.5, abs(uy))]
    else:
        room = [(pic_w - 2 * margin, abs(ux)), (pic_h - 2 * margin, abs(uy))]
    max_speed = min(span / (u * max(n - 1, 1)) for span, u in room if u > 0)
    if speed is not None and speed > max_speed:
        raise ValueError(
            f"synth.grid: a {look.direction} path at {speed} px/frame leaves the {pic_w}x{pic_h} "
            f"picture within {n} frames (at most {max_speed:.2f} fits); lower synth.grid.speeds, "
            "duration_s or shape_fraction"
        )
    speed = speed or round(min(4.0, max_speed * rng.uniform(0.6, 0.9)), 2)
    if speed < 0.2:
        raise ValueError(
            f"synth: a {n}-frame shot has no room for visible motion in {pic_w}x{pic_h}"
        )
    vx, vy = round(speed * ux, 4), round(speed * uy, 4)
    if from_edge:
        x0, y0 = (_edge_start(side, u, margin) for side, u in ((pic_w, ux), (pic_h, uy)))
    else:  # centred: it starts half its length behind the middle
        x0 = pic_w / 2 - vx * (n - 1) / 2
        y0 = pic_h / 2 - vy * (n - 1) / 2
    return Shot(
        start_frame=start, num_frames=n, shape=look.shape, colour=look.colour, size_px=size,
        background=look.background, background_colour=look.tint, direction=look.direction,
        speed_px_per_frame=speed, velocity=(vx, vy), start_xy=(round(x0, 4), round(y0, 4)),
    )


def _edge_start(side: int, u: float, margin: float) -> float:
    """Where a from-edge path starts along one axis: `margin` in from the edge it leaves
    (moving +: the low edge), or the middle when it does not move along this axis."""
    if u == 0:
        return side / 2
    return margin if u > 0 else side - margin


def _letterbox_box(width: int, height: int) -> Box:
    """A centred picture about 90% × 80% of the frame, sides multiples of 16 (as cropdetect
    rounds) and an even offset (as yuv420p needs)."""
    w, h = int(width * 0.9) // 16 * 16, int(height * 0.8) // 16 * 16
    return Box(x=(width - w) // 4 * 2, y=(height - h) // 4 * 2, w=w, h=h)


def _text_layout(text: str, pic_h: int, pic_w: int) -> tuple[int, tuple[Box, ...]]:
    """Cell scale and one centred box per word-line: the words as large as fit in about 70% of
    the width and 80% of the height."""
    lines = text.split()
    cols = max(len(line) for line in lines) * (GLYPH_W + 1) - 1
    rows = len(lines) * GLYPH_H + (len(lines) - 1) * 2  # two empty cells between lines
    scale = max(1, min(int(0.7 * pic_w / cols), int(0.8 * pic_h / rows)))
    top = (pic_h - rows * scale) // 2
    boxes = []
    for i, line in enumerate(lines):
        w = (len(line) * (GLYPH_W + 1) - 1) * scale
        y = top + i * (GLYPH_H + 2) * scale
        boxes.append(Box(x=(pic_w - w) // 2, y=y, w=w, h=GLYPH_H * scale))
    return scale, tuple(boxes)


# ---------------------------------------------------------------------------------------------
# Captions: the six aspects a VLM caption covers (docs/recipe.md §1): subject, action, background,
# lighting, camera, style.


def caption(video: SynthVideo) -> str:
    """Describe the video's content in words, so prompt adherence can be checked later."""
    parts = []
    for i, shot in enumerate(video.shots):
        subject = f"{shot.colour} {shot.shape}"
        subject = ("an " if subject[0] in "aeiou" else "a ") + subject
        motion = (f"moves steadily {DIRECTIONS[shot.direction][1]} across "
                  f"{_background_words(shot)}.")
        if i == 0:
            parts.append(f"{subject.capitalize()} {motion}")
        else:
            lead = "Then" if i < len(video.shots) - 1 else "Finally"
            parts.append(f"{lead} the scene cuts to {subject} that {motion}")
    if len(video.shots) > 1:
        parts.insert(0, f"A video of {len(video.shots)} shots.")
    if video.text:
        parts.append(f'Large white block letters reading "{video.text}" are burned into the '
                     "middle of the frame.")
    if video.blur_sigma_px:
        parts.append("The whole picture is heavily blurred and out of focus.")
    if video.crop:
        parts.append("Black bars frame the picture on all four sides.")
    parts.append("The handheld camera shakes strongly from frame to frame." if video.jitter_px
                 else "The camera is static.")
    parts.append("Flat, even lighting; simple 2D animation of geometric shapes.")
    return " ".join(parts)


def _background_words(shot: Shot) -> str:
    return BACKGROUND_WORDS[shot.background].format(shot.background_colour)


# ---------------------------------------------------------------------------------------------
# Rendering: one parametrised renderer for every video.


def render_frames(video: SynthVideo, seed: int) -> Iterator[np.ndarray]:
    """Yield the video's frames, each (height, width, 3) uint8, one at a time.

    Per frame: background + shape on a canvas `jitter_px` larger on each side, then blur, then
    a crop at the frame's shake offset, then burned-in text, then black borders.
    """
    rng = _rng(seed, video.stem, "render")
    pic_h, pic_w = video.picture_size
    m = video.jitter_px or 0
    backgrounds = [_background(s, (pic_h + 2 * m, pic_w + 2 * m), rng) for s in video.shots]
    offsets = rng.integers(-m, m + 1, size=(video.num_frames, 2))  # (T, 2) shake (dy, dx) px
    text = _text_masks(video.text, pic_h, pic_w) if video.text else None
    box = round(np.sqrt(4 * video.blur_sigma_px**2 + 1)) if video.blur_sigma_px else 0  # width
    for t in range(video.num_frames):
        i = int(np.searchsorted(video.cuts, t, side="right"))
        shot = video.shots[i]
        canvas = _draw_shape(backgrounds[i], shot, t - shot.start_frame, m)  # (h+2m, w+2m, 3)
        if box:
            canvas = _box_blur(canvas, box, passes=3)
        dy, dx = offsets[t]
        picture = canvas[m + dy : m + dy + pic_h, m + dx : m + dx + pic_w]  # (h, w, 3) f32
        if text is not None:
            picture = _burn_text(picture, *text)
        yield _frame(picture, video)


def _frame(picture: np.ndarray, video: SynthVideo) -> np.ndarray:
    """Quantise to uint8 and place inside black borders when the video has a crop box."""
    picture = np.clip(np.rint(picture), 0, 255).astype(np.uint8)  # (h, w, 3) uint8
    if video.crop is None:
        return picture
    c = video.crop
    frame = np.zeros((video.height, video.width, 3), np.uint8)  # (H, W, 3) uint8
    frame[c.y : c.y + c.h, c.x : c.x + c.w] = picture
    return frame


def _background(shot: Shot, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A static textured background (H, W, 3) float32 in 0..255.

    Several octaves of value noise (or sharp diagonal stripes plus fine grain) give the encoder
    real detail to spend bits on, and the Laplacian real edges, as in natural video.
    """
    h, w = size
    tint = np.array(TINTS[shot.background_colour], np.float32)  # (3,)
    if shot.background == "flat":
        return np.broadcast_to(tint, (h, w, 3)).astype(np.float32)
    fine = _value_noise(size, 2, rng)  # (H, W) in [0, 1]
    if shot.background == "noise":
        coarse, mid = _value_noise(size, 40, rng), _value_noise(size, 10, rng)
        level = 0.3 * coarse + 0.25 * mid + 0.45 * fine
    elif shot.background == "stripes":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) each
        phase = ((xx + yy) / 24.0) % 1.0
        tri = np.abs(phase - 0.5) * 2  # triangle wave in [0, 1]
        level = 0.55 * np.clip((tri - 0.5) * 3 + 0.5, 0, 1) + 0.45 * fine
    else:
        raise ValueError(f"synth: unknown background {shot.background!r}")
    # Brightness 0.55..1.45 of the tint: textured, never near black.
    return tint * (0.55 + 0.9 * level)[..., None]  # (H, W, 3) float32


def _value_noise(size: tuple[int, int], cell: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field (H, W) in [0, 1]: random values on a grid `cell` px apart,
    interpolated with smoothstep weights."""
    h, w = size
    grid = rng.random((h // cell + 2, w // cell + 2), dtype=np.float32)  # (gh, gw)
    ys, xs = np.arange(h, dtype=np.float32) / cell, np.arange(w, dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = _smoothstep(ys - y0)[:, None], _smoothstep(xs - x0)[None, :]  # (H, 1), (1, W)
    top = grid[np.ix_(y0, x0)] * (1 - fx) + grid[np.ix_(y0, x0 + 1)] * fx  # (H, W)
    bottom = grid[np.ix_(y0 + 1, x0)] * (1 - fx) + grid[np.ix_(y0 + 1, x0 + 1)] * fx
    return top * (1 - fy) + bottom * fy


def _smoothstep(f: np.ndarray) -> np.ndarray:
    return f * f * (3 - 2 * f)


def _draw_shape(background: np.ndarray, shot: Shot, t: int, offset: int) -> np.ndarray:
    """The background with the shot's shape composited at frame t (anti-aliased edges, so
    sub-pixel motion is smooth). Only the shape's bounding box is computed."""
    frame = background.copy()  # (H, W, 3) float32
    cx = shot.start_xy[0] + shot.velocity[0] * t + offset
    cy = shot.start_xy[1] + shot.velocity[1] * t + offset
    reach = int(0.65 * shot.size_px) + 2
    y0, x0 = max(0, int(cy) - reach), max(0, int(cx) - reach)
    y1, x1 = min(frame.shape[0], int(cy) + reach + 1), min(frame.shape[1], int(cx) + reach + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)  # (h, w) each
    alpha = coverage(shot.shape, xx + 0.5 - cx, yy + 0.5 - cy, shot.size_px / 2)[..., None]
    colour = np.array(COLOURS[shot.colour], np.float32)  # (3,)
    frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1 - alpha) + colour * alpha
    return frame


def _box_blur(image: np.ndarray, width: int, passes: int) -> np.ndarray:
    """Separable box blur, repeated: three passes approximate a Gaussian of
    sigma = sqrt(passes · (width² − 1) / 12). Edges are extended, not darkened."""
    out = image
    for _ in range(passes):
        for axis in (0, 1):
            out = _box_1d(out, width, axis)
    return out


def _box_1d(image: np.ndarray, width: int, axis: int) -> np.ndarray:
    half = width // 2
    pad = [(0, 0)] * image.ndim
    pad[axis] = (half + 1, half)
    c = np.cumsum(np.pad(image, pad, mode="edge"), axis=axis, dtype=np.float64)
    n = image.shape[axis]
    upper = np.take(c, np.arange(width, width + n), axis=axis)
    lower = np.take(c, np.arange(0, n), axis=axis)
    return ((upper - lower) / width).astype(np.float32)


def _text_masks(text: str, pic_h: int, pic_w: int) -> tuple[np.ndarray, np.ndarray]:
    """(letters, shadow) boolean masks (h, w): white block letters with a dark drop shadow."""
    scale, boxes = _text_layout(text, pic_h, pic_w)
    letters = np.zeros((pic_h, pic_w), bool)
    for line, b in zip(text.split(), boxes, strict=True):
        letters[b.y : b.y + b.h, b.x : b.x + b.w] = text_mask(line, scale)
    k = max(1, scale // 3)
    shadow = np.zeros_like(letters)
    shadow[k:, k:] = letters[:-k, :-k]
    return letters, shadow & ~letters


def _burn_text(picture: np.ndarray, letters: np.ndarray, shadow: np.ndarray) -> np.ndarray:
    out = picture.copy()  # (h, w, 3) float32
    out[shadow] = 20.0
    out[letters] = 250.0
    return out


# ---------------------------------------------------------------------------------------------
# Writing the set.


def generate(params: SynthParams, out_dir: Path) -> list[SynthVideo]:
    """Write every planned video, its caption sidecar `<stem>.txt`, then `truth.json`.

    Each file appears atomically; truth.json comes last, so its presence means a complete set.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    videos, held = plan(params), held_out(params)
    for video in videos:
        _write_video(video, params.seed, out_dir)
        atomic_write_text(out_dir / f"{video.stem}.txt", video.caption + "\n")
    atomic_write_text(out_dir / HELD_OUT_FILE, "".join(f"{v.caption}\n" for v in held))
    truth = {"seed": params.seed, "params": params.model_dump(),
             "videos": [asdict(v) for v in videos], "held_out": [asdict(v) for v in held]}
    atomic_write_json(out_dir / TRUTH_FILE, truth)
    return videos


def load_truth(out_dir: Path) -> list[SynthVideo]:
    """Read a generated set's truth.json back into SynthVideo records."""
    path = Path(out_dir) / TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: generate the synthetic set first (DVC stage synth)"
        )
    return [SynthVideo.from_dict(v) for v in json.loads(path.read_text())["videos"]]


def _write_video(video: SynthVideo, seed: int, out_dir: Path) -> None:
    path = out_dir / video.file
    if video.truncated_to_bytes is None:
        _encode(video, seed, path)
        return
    # An unreadable file: the first bytes of a real encoding (the moov index, written at the
    # end of an mp4, is lost).
    full = out_dir / f".{video.stem}.full.mp4"
    try:
        _encode(video, seed, full)
        atomic_write_bytes(path, full.read_bytes()[: video.truncated_to_bytes])
    finally:
        full.unlink(missing_ok=True)


def _encode(video: SynthVideo, seed: int, path: Path) -> None:
    """H.264 with a one-second GOP, as streaming encoders use; the periodic key frames also give
    the static backgrounds a bitrate like real footage's."""
    encode_frames(
        render_frames(video, seed), path, video.fps,
        crf=video.crf, profile=video.profile, bitrate=video.bitrate, keyint=video.fps,
    )


def _rng(seed: int, *names: str) -> np.random.Generator:
    """A generator per purpose and video, so adding a video never changes the others."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def _even(x: float) -> int:
    return int(round(x / 2)) * 2


def _odd(x: float) -> int:
    return int(x) // 2 * 2 + 1
