"""Motion: FFmpeg's VMAF motion score, averaged over the clip (docs/recipe.md §1).

vmafmotion blurs each frame's luma with VMAF's 5-tap Gaussian and reports the mean absolute
difference from the previous blurred frame, in 8-bit luma units (0 for the first frame). It
measures how much the picture changes, so static shots score near 0 and fast motion or camera
shake high; the pyramid drops both extremes, and the rounded score is appended to captions
(motion conditioning, docs/recipe.md §1). Frames wider than `analysis_width` are downscaled, so
the score does not depend on the clip's resolution and large clips stay cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from osora.config.data import MotionParams
from osora.data.operator import Row
from osora.data.scores.base import ClipScorer

SCORE_KEY = "lavfi.vmafmotion.score"


class MotionScorer(ClipScorer):
    name = "motion"
    output_table = "score_motion"
    score_columns = ("motion",)
    requires = ("imageio_ffmpeg",)
    min_frames = 2  # change between frames: an image (one frame) is null, not 0
    params: MotionParams

    def score(self, path: Path, clip: Row) -> dict[str, Any]:
        return {"motion": vmaf_motion(path, self.params.analysis_width)}


def vmaf_motion(path: Path, analysis_width: int) -> float:
    """The video's mean VMAF motion (module doc); also how osora.eval measures the motion of
    generated videos against the motion score their prompt asked for."""
    from osora.media.ffmpeg import filter_metadata

    # min(iw, W): downscale only; -2: the height that keeps the aspect ratio, even.
    frames = filter_metadata(path, f"scale='min(iw,{analysis_width})':-2,vmafmotion")
    scores = [float(f[SCORE_KEY]) for f in frames if SCORE_KEY in f]
    if not scores:
        raise ValueError(f"{path}: ffmpeg decoded no frames")
    # The mean over every frame, the first one's 0 included: the same number ffmpeg logs
    # as "VMAF Motion avg" (per-frame values come rounded to 0.01, the mean to ~0.005).
    return sum(scores) / len(scores)
