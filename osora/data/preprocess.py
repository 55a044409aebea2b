"""Preprocessing (docs/recipe.md §1): the first, cheapest filter of the pyramid, on probe numbers.

Every ingested video gets a `preprocess` row, kept or not, so a dropped video is never lost and
changing a threshold only re-judges the table. A video is dropped when any rule holds:

    too_short              duration_s < min_duration_s
    low_fps                fps < min_fps
    aspect_ratio           width / height outside [min_aspect_ratio, max_aspect_ratio]
    low_bpp                bit_rate / (width · height · fps) < min_bits_per_pixel
    constrained_baseline   H.264 profile "Constrained Baseline" (when in drop_profiles); any
    profile:<name>         other profile listed in drop_profiles
    unreadable: <why>      the probe failed (`probe_error`), or a number the rules need is missing

An image (`kind` "image") has no time axis and no video encoding, so only the rules about its
picture apply: `aspect_ratio` and `unreadable` (a failed probe, or no width/height). It is never
too_short, low_fps, low_bpp or dropped for a profile: those judge frame rate, length and the
H.264 stream, which an image has not (its fps, duration and bit rate are null, and a JPEG's
"Baseline" is no H.264 profile).

Thresholds are inclusive: a video exactly at a limit is kept. When several rules hold, `reason`
names them all, joined by "," in the order above (the first is the primary reason), e.g.
"too_short,low_bpp": properties of the content (length, frame rate, shape) before those of its
encoding (bits per pixel, profile). An unreadable video has nothing to measure, so its reason
is that alone.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from osora.config.data import PreprocessParams
from osora.schemas import schema_of

# The numbers the rules read from a `videos` row; a readable row should have them all.
MEASURED = ("duration_s", "fps", "width", "height", "bit_rate")
IMAGE_MEASURED = ("width", "height")  # an image's: its picture only
CONSTRAINED_BASELINE = "Constrained Baseline"  # as FFmpeg/PyAV name the H.264 profile


def verdict(video: dict[str, Any], params: PreprocessParams) -> dict[str, Any]:
    """The `preprocess` row for one `videos` row: keep it, or drop it with every reason."""
    if video.get("probe_error"):
        return _row(video, [f"unreadable: {video['probe_error']}"])
    image = video.get("kind") == "image"
    missing = [name for name in (IMAGE_MEASURED if image else MEASURED)
               if video.get(name) is None]
    if missing:
        return _row(video, [f"unreadable: probe gave no {', '.join(missing)}"])
    if image:
        return image_verdict(video, params)
    bpp, aspect = bits_per_pixel(video), aspect_ratio(video)
    reasons = [name for name, holds in _rules(video, bpp, aspect, params) if holds]
    profile = video.get("profile")
    if profile is not None and _listed(profile, params.drop_profiles):
        reasons.append(profile_reason(profile))
    return _row(video, reasons, bpp, aspect)


def image_verdict(image: dict[str, Any], params: PreprocessParams) -> dict[str, Any]:
    """The `preprocess` row of a readable image: the aspect ratio rule alone (module doc)."""
    aspect = aspect_ratio(image)
    return _row(image, ["aspect_ratio"] if _aspect_out(aspect, params) else [], None, aspect)


def preprocess_table(videos: pa.Table, params: PreprocessParams) -> pa.Table:
    """The `preprocess` table for a `videos` table: one row per video, in the same order."""
    rows = [verdict(video, params) for video in videos.to_pylist()]
    return pa.Table.from_pylist(rows, schema=schema_of("preprocess"))


def bits_per_pixel(video: dict[str, Any]) -> float | None:
    """bit_rate / (w·h·fps): bits the encoder spent per pixel per frame; None when the pixel
    rate is not positive (nothing to divide by)."""
    pixels_per_s = video["width"] * video["height"] * video["fps"]
    return video["bit_rate"] / pixels_per_s if pixels_per_s > 0 else None


def aspect_ratio(video: dict[str, Any]) -> float | None:
    """Width over height, as displayed; None for a zero height."""
    return video["width"] / video["height"] if video["height"] > 0 else None


def profile_reason(profile: str) -> str:
    """The reason for a dropped profile: the recipe's own rule has a short name."""
    if _same_profile(profile, CONSTRAINED_BASELINE):
        return "constrained_baseline"
    return f"profile:{profile}"


def _rules(
    video: dict[str, Any], bpp: float | None, aspect: float | None, params: PreprocessParams
) -> list[tuple[str, bool]]:
    """The numeric rules in reporting order (the content's shape in time and space first, then
    its encoding), each with whether it holds. A ratio that cannot be computed (zero size or
    fps) fails its rule rather than passing silently."""
    return [
        ("too_short", video["duration_s"] < params.min_duration_s),
        ("low_fps", video["fps"] < params.min_fps),
        ("aspect_ratio", _aspect_out(aspect, params)),
        ("low_bpp", bpp is None or bpp < params.min_bits_per_pixel),
    ]


def _aspect_out(aspect: float | None, params: PreprocessParams) -> bool:
    """Whether the aspect ratio rule holds: outside the range, or not computable."""
    return aspect is None or not params.min_aspect_ratio <= aspect <= params.max_aspect_ratio


def _listed(profile: str, drop_profiles: list[str]) -> bool:
    return any(_same_profile(profile, p) for p in drop_profiles)


def _same_profile(a: str, b: str) -> bool:
    """Profile names compared ignoring case and surrounding spaces (params are hand-typed)."""
    return a.strip().casefold() == b.strip().casefold()


def _row(
    video: dict[str, Any],
    reasons: list[str],
    bpp: float | None = None,
    aspect: float | None = None,
) -> dict[str, Any]:
    return {
        "id": video["id"],
        "keep": not reasons,
        "reason": ",".join(reasons) or None,
        "bits_per_pixel": bpp,
        "aspect_ratio": aspect,
    }
