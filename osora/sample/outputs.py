"""Where samples go: `{prompt}-{index}.mp4`, VBench's naming (its evaluation finds a prompt's
videos by that name), beside `{prompt}-{index}.json` saying how the video was made (prompt as
given and as the model saw it, seed, settings, checkpoint and its sha256), so any sample can be
made again."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from osora.fileio import atomic_write_json

MAX_NAME_BYTES = 255  # ext4, APFS, NTFS: the longest file name
# the longest stem: the files are first written as ".{stem}.<random>.mp4" and renamed
MAX_STEM_BYTES = MAX_NAME_BYTES - 24


def sample_stem(prompt: str, index: int) -> str:
    """`{prompt}-{index}`: the prompt verbatim, as VBench names its videos. A prompt too long
    for a file name (VBench's are all far shorter) is cut and given the first 8 hex digits of
    its sha256, `{cut}~{hash}-{index}`; the sidecar keeps it whole. A prompt no file system can
    hold as a name is an error that says so, not a silently different name."""
    bad = [c for c in ("/", "\0") if c in prompt]
    if bad or prompt in (".", "..") or not prompt.strip():
        raise ValueError(f"prompt {prompt!r} cannot be a file name (VBench names videos "
                         f"'{{prompt}}-{{index}}.mp4'): remove {bad or 'its blankness'}")
    stem = f"{prompt}-{index}"
    room = MAX_STEM_BYTES - len(f"~12345678-{index}".encode())
    if len(stem.encode()) > MAX_STEM_BYTES:
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
        cut = prompt.encode()[:room].decode(errors="ignore")
        stem = f"{cut}~{digest}-{index}"
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
