"""Reading a video's vital statistics with PyAV: the numbers the preprocessing filters judge.

`probe` opens the container and decodes the first frame, so a file that opens but holds no
decodable picture counts as unreadable too (RECIPE §1 drops unreadable/broken videos).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class ProbeError(ValueError):
    """A file that is not a readable video; `path` and `reason` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """One video stream's properties; bit_rate in bits/s, profile as FFmpeg names it
    (e.g. "High", "Main", "Constrained Baseline"; None when the codec has none)."""

    duration_s: float
    fps: float
    width: int
    height: int
    num_frames: int
    codec: str
    profile: str | None
    bit_rate: int
    size_bytes: int

    @property
    def aspect_ratio(self) -> float:
        """Width over height, the ratio RECIPE §1 bounds to [1/3, 3]."""
        return self.width / self.height


def probe(path: str | os.PathLike) -> VideoInfo:
    """Probe the first video stream of `path`; raise ProbeError if it is not a readable video."""
    import av

    path = Path(path)
    if not path.is_file():
        raise ProbeError(path, "no such file")
    size_bytes = path.stat().st_size
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ProbeError(path, "no video stream")
            stream = container.streams.video[0]
            info = _stream_info(container, stream, size_bytes)
            if next(container.decode(stream), None) is None:
                raise ProbeError(path, "no decodable video frame")
    except ProbeError:
        raise
    except (av.FFmpegError, OSError, EOFError, ValueError) as err:
        raise ProbeError(path, f"{type(err).__name__}: {err}") from err
    if info.width <= 0 or info.height <= 0 or info.fps <= 0 or info.duration_s <= 0:
        raise ProbeError(path, f"implausible stream properties {info}")
    return info


def bits_per_pixel(info: VideoInfo) -> float:
    """bitrate / (w·h·fps): how many bits the encoder spent per pixel per frame (RECIPE §1
    drops videos under 0.02, which are too compressed to show detail)."""
    pixels_per_s = info.width * info.height * info.fps
    if pixels_per_s <= 0:
        raise ValueError(f"bits_per_pixel: need positive width, height and fps, got {info}")
    return info.bit_rate / pixels_per_s


def _stream_info(container, stream, size_bytes: int) -> VideoInfo:
    """Collect the numbers, each from the most direct source the container offers."""
    ctx = stream.codec_context
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    if stream.duration is not None and stream.time_base is not None:
        duration_s = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration_s = container.duration / 1_000_000  # av.time_base: microseconds
    else:
        duration_s = 0.0
    num_frames = stream.frames or round(duration_s * fps)
    bit_rate = stream.bit_rate or container.bit_rate
    if not bit_rate and duration_s > 0:
        bit_rate = round(size_bytes * 8 / duration_s)
    return VideoInfo(
        duration_s=duration_s,
        fps=fps,
        width=ctx.width,
        height=ctx.height,
        num_frames=int(num_frames),
        codec=ctx.name,
        profile=ctx.profile or None,
        bit_rate=int(bit_rate or 0),
        size_bytes=size_bytes,
    )
