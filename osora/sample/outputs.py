"""Where samples go: `{prompt}-{index}.mp4`, VBench's naming (its evaluation finds a prompt's
videos by that name), beside `{prompt}-{index}.json` saying how the video was made (prompt as
given and as the model saw it, seed, settings, checkpoint and its sha256), so any sample can be
made again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from osora.fileio import atomic_write_json

MAX_NAME_BYTES = 255  # ext4, APFS, NTFS: the longest file name


def sample_stem(prompt: str, index: int) -> str:
    """`{prompt}-{index}`: the prompt verbatim (as VBench names its videos); a prompt that no
    file system can hold as a name is an error that says so, not a silently different name."""
    stem = f"{prompt}-{index}"
    bad = [c for c in ("/", "\0") if c in prompt]
    if bad or prompt in (".", "..") or not prompt.strip():
        raise ValueError(f"prompt {prompt!r} cannot be a file name (VBench names videos "
                         f"'{{prompt}}-{{index}}.mp4'): remove {bad or 'its blankness'}")
    if len((stem + ".json").encode()) > MAX_NAME_BYTES:
        raise ValueError(f"prompt of {len(prompt.encode())} bytes is too long for the file name "
                         f"'{{prompt}}-{{index}}.mp4' (at most {MAX_NAME_BYTES} bytes); shorten it")
    return stem


def write_sample(out_dir: str | os.PathLike, prompt: str, index: int, frames: np.ndarray,
                 fps: float, sidecar: dict) -> Path:
    """Write frames (F, H, W, 3) uint8 as `{prompt}-{index}.mp4` (H.264, CRF 18; each file
    appears whole) and its JSON sidecar. Returns the video's path."""
    from osora.media.ffmpeg import encode_frames

    stem = sample_stem(prompt, index)
    out_dir = Path(out_dir)
    video = encode_frames(list(frames), out_dir / f"{stem}.mp4", fps, crf=18)
    atomic_write_json(out_dir / f"{stem}.json", {"prompt": prompt, "index": index, **sidecar})
    return video


def read_sidecar(video: str | os.PathLike) -> dict:
    """The sidecar of a sample video."""
    return json.loads(Path(video).with_suffix(".json").read_text())
