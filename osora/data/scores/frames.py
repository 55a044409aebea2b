"""Frames as the scorers read them: a few uniformly spaced ones, or every one downscaled.

The aesthetic, blur and OCR scorers look at a handful of frames at full size; the jitter
scorer compares every pair of consecutive frames, where a small size is enough and much
cheaper. Errors are ValueError/OSError/PyAV errors naming the file; the scorer base turns
them into a quarantine reason naming the clip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from osora.media.frames import read_frames, spaced_indices


def sampled_frames(path: Path, num_frames: int | None, count: int) -> np.ndarray:
    """`count` frames spread from the first to the last, as (N, H, W, 3) uint8 RGB.

    `num_frames` is the clip's frame count from the clips table; a clip shorter than `count`
    gives each of its frames once (N ≤ count).
    """
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(
            f"the clip row gives num_frames={num_frames!r}; the clips table must count the "
            "frames of every clip file"
        )
    return read_frames(path, spaced_indices(num_frames, count))  # (N, H, W, 3)


def scaled_frames(path: Path, max_width: int, pix_fmt: str = "bgr24") -> Iterator[np.ndarray]:
    """Every frame in decode order as (h, w, 3) uint8, downscaled (bilinear, aspect kept) so
    that w ≤ max_width; smaller frames keep their size. `pix_fmt` "bgr24" suits OpenCV-based
    code, "rgb24" the rest."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            width = min(frame.width, max_width)
            height = max(1, round(frame.height * width / frame.width))
            yield frame.to_ndarray(width=width, height=height, format=pix_fmt)  # (h, w, 3)
