"""Reading a video's vital statistics with PyAV: the numbers the preprocessing filters judge.

`probe` opens the container, decodes the first frame and checks that the packets run to the end
the container claims, so a file that opens but holds no decodable picture, or that was cut short
(a partial download whose header survived), counts as unreadable too (docs/recipe.md §1 drops
unreadable/broken videos). It never decodes a frame larger than MAX_PIXELS, so a header claiming
absurd dimensions cannot exhaust memory.

Width and height are as displayed: a phone video stored landscape with a 90° display rotation
reports portrait dimensions, the orientation ffmpeg's command line (which rotates automatically)
gives every later stage.

`probe_image` reads a still image (JPEG, PNG, WebP) the same way: one decoded picture, its size
as displayed (a JPEG's EXIF orientation arrives as the same display rotation), no time axis.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

# Largest frame probe will decode (8192 × 8192, above 8K UHD's 7680 × 4320): a header claiming
# more is treated as broken rather than trusted with gigabytes of frame buffers.
MAX_PIXELS = 8192 * 8192
# A complete file's packets reach the duration its container claims; a cut-short one stops
# early. Slack for containers that round durations or end streams unevenly.
TRUNCATION_SLACK_S = 0.5
# How much of the end is demuxed to find the last packet (from the key frame before it).
TAIL_S = 1.0


class ProbeError(ValueError):
    """A file that is not a readable video (or image); `path` and `reason` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """One video stream's properties; bit_rate in bits/s, profile as FFmpeg names it
    (e.g. "High", "Main", "Constrained Baseline"; None when the codec has none). width and
    height are as displayed, i.e. after `rotation` (degrees, from the container's display
    matrix; 0 when none), which decoders other than ffmpeg's command line do not apply."""

    duration_s: float
    fps: float
    width: int
    height: int
    num_frames: int
    codec: str
    profile: str | None
    bit_rate: int
    size_bytes: int
    rotation: int = 0

    @property
    def aspect_ratio(self) -> float:
        """Width over height, the ratio docs/recipe.md §1 bounds to [1/3, 3]."""
        return self.width / self.height


_Info = TypeVar("_Info", VideoInfo, "ImageInfo")


def probe(path: str | os.PathLike) -> VideoInfo:
    """Probe the first video stream of `path`; raise ProbeError if it is not a readable video."""
    with _opened(path, "no video stream") as (path, container, stream, size_bytes):
        info = _stream_info(container, stream, size_bytes)
        _check_frame_size(path, info)
        frame = next(container.decode(stream), None)
        if frame is None:
            raise ProbeError(path, "no decodable video frame")
        info = _as_displayed(info, frame.rotation)
        _check_complete(path, container)
    if info.width <= 0 or info.height <= 0 or info.fps <= 0 or info.duration_s <= 0:
        raise ProbeError(path, f"implausible stream properties {info}")
    return info


@contextmanager
def _opened(path: str | os.PathLike, no_stream: str):
    """(path, container, first video stream, file size) of a non-empty file FFmpeg can open;
    within, FFmpeg's and the OS's errors become a ProbeError naming the file. `no_stream` is
    the reason when the file holds no picture stream."""
    import av

    path = Path(path)
    if not path.is_file():
        raise ProbeError(path, "no such file")
    size_bytes = path.stat().st_size
    if size_bytes == 0:
        raise ProbeError(path, "empty file")
    try:
        # An absolute path, so FFmpeg never reads a name such as "pipe:0" as a protocol.
        with av.open(os.path.abspath(path)) as container:
            if not container.streams.video:
                raise ProbeError(path, no_stream)
            yield path, container, container.streams.video[0], size_bytes
    except ProbeError:
        raise
    except (av.FFmpegError, OSError, EOFError, ValueError) as err:
        # FFmpeg's words without the file name (ProbeError adds it), so equal faults give equal
        # reasons whatever the file is called, and a temporary copy's name never shows.
        words = getattr(err, "strerror", None) or str(err)
        raise ProbeError(path, f"{type(err).__name__}: {words}") from err


