"""The synthetic set's shapes as signed distance fields: drawn by osora.data.synth, matched as
templates by osora.eval.prompt_following's shape check. numpy only."""

from __future__ import annotations

import math

import numpy as np

from osora.data.synth_vocab import SHAPES

# Area of each shape in units of r² (r: half the shape's nominal size), from the distances
# below: circle of radius r; square of half-side r; diamond |x| + |y| ≤ 1.2 r, 2·(1.2 r)²;
# equilateral triangle of inradius 0.625 r, 3√3·(0.625 r)².
AREA_PER_R2: dict[str, float] = {
    "circle": math.pi,
    "square": 4.0,
    "diamond": 2 * 1.2**2,
    "triangle": 3 * math.sqrt(3) * 0.625**2,
}


def signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Distance (px) from each pixel centre (dx, dy from the shape's centre) to the shape's
    edge, negative inside."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - 1.2 * r) * np.float32(0.70710678)
    if shape == "triangle":  # pointing up, circumradius 1.25 r; edges at distance 0.625 r
        s = np.float32(0.8660254)  # sqrt(3)/2: the side edges' normals are (±s, -1/2)
        side = np.maximum(s * dx, -s * dx) - 0.5 * dy
        return np.maximum(dy, side) - 0.625 * r
    raise ValueError(f"synth: unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def coverage(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Anti-aliased pixel coverage in [0, 1] of the shape (the alpha synth composites with)."""
    return np.clip(0.5 - signed_distance(shape, dx, dy, r), 0.0, 1.0)
