"""Blur: variance of the Laplacian on uniformly spaced frames (docs/recipe.md §1).

The Laplacian responds to edges; a blurred frame has few sharp ones, so the variance of its
response is low. The per-frame variances are stored, not a verdict: the pyramid level's
threshold marks frames blurry and the clip blurry when most of them are, so changing the
threshold never re-scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from osora.config.data import BlurParams
from osora.data.operator import Row
from osora.data.scores.base import ClipScorer
from osora.data.scores.frames import sampled_frames


def laplacian_variance(frame: np.ndarray) -> float:
    """Variance of OpenCV's Laplacian (3×3 kernel [[0,1,0],[1,-4,1],[0,1,0]], float64, border
    reflect-101) of the frame's luma; `frame` is (H, W, 3) uint8 RGB."""
    import cv2

    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)  # (H, W) uint8
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


class BlurScorer(ClipScorer):
    name = "blur"
    output_table = "score_blur"
    score_columns = ("laplacian_var",)
    requires = ("cv2",)
    params: BlurParams

    def score(self, path: Path, clip: Row) -> dict[str, Any]:
        frames = sampled_frames(path, clip.get("num_frames"), self.params.num_frames)
        return {"laplacian_var": [laplacian_variance(f) for f in frames]}