@dataclass(frozen=True)
class ImageInfo:
    """A still image's properties: width and height as displayed (after `rotation`, the EXIF
    orientation FFmpeg exports as a display matrix, which ffmpeg's command line applies too),
    and the decoder's name ("mjpeg", "png", "webp")."""

    width: int
    height: int
    codec: str
    size_bytes: int
    rotation: int = 0


def probe_image(path: str | os.PathLike) -> ImageInfo:
    """Probe a still image (JPEG, PNG, WebP: whatever FFmpeg decodes); ProbeError if it is not
    one readable picture. An animated image (a second frame decodes) is refused rather than cut
    to its first frame: it is a video, and would be trained as a still without anyone knowing.
    """
    with _opened(path, "no picture in the file") as (path, container, stream, size_bytes):
        ctx = stream.codec_context
        if ctx.width * ctx.height > MAX_PIXELS:
            raise ProbeError(path, f"image size {ctx.width}x{ctx.height} is over the "
                             f"{MAX_PIXELS:,}-pixel limit")
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None:
            raise ProbeError(path, "no decodable picture")
        if next(frames, None) is not None:
            raise ProbeError(path, "an animated image (more than one frame): convert it to "
                             "a video (e.g. mp4) to ingest it as one")
        info = ImageInfo(first.width, first.height, ctx.name, size_bytes)
    if info.width <= 0 or info.height <= 0:
        raise ProbeError(path, f"implausible image properties {info}")
    return _as_displayed(info, first.rotation)


def bits_per_pixel(info: VideoInfo) -> float:
    """bitrate / (w·h·fps): how many bits the encoder spent per pixel per frame (docs/recipe.md §1
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


def _check_frame_size(path: Path, info: VideoInfo) -> None:
    """Refuse to decode a frame over MAX_PIXELS: such a header is broken or hostile."""
    if info.width * info.height > MAX_PIXELS:
        raise ProbeError(
            path, f"frame size {info.width}x{info.height} is over the {MAX_PIXELS:,}-pixel limit"
        )


def _as_displayed(info: _Info, rotation: int | None) -> _Info:
    """Swap width and height for a quarter-turn display rotation (see VideoInfo)."""
    rotation = round(rotation or 0) % 360
    if rotation % 180 == 90:
        return replace(info, width=info.height, height=info.width, rotation=rotation)
    return replace(info, rotation=rotation)


def _check_complete(path: Path, container) -> None:
    """Raise ProbeError when the packets stop well before the container's duration.

    A file cut short (a partial download or copy) often still opens and decodes its first frame,
    since mp4 (faststart) and Matroska headers come first. Demuxing, without decoding, from the
    key frame before the last TAIL_S seconds finds where the data really ends. Every stream
    counts, as the container's duration is the longest stream's. Cases that cannot be judged
    (no duration, an unseekable format, no timestamps) pass.
    """
    import av

    if not container.duration:
        return
    duration_s = container.duration / 1_000_000  # av.time_base: microseconds
    start_s = (container.start_time or 0) / 1_000_000
    try:
        container.seek(int((start_s + max(0.0, duration_s - TAIL_S)) * 1_000_000))
    except av.FFmpegError:
        return
    end_s = None
    for packet in container.demux():
        if packet.pts is None or packet.time_base is None:
            continue  # the flush packet at the end, or a stream without timestamps
        packet_end = float((packet.pts + (packet.duration or 0)) * packet.time_base) - start_s
        end_s = packet_end if end_s is None else max(end_s, packet_end)
    if end_s is not None and end_s < duration_s - TRUNCATION_SLACK_S:
        raise ProbeError(
            path, f"truncated: the data ends at {end_s:.2f} s of the {duration_s:.2f} s the "
            "container claims (an incomplete download or copy?)"
        )
