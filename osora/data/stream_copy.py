"""Stream copy: where a video's H.264 packets can be cut into clips without re-encoding.

A clip may be a copy of the source's packets (`ffmpeg -c:v copy`: no decode, no encode, no
quality loss) when it starts at a *cut point* — an IDR frame before which, in decode order,
come exactly the frames shown before it — so its packets decode alone and hold exactly its
frames. The cut points come from demuxing the packets once and reading their NAL unit types;
`copy_clips` then writes every copied clip of a video with one segment-muxer process. The
planning (which clips are copied) lives in osora.data.clips.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from osora.data.operator import Row
from osora.data.shots import ffmpeg_input
from osora.media.ffmpeg import BITEXACT_FLAGS, run_ffmpeg, segment_output

# Stream copy keeps the source's pixels, so the source must already be what a re-encoded clip
# is: 8-bit 4:2:0 (yuvj420p is the same with full-range levels, which its header says), in a
# profile every H.264 decoder plays (preprocessing drops Constrained Baseline, docs/recipe.md §1).
COPY_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p"})
COPY_PROFILES = frozenset({"Baseline", "Main", "High"})
# Relative difference allowed between a clip's frame rate and the planned one: a copied clip's
# rate is measured from the source's timestamps, which containers round (e.g. to 1 ms).
FPS_TOLERANCE = 1e-3
_H264_IDR_SLICE = 5  # nal_unit_type of a slice of an IDR picture


class NotCopyable(ValueError):
    """Why a video's clips cannot be stream-copied; they are re-encoded instead."""


def copy_points(path: str | os.PathLike, row: Row) -> list[int]:
    """The frames of a video where a stream-copied clip may start or end (its cut points, see
    the module docstring), in order; frame 0 is always one.

    Demuxes every packet once and decodes only the first frame (for its display rotation), so
    it costs a read of the file, not a decode. Raises NotCopyable with the reason when the
    stream is not one whose packets can be split frame-exactly where the shot analysis counted
    frames. (Whether the clips must change the pixels is the caller's check.)
    """
    import av

    try:
        with av.open(os.path.abspath(path)) as container:
            if not container.streams.video:
                raise NotCopyable("no video stream")
            stream = container.streams.video[0]
            _check_copy_stream(stream, row)
            pts, idr, first = _demux_packets(container, stream)
            if len(pts) != row["num_frames"]:
                raise NotCopyable(f"{len(pts)} packets, but the shot analysis decoded "
                                  f"{row['num_frames']} frames")
            if stream.time_base is None:
                raise NotCopyable("the stream has no time base")
            _check_constant_rate(sorted(pts), stream.time_base, float(row["fps"]))
            points = cut_points(pts, idr)
            if not points or points[0] != 0:
                raise NotCopyable("the first frame is not an IDR frame")
            rotation = _first_frame_rotation(stream, first)
    except (av.FFmpegError, OSError, EOFError) as err:
        raise NotCopyable(f"the stream cannot be read: {err}") from None
    if rotation:
        raise NotCopyable(f"a display rotation of {rotation}° (re-encoding applies it)")
    return points


def cut_points(pts: Sequence[int], idr: Sequence[bool]) -> list[int]:
    """Frame numbers (presentation order) at which the stream splits cleanly, from its packets
    in decode order: their timestamps and whether each is an IDR picture.

    A packet is a cut point when it is an IDR picture (nothing after it references anything
    before it) and exactly the frames shown before it precede it in decode order: its
    decode position then equals its presentation position, which is that frame number. B-frames
    are shown before packets decoded earlier, so the test is on both orders, not on either.
    The timestamps must be distinct (copy_points checks that first).
    """
    rank = {p: i for i, p in enumerate(sorted(pts))}  # presentation position of each packet
    points, latest = [], None  # latest: the largest pts decoded so far
    for position, (p, is_idr) in enumerate(zip(pts, idr, strict=True)):
        if is_idr and rank[p] == position and (latest is None or latest < p):
            points.append(position)
        latest = p if latest is None else max(latest, p)
    return points


def nal_unit_types(data: bytes, length_size: int | None) -> set[int]:
    """The NAL unit types in one H.264 packet. Its NAL units are length-prefixed (AVCC, as mp4
    and Matroska store them; `length_size` bytes per length) or, with `length_size` None,
    follow Annex B start codes (MPEG-TS, raw .h264), which cannot occur inside a unit."""
    types: set[int] = set()
    if length_size is None:
        i = data.find(b"\0\0\1")
        while 0 <= i < len(data) - 3:
            types.add(data[i + 3] & 0x1F)
            i = data.find(b"\0\0\1", i + 3)
        return types
    i = 0
    while i + length_size < len(data):
        size = int.from_bytes(data[i:i + length_size], "big")
        types.add(data[i + length_size] & 0x1F)
        i += length_size + size
    return types


