"""Buckets: the (frames, height, width) a clip is trained at (docs/recipe.md §6).

A latent set trains at one resolution r: a clip's aspect ratio snaps to the nearest of a list
(the reference's 2.39:1, 2:1, 16:9, 1.85:1, 3:2, 4:3, 1:1, 5:8 and transposes; or is kept as is
when no list is given) and the clip gets the size of that ratio whose area is about r²
(h = r/√a, w = r·√a for a = width/height), each side rounded to the nearest multiple of the
AE's spatial compression × the DiT's patch, so the latent grid divides into whole patches. A
clip with less than 0.8× its bucket's pixels is too small for that resolution. 16:9 at 256 px
with the HunyuanVideo VAE and patch 2 (multiple 16) gives 192×336 and at 768 px 576×1024, the
reference's bucket sizes. The clip is then resized to cover that size and centre-cropped
(osora.data.latents).

In time a clip goes to the largest allowed frame count not above its own frame count; every
allowed count must be one the AE accepts (non-causal: T = k·td; causal: T = 1 + k·td; both: 1).
A clip shorter than the smallest count has no bucket.

Count 1 is the image bucket: an image (a 1-frame clip) goes there and nowhere else, and a
video clip never does (a clip shorter than every other count has no bucket rather than being
trained as a still of its first frame), as in the reference (Open-Sora v2
`Bucket.get_bucket_id`: T == 1 looks only for bucket 1, videos skip it). Both AEs encode one
frame into one latent frame: the causal VAE's first latent frame is its first frame alone
(1 + 0·td), and the non-causal Video DC-AE skips its temporal halvings while the time axis
has length 1, rather than repeating the image td times (the reference `dc_ae` does the same: on
T == 1 its down blocks' shortcut skips the temporal pixel-unshuffle, its strided conv keeps
length 1, and its up blocks skip the temporal upsampling, so one frame is one latent frame and
decodes to one).

Pure Python (no torch): the data stages and the DiT loader share it. DiT training extends it
with a batch size per bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Bucket:
    """A training shape in pixels: `frames` frames of `height`×`width`."""

    frames: int
    height: int
    width: int

    @property
    def name(self) -> str:
        """"33x192x336": frames × height × width."""
        return f"{self.frames}x{self.height}x{self.width}"


def fits_ae(frames: int, temporal_down: int, causal: bool) -> bool:
    """Whether an AE with this temporal compression encodes `frames` frames: non-causal
    T = k·td (k ≥ 1) or 1 (an image), causal T = 1 + k·td (k ≥ 0; 1 is a lone frame)."""
    if causal:
        return frames >= 1 and (frames - 1) % temporal_down == 0
    return frames == 1 or (frames >= temporal_down and frames % temporal_down == 0)


def check_frame_counts(counts: Iterable[int], temporal_down: int,
                       causal: bool) -> tuple[int, ...]:
    """The allowed frame counts, ascending; ValueError naming every count the AE cannot take
    (with the nearest counts it can) and any repeated count."""
    if not isinstance(temporal_down, int) or temporal_down < 1:
        raise ValueError(f"temporal_down must be an int ≥ 1, got {temporal_down!r}")
    counts = list(counts)
    if not counts:
        raise ValueError("no frame counts given: list at least one bucket frame count")
    repeated = sorted({c for c in counts if counts.count(c) > 1})
    if repeated:
        raise ValueError(f"frame counts repeated: {repeated}; list each count once")
    bad = [c for c in counts if not isinstance(c, int) or not fits_ae(c, temporal_down, causal)]
    if bad:
        rule = (f"1 + k·{temporal_down}" if causal else f"k·{temporal_down} or 1 (images)")
        kind = "causal" if causal else "non-causal"
        hints = ", ".join(f"{c} → {' or '.join(map(str, _nearest(c, temporal_down, causal)))}"
                          for c in bad)
        raise ValueError(
            f"frame counts {bad} do not fit the {kind} AE (temporal_down {temporal_down}: "
            f"counts must be {rule}); nearest valid: {hints}"
        )
    return tuple(sorted(counts))


def _nearest(count: int, temporal_down: int, causal: bool) -> list[int]:
    """The valid counts just below and above `count` (the one above when none is below)."""
    base = 1 if causal else 0
    k = max(0, (int(count) - base) // temporal_down)
    below, above = base + k * temporal_down, base + (k + 1) * temporal_down
    return [above] if below < (1 if causal else temporal_down) else [below, above]


def parse_ratio(text: str) -> float:
    """"16:9" → 16/9 (width / height); ValueError naming the text otherwise."""
    try:
        w, h = (float(part) for part in str(text).split(":"))
    except ValueError:
        raise ValueError(f"aspect ratio {text!r} is not W:H (e.g. 16:9, 2.39:1)") from None
    if not (w > 0 and h > 0 and math.isfinite(w / h)):
        raise ValueError(f"aspect ratio {text!r} needs two positive numbers")
    return w / h


def nearest_ratio(width: int, height: int, ratios: tuple[float, ...]) -> float:
    """The listed width/height ratio closest to the clip's, on a log scale (so a ratio and
    its transpose are equally far from 1:1)."""
    own = math.log(width / height)
    return min(ratios, key=lambda r: abs(math.log(r) - own))


def bucket_size(width: int, height: int, resolution: int, multiple: int,
                ratio: float | None = None) -> tuple[int, int]:
    """(height, width) of area ≈ resolution² with aspect ratio `ratio` (width / height; None:
    the clip's own), each side the nearest multiple of `multiple` (at least one multiple)."""
    for name, value in (("width", width), ("height", height), ("resolution", resolution),
                        ("multiple", multiple)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int ≥ 1, got {value!r}")
    root = math.sqrt(width / height if ratio is None else ratio)  # √a

    def snap(x: float) -> int:
        return max(multiple, math.floor(x / multiple + 0.5) * multiple)

    return snap(resolution / root), snap(resolution * root)


@dataclass(frozen=True)
class BucketSpec:
    """How clips map to buckets at one resolution, for one AE and DiT patch.

    multiple: spatial_down × the DiT's patch (bucket sides are multiples of it);
    frame_counts: the allowed frame counts, each one the AE (temporal_down, causal) accepts;
    aspect_ratios: width/height ratios a clip snaps to (the nearest; empty: its own ratio);
    min_area: a clip whose pixel area is below this fraction of its bucket's is too small for
    this resolution (docs/recipe.md §6: 0.8; it belongs to a lower resolution's set).
    """

    resolution: int
    multiple: int
    frame_counts: tuple[int, ...]
    temporal_down: int
    causal: bool
    aspect_ratios: tuple[float, ...] = ()
    min_area: float = 0.0

    def __post_init__(self) -> None:
        counts = check_frame_counts(self.frame_counts, self.temporal_down, self.causal)
        object.__setattr__(self, "frame_counts", counts)
        bucket_size(1, 1, self.resolution, self.multiple)  # validates both

    def frames_for(self, num_frames: int) -> int | None:
        """The largest allowed count ≤ num_frames; None when the clip is shorter than all.
        Count 1 is for images only: a 1-frame clip gets 1 (None when the set has no 1), a
        longer clip never does (module docstring)."""
        if num_frames == 1:
            return 1 if 1 in self.frame_counts else None
        fitting = [c for c in self.frame_counts if 1 < c <= num_frames]
        return fitting[-1] if fitting else None

    def assign(self, width: int, height: int, num_frames: int) -> Bucket | None:
        """The bucket of a clip of width × height and num_frames; None when too short."""
        frames = self.frames_for(num_frames)
        if frames is None:
            return None
        ratio = nearest_ratio(width, height, self.aspect_ratios) if self.aspect_ratios else None
        h, w = bucket_size(width, height, self.resolution, self.multiple, ratio)
        return Bucket(frames, h, w)

    def too_small(self, width: int, height: int, bucket: Bucket) -> bool:
        """Whether the clip has less than `min_area` of the bucket's pixels (it would be
        upscaled to train here)."""
        return width * height < self.min_area * bucket.height * bucket.width
