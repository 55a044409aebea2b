"""Decoding chosen frames of a video as RGB arrays (PyAV), for scorers and captioners."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def spaced_indices(num_frames: int, count: int) -> list[int]:
    """`count` frame indices spread uniformly from the first to the last frame.

    spaced_indices(97, 3) == [0, 48, 96]: first, middle, last (the aesthetic scorer's frames).
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if count == 1:
        return [(num_frames - 1) // 2]
    return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """Frames at `indices` (0-based, decode order) as (N, H, W, 3) uint8 RGB.

    Decodes sequentially and stops after the last wanted frame: exact for any codec and frame
    rate, and cheap for the short clips of the pyramid. Raises ValueError naming the file when
    an index lies past the end.
    """
    import av

    wanted = sorted(set(indices))
    found: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
                if len(found) == len(wanted):
                    break
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ValueError(f"{path}: has {len(found) and max(found) + 1} frames decodable, "
                         f"frames {missing} requested")
    return np.stack([found[i] for i in indices])


def resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the short side is `short_side` (even sides; None: as is)."""
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def rgb_frame(frame, size: tuple[int, int] | None) -> np.ndarray:
    """A decoded PyAV frame as (H, W, 3) uint8 RGB, scaled to `size` = (width, height) by
    libswscale's bicubic filter when given and not already its size. Every reader of training
    pixels converts through here, so the same frame gives the same bytes whichever reads it."""
    if size is not None and (frame.width, frame.height) != size:
        frame = frame.reformat(width=size[0], height=size[1], interpolation="BICUBIC")
    return frame.to_ndarray(format="rgb24")


def read_video(
    path: str | Path, size: tuple[int, int] | None = None, max_frames: int | None = None
) -> np.ndarray:
    """The first `max_frames` frames (all when None) as (T, H, W, 3) uint8 RGB, scaled to
    `size` = (width, height) by libswscale's bicubic filter when given."""
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(rgb_frame(frame, size))  # (H, W, 3) uint8
            if max_frames is not None and len(frames) == max_frames:
                break
    if not frames:
        raise ValueError(f"{path}: no decodable video frame")
    return np.stack(frames)