def _nal_length_size(extradata: bytes | None) -> int | None:
    """Bytes per NAL length in the stream's packets, from its avcC header (first byte 1, the
    size in the low bits of the fifth); None for Annex B streams, whose header is a start code
    or absent."""
    if extradata and len(extradata) >= 5 and extradata[0] == 1:
        return (extradata[4] & 0x3) + 1
    return None


def _check_copy_stream(stream, row: Row) -> None:
    """NotCopyable unless the stream is H.264 in a copyable pixel format and profile, stored at
    the size the clips are to have (a rotated stream is stored at another)."""
    ctx = stream.codec_context
    if ctx.name != "h264":
        raise NotCopyable(f"codec {ctx.name}, not H.264")
    if ctx.pix_fmt not in COPY_PIXEL_FORMATS:
        raise NotCopyable(f"pixel format {ctx.pix_fmt}, not 8-bit 4:2:0")
    if ctx.profile not in COPY_PROFILES:
        raise NotCopyable(f"H.264 profile {ctx.profile}")
    if (ctx.width, ctx.height) != (int(row["width"]), int(row["height"])):
        raise NotCopyable(f"stored at {ctx.width}x{ctx.height}, shown at "
                          f"{row['width']}x{row['height']}")


def _demux_packets(container, stream) -> tuple[list[int], list[bool], object]:
    """Every packet's pts and whether it is an IDR picture, in decode order, and the first
    packet. Only key frames' bytes are read (for their NAL types), and no packet is kept but
    the first, so memory stays small. NotCopyable on a packet without timestamps, one the
    demuxer marks discard (an edit list hides it) or corrupt, or decode times out of order."""
    length_size = _nal_length_size(stream.codec_context.extradata)
    pts: list[int] = []
    idr: list[bool] = []
    first, last_dts = None, None
    for packet in container.demux(stream):
        if not packet.size:
            continue  # the empty packet that ends the stream
        if packet.pts is None or packet.dts is None:
            raise NotCopyable("a packet has no timestamp")
        if packet.is_discard or packet.is_corrupt:
            raise NotCopyable("a packet is marked discard (an edit list) or corrupt")
        if last_dts is not None and packet.dts <= last_dts:
            raise NotCopyable("decode timestamps do not increase")
        last_dts = packet.dts
        if first is None:
            first = packet
        pts.append(packet.pts)
        idr.append(packet.is_keyframe
                   and _H264_IDR_SLICE in nal_unit_types(bytes(packet), length_size))
    if first is None:
        raise NotCopyable("no packet")
    return pts, idr, first


def _check_constant_rate(times: list[int], time_base: Fraction, fps: float) -> None:
    """NotCopyable unless the sorted timestamps step evenly (within one tick of rounding) at
    the shot analysis' rate: a copied clip keeps the source's timing, where a re-encoded one
    gets an exact constant rate."""
    steps = [b - a for a, b in zip(times, times[1:])]
    if not steps:
        raise NotCopyable("a single frame")
    if min(steps) <= 0:
        raise NotCopyable("two frames share a timestamp")
    if max(steps) - min(steps) > 1:
        raise NotCopyable("variable frame rate")
    measured = float(len(steps) / ((times[-1] - times[0]) * time_base))
    if abs(measured / fps - 1) > FPS_TOLERANCE:
        raise NotCopyable(f"the timestamps give {measured:.4f} fps, the shot analysis {fps}")


def _first_frame_rotation(stream, packet) -> int:
    """The display rotation in degrees (0 when none) from the first packet's decoded frame;
    PyAV shows the stream's display matrix on frames only."""
    frames = stream.codec_context.decode(packet) + stream.codec_context.decode(None)
    if not frames:
        raise NotCopyable("the first packet decodes to no frame")
    return round(frames[0].rotation or 0) % 360


def copy_clips(source: Path, spans: list[tuple[int, int]], out_dir: Path) -> list[Path]:
    """Write one mp4 per span into `out_dir`, each a copy of the source's packets, with one
    ffmpeg process; the files, in span order.

    Every span starts at a cut point and ends at one or at the video's end, where a frame's
    decode position is its frame number. So the segment muxer, told to start a file at the
    packet numbered like each span's start and end frame, writes file k with frames
    edges[k]..edges[k+1]-1 exactly. The files between spans (frames no clip keeps) are
    written too and stay in `out_dir`: copying them costs a read, where leaving them out would
    cost a second pass. Raises FFmpegError when ffmpeg fails.
    """
    edges = sorted({frame for span in spans for frame in span} - {0})
    run_ffmpeg([
        "-i", ffmpeg_input(source), "-map", "0:v:0", "-an", "-sn", "-dn", "-c:v", "copy",
        *BITEXACT_FLAGS, *segment_output(edges, out_dir),
    ])
    file_starts = [0, *edges]
    return [out_dir / f"{file_starts.index(start):06d}.mp4" for start, _ in spans]
