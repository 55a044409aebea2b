"""Temporal flickering as VBench measures it (vbench/temporal_flickering.py), with no learned
weights: a video's score is (255 − mean over consecutive frame pairs of the mean absolute pixel
difference) / 255 — 1.0 for a frozen video, lower the more pixels change from frame to frame.
VBench applies it to videos of static prompts; on moving content it also counts the motion, so
osora reports it beside the motion measures rather than as flicker alone. numpy only."""

from __future__ import annotations

import numpy as np


def temporal_flickering(frames: np.ndarray) -> float:
    """frames: (T, H, W, 3) uint8, T ≥ 2 → the score in [0, 1]."""
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"temporal flickering needs (T ≥ 2, H, W, C) frames, got {frames.shape}")
    x = frames.astype(np.float32)
    mae = np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))  # (T-1,) per consecutive pair
    return float((255.0 - mae.mean()) / 255.0)
