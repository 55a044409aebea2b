"""Real clip files for the AE's training-window tests: H.264 through ffmpeg, described by rows
with the pyramid's small columns (osora.train.clip_windows.CLIP_COLUMNS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from osora.media.ffmpeg import encode_frames


def write_clip(path: Path, width: int, height: int, frames: int, seed: int) -> Path:
    """A textured clip moving a few pixels a frame (every window differs), crf 18."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 256, (3,))
    out = []
    for t in range(frames):
        wave = 127 + 100 * np.sin((xx + 3 * t) / 7.0) * np.cos((yy - 2 * t) / 5.0)
        out.append(np.stack([(wave + b) % 256 for b in base], axis=-1).astype(np.uint8))
    return encode_frames(out, path, 24, crf=18)  # (H, W, 3) frames


def clip_row(clip_id: str, path: Path, width: int, height: int, frames: int) -> dict:
    return {"id": clip_id, "uri": str(path), "num_frames": frames, "width": width,
            "height": height}


def clip_rows(folder: Path, sizes: dict[str, tuple[int, int, int]]) -> list[dict]:
    """One clip per id → (width, height, frames), written under `folder`, and its row."""
    folder.mkdir(parents=True, exist_ok=True)
    return [clip_row(name, write_clip(folder / f"{name}.mp4", w, h, n, seed=i), w, h, n)
            for i, (name, (w, h, n)) in enumerate(sizes.items())]
