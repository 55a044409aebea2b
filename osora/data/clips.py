"""Clips (docs/recipe.md §1): shots cut into 2–8 s H.264 clips, every clip of a video written
by one ffmpeg process.

Rules, in source frames (a video's frames as decoded, numbered from 0):
- shots are the spans between the shot analysis' cuts (and the video's ends);
- a shot shorter than `min_duration_s` is dropped;
- a shot longer than `max_duration_s` is split from its start into pieces of exactly
  `max_duration_s`; the remainder becomes a clip of its own when it lasts at least
  `min_duration_s`, the same rule as for a whole shot, and is dropped otherwise (a 10 s shot
  gives an 8 s and a 2 s clip; a 9.9 s shot gives one 8 s clip). Every clip thus lasts from
  `min_duration_s` to `max_duration_s`;
- black borders are cropped with the shot analysis' box;
- the longer side is scaled down to `max_side` when larger (aspect kept, even sides, never up);
- frame rates above `max_fps` are reduced by keeping every k-th frame, with k the smallest
  integer that brings the rate to `max_fps` or below (60 → 30, 50 → 25, 120 → 30): frames stay
  evenly spaced in time, where resampling 50 fps to 30 would drop 2 frames in 5 and judder;
- clips are H.264 (libx264, yuv420p) at the params' CRF and preset, deterministic bytes;
- except where re-encoding changes nothing the training data needs: a clip is then a stream
  copy of the source's packets (below).

How (re-encode): one decode of the source feeds one encoder. A `select` expression keeps exactly
the frames of all clips (decimated per clip from its own first frame), key frames are forced at
each clip's first frame, and the segment muxer starts a new file at each of them. Compared with
one ffmpeg process per clip (seek, decode, encode), the video is decoded once, no frame outside
a clip is encoded, and there is one process and one encoder whatever the number of clips, so
memory does not grow with the clip count either.

Stream copy (`stream_copy` in params): re-encoding costs about half of probe + shots + clips and
loses quality, so a clip whose source packets could be kept as they are is copied (`-c:v copy`:
no decode, no encode). That needs a source whose clips need no pixel change (H.264, 8-bit 4:2:0,
a profile every decoder plays; no crop, no downscale, no frame-rate cut, no display rotation;
constant frame rate and one packet per frame, as the shot analysis counted them), and a clip
that starts at a *cut point*: an IDR frame before which, in decode order, come exactly the
frames shown before it, so the clip's packets decode alone and hold exactly its frames. The cut
points come from demuxing the packets once (no decoding) and reading their NAL unit types.

On such a source a shot is planned as copies first: from the shot's first cut point, each piece
ends at the last cut point (or the video's end) that keeps it within `max_duration_s`, while it
lasts at least `min_duration_s`. What cannot be copied is re-encoded by the rules above: the
whole shot when not even its first piece can be copied (the shot's snapped span is shorter
than min_duration_s, or its cut points are further apart than max_duration_s), else the rest
of the shot after the last copied piece (dropped when shorter than min_duration_s). A copied
shot thus loses the frames before its first cut point (less than a GOP) and may lose a tail
shorter than min_duration_s, and its pieces may be shorter than max_duration_s where
re-encoded ones would not be.
Encoders put IDR frames at most scene cuts (x264's scenecut), so shot-aligned clips usually
qualify; how many do depends on the source's key frame spacing (GOP): clips can only start and
end on it. All copied clips of a video come from one `ffmpeg -c:v copy` segment-muxer process
that splits the stream at their cut points; the re-encoded ones from the one encode process.
Every clip file is probed (its frame count; a copy's size and rate too); if a copied clip fails
that check or the copy process fails, the video falls back to re-encoding every clip.

Images (`kind` "image"): an image becomes exactly one clip of one frame, `<video id>-000.png`,
cropped by its shot row's box and scaled down to `max_side` by the rules above (even sides,
never up, the same bicubic filter). It is stored as a PNG, 8-bit RGB, not an mp4: a 1-frame
H.264 file would add 4:2:0 chroma subsampling and a lossy encode to a picture that is already
compressed once (a JPEG), for nothing, since there is no motion to predict; PNG keeps exactly
the pixels ffmpeg cropped and scaled, and PyAV (osora.media.frames, hence every scorer,
captioner and the latent encoder) decodes it like a 1-frame video. Transparency is dropped (the
colour under it is kept). Its row has num_frames 1, start_frame 0, end_frame 1, and null fps,
start_s, end_s and duration_s: an image lasts no time, and a 0 would pass duration limits as
if it were a (very short) video.
"""

from __future__ import annotations

import bisect
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import accumulate
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from osora.config.data import ClipsParams
from osora.config.store import StoreSettings
from osora.data.operator import Operator, OperatorError, Row
from osora.data.shots import even_down, ffmpeg_input, ffmpeg_reason, rational_fps
from osora.data.stream_copy import (
    FPS_TOLERANCE,
    NotCopyable,
    copy_clips,
    copy_points,
)
from osora.media.ffmpeg import BITEXACT_FLAGS, FFmpegError, run_ffmpeg, segment_output
from osora.media.probe import ProbeError, VideoInfo, probe, probe_image

log = logging.getLogger(__name__)

# The rows ClipCutter reads: a video's file and size joined with its shot analysis.
CLIP_INPUT = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the video's id
        pa.field("uri", pa.string(), nullable=False),  # the raw video: a path or s3:// URI
        pa.field("kind", pa.string()),  # "video" or "image" (videos.kind)
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("fps", pa.float64()),  # from the shot analysis
        pa.field("num_frames", pa.int64()),  # frames decoded by the shot analysis
        pa.field("cut_frames", pa.list_(pa.int64())),
        pa.field("crop_x", pa.int32()),
        pa.field("crop_y", pa.int32()),
        pa.field("crop_w", pa.int32()),
        pa.field("crop_h", pa.int32()),
    ]
)
# Durations in params are decimals: 2.4 s is 12/5 s exactly, not the float's 2.39999….
_DURATION_DENOMINATOR = 1000


@dataclass(frozen=True)
class ClipFormat:
    """How every clip of one video is written; all its clips share it, so one encoder serves."""

    crop: tuple[int, int, int, int]  # x, y, w, h of the picture, source pixels
    size: tuple[int, int]  # w, h of the clip files
    step: int  # keep every step-th source frame
    fps: Fraction  # frame rate of the clip files: source fps / step


@dataclass(frozen=True)
class ClipPlan:
    """One clip: source frames start..end-1, and whether its file is a stream copy of the
    source's packets (`copy`) or re-encoded."""

    start: int
    end: int
    copy: bool = False

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end


class ClipMismatch(ValueError):
    """A written clip file is not the clip that was asked for (frames, size or rate)."""


class CopyFailed(RuntimeError):
    """The stream copy did not give the planned clips; the caller re-encodes them instead."""


def clip_inputs(videos: pa.Table, shots: pa.Table) -> pa.Table:
    """ClipCutter's input rows: each `shots` row with its video's uri, kind and frame size.

    An inner join by id (a shot row whose video is gone is left out), in the shots table's
    order. Done with index lookups rather than Table.join, which cannot carry list columns
    such as cut_frames. A videos table without `kind` (made by hand) is all videos.
    """
    position = pc.index_in(shots.column("id"), value_set=videos.column("id"))  # (S,) or null
    found = pc.is_valid(position)
    shots, position = shots.filter(found), position.filter(found)
    if "kind" not in videos.column_names:
        videos = videos.append_column("kind", pa.repeat("video", videos.num_rows))
    matched = videos.select(["uri", "kind", "width", "height"]).take(position)  # (S', 4)
    columns = {name: (matched if name in matched.column_names else shots).column(name)
               for name in CLIP_INPUT.names}
    return pa.table(columns).cast(CLIP_INPUT)


# -- planning: pure functions of the shot analysis and the cut points --------------------------


def plan_clips(
    num_frames: int, fps: float, cut_frames: list[int], params: ClipsParams,
    cut_points: Sequence[int] | None = None,
) -> list[ClipPlan]:
    """The clips of one video, in order: their source frames and whether each is copied.

    Without `cut_points` (None or empty: the video cannot be stream-copied) every clip is
    re-encoded by the module's rules. With them (frames where a copy may start or end, see
    `copy_points`) each shot is planned as copies first and the rest re-encoded (module
    docstring). The same inputs always give the same plan.
    """
    min_frames, max_frames = _frame_limits(fps, params)
    bounds = [0, *sorted(c for c in set(cut_frames) if 0 < c < num_frames), num_frames]
    # Where a copy may start and end: the cut points, and the video's end.
    edges = sorted({p for p in cut_points if 0 <= p < num_frames} | {num_frames}) \
        if cut_points else []
    plans = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        copied = _copied_pieces(start, end, edges, min_frames, max_frames)
        rest = copied[-1].end if copied else start
        plans += copied + _encoded_pieces(rest, end, min_frames, max_frames)
    return plans


def plan_spans(
    num_frames: int, fps: float, cut_frames: list[int], params: ClipsParams
) -> list[tuple[int, int]]:
    """The clips of one video as (start, end) source-frame spans, end exclusive, in order, all
    re-encoded: shots between cuts, too-short shots dropped, long shots split into
    max_duration_s pieces, a remainder kept only when it lasts min_duration_s."""
    return [plan.span for plan in plan_clips(num_frames, fps, cut_frames, params)]


def _frame_limits(fps: float, params: ClipsParams) -> tuple[int, int]:
    """(min, max) frames of a clip. Exact arithmetic: 2 s at 24 fps is 48 frames, never 49."""
    rate = rational_fps(fps)
    min_frames = max(1, math.ceil(_seconds(params.min_duration_s) * rate))
    max_frames = max(1, math.floor(_seconds(params.max_duration_s) * rate))
    return min_frames, max_frames


def _encoded_pieces(start: int, end: int, min_frames: int, max_frames: int) -> list[ClipPlan]:
    """Re-encoded clips of [start, end): max_frames pieces from `start`, the last one (the
    remainder) kept only when it has min_frames."""
    pieces = (ClipPlan(s, min(s + max_frames, end)) for s in range(start, end, max_frames))
    return [p for p in pieces if p.end - p.start >= min_frames]


def _copied_pieces(
    start: int, end: int, edges: list[int], min_frames: int, max_frames: int
) -> list[ClipPlan]:
    """Copied clips of the shot [start, end), greedy: from the shot's first edge, each piece
    ends at the last edge that keeps it within max_frames and the shot, as long as the piece
    has min_frames. Stops at the first piece that cannot be copied (its rest is re-encoded)."""
    pieces: list[ClipPlan] = []
    i = bisect.bisect_left(edges, start)
    while i < len(edges) and edges[i] < end:
        j = bisect.bisect_right(edges, min(edges[i] + max_frames, end)) - 1
        if edges[j] - edges[i] < min_frames:
            break
        pieces.append(ClipPlan(edges[i], edges[j], copy=True))
        i = j
    return pieces


def clip_format(row: Row, params: ClipsParams) -> ClipFormat:
    """Crop box, output size, frame step and output rate for one video's clips."""
    fps, max_fps = rational_fps(row["fps"]), rational_fps(params.max_fps)
    step = max(1, math.ceil(fps / max_fps))
    x, y, w, h = _crop_box(row)
    return ClipFormat(crop=(x, y, w, h), size=scaled_size(w, h, params.max_side), step=step,
                      fps=fps / step)


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the longer side at most `max_side`, aspect kept, both even, never upscaled."""
    longer = max(width, height)
    if longer <= max_side:
        return even_down(width), even_down(height)
    scale = max_side / longer
    w, h = (max(2, even_down(min(round(side * scale), max_side))) for side in (width, height))
    return w, h


# -- whether the clips keep the source's pixels ---------------------------------------------------


def check_copy_format(row: Row, fmt: ClipFormat) -> None:
    """NotCopyable unless the clips keep the source's pixels and frames as they are: no crop
    (black borders, or an odd side that yuv420p cannot keep), no downscale, no frame-rate cut."""
    width, height = int(row["width"]), int(row["height"])
    x, y, w, h = fmt.crop
    if fmt.crop != (0, 0, width, height):
        raise NotCopyable(f"the clips are cropped from {width}x{height} to {w}x{h}+{x}+{y}")
    if fmt.size != (width, height):
        raise NotCopyable(f"the clips are scaled down to {fmt.size[0]}x{fmt.size[1]} (max_side)")
    if fmt.step != 1:
        raise NotCopyable(f"the clips keep every {fmt.step}th frame (fps above max_fps)")


# -- writing: one ffmpeg process per kind --------------------------------------------------------


def clip_filter(spans: list[tuple[int, int]], fmt: ClipFormat) -> str:
    """The filter graph from decoded frames to the one stream that holds every clip.

    `select` keeps the frames of the clips (n counts decoded frames from 0, like the shot
    analysis; a span's frames are start..end-1, every step-th from its start), then crop and
    scale work on kept frames only, and `settb`/`setpts` renumber them at the output rate so
    the clips' frames follow each other without gaps.
    """
    def kept(start: int, end: int) -> str:
        span = f"between(n,{start},{end - 1})"
        return span if fmt.step == 1 else f"{span}*not(mod(n-{start},{fmt.step}))"

    x, y, w, h = fmt.crop
    chain = [f"select='{'+'.join(kept(s, e) for s, e in spans)}'", f"crop={w}:{h}:{x}:{y}"]
    if fmt.size != (w, h):
        chain.append(f"scale={fmt.size[0]}:{fmt.size[1]}:flags=bicubic+accurate_rnd+bitexact")
    # Time base one output frame, timestamps the output frame numbers: exact for any rational
    # rate, and every frame (the last one included) lasts one frame in the file.
    chain += [f"settb={fmt.fps.denominator}/{fmt.fps.numerator}", "setpts=N", "format=yuv420p"]
    return f"[0:v:0]{','.join(chain)}[clips]"


def clip_frame_counts(spans: list[tuple[int, int]], step: int) -> list[int]:
    """Frames each clip file holds: every step-th frame of its span, from the first."""
    return [-(-(end - start) // step) for start, end in spans]


def encode_clips(
    source: Path, spans: list[tuple[int, int]], fmt: ClipFormat, params: ClipsParams,
    out_dir: Path,
) -> list[Path]:
    """Write one mp4 per span into `out_dir` with one ffmpeg process; the files, in span order.

    The encoder gets a key frame at each clip's first frame (asked for half a frame early, so
    timestamp rounding cannot move it to the next frame), and the segment muxer starts a new
    file at exactly those frames, so each file starts with a key frame and holds its clip only.
    Raises FFmpegError when ffmpeg fails.
    """
    # Output frame numbers where clips 2, 3, ... start.
    starts = list(accumulate(clip_frame_counts(spans, fmt.step)))[:-1]
    keys = []
    if starts:
        key_times = ",".join(f"{float((j - Fraction(1, 2)) / fmt.fps):.6f}" for j in starts)
        keys = ["-force_key_frames", key_times]
    threads = str(params.threads)
    run_ffmpeg([
        "-threads", threads, "-i", ffmpeg_input(source),
        "-filter_complex_threads", threads, "-filter_complex", clip_filter(spans, fmt),
        "-map", "[clips]", "-an", "-sn", "-dn",
        "-c:v", "libx264", "-preset", params.preset, "-crf", str(params.crf),
        "-threads", threads, "-fps_mode", "passthrough", *BITEXACT_FLAGS, *keys,
        *segment_output(starts, out_dir),
    ])
    return [out_dir / f"{i:06d}.mp4" for i in range(len(spans))]


def image_clip_filter(crop: tuple[int, int, int, int], size: tuple[int, int]) -> str:
    """An image's chain: crop, then scale to `size` (bicubic, as the videos') into 8-bit RGB.
    The scale runs even at the crop's own size: it is where the source's pixel format (a
    JPEG's 4:2:0 YUV) becomes RGB, with accurate rounding and full chroma interpolation."""
    x, y, w, h = crop
    flags = "bicubic+accurate_rnd+full_chroma_int+bitexact"
    return f"crop={w}:{h}:{x}:{y},scale={size[0]}:{size[1]}:flags={flags},format=rgb24"


def encode_image(source: Path, crop: tuple[int, int, int, int], size: tuple[int, int],
                 params: ClipsParams, out: Path) -> Path:
    """Write an image's one clip as a PNG at `out` (module docstring). Raises FFmpegError when
    ffmpeg fails."""
    threads = str(params.threads)
    run_ffmpeg([
        "-threads", threads, "-i", ffmpeg_input(source),
        "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", image_clip_filter(crop, size),
        "-frames:v", "1", "-c:v", "png", *BITEXACT_FLAGS, "-update", "1", "-f", "image2",
        ffmpeg_input(out),
    ])
    return out


def check_clip(path: Path, frames: int, fmt: ClipFormat | None = None) -> VideoInfo:
    """Probe a written clip: it must hold `frames` frames and, given `fmt`, have its size and
    rate. Raises ClipMismatch saying what differs.

    Copies are checked against `fmt` as they keep the source's size and timing, which the
    copy analysis judged. Re-encoded clips get their size and rate from the filter graph; their
    rate in the file is the mp4 muxer's rounding of the planned one (a planned 900/43 fps is
    stored as 225/11), and the clip rows report the file's rate.
    """
    try:
        info = probe(path)
    except ProbeError as err:
        raise ClipMismatch(f"clip file {path.name} is unreadable: {err.reason}") from None
    if info.num_frames != frames:
        raise ClipMismatch(f"clip {path.name} has {info.num_frames} frames, expected {frames}")
    if fmt is None:
        return info
    if (info.width, info.height) != fmt.size:
        raise ClipMismatch(f"clip {path.name} is {info.width}x{info.height}, expected "
                           f"{fmt.size[0]}x{fmt.size[1]}")
    if abs(info.fps / float(fmt.fps) - 1) > FPS_TOLERANCE:
        raise ClipMismatch(f"clip {path.name} runs at {info.fps:.4f} fps, expected "
                           f"{float(fmt.fps):.4f}")
    return info


class ClipCutter(Operator):
    """A `clip_inputs` row (one video) → one `clips` row per clip; files go to the store at
    `clips/<video id>/<clip id>.mp4`, the clip id being `<video id>-<index:03d>`."""

    output_table = "clips"

    def __init__(self, params: ClipsParams, store: StoreSettings):
        self.params = params
        self.store = store
        self._store = None  # built in setup(), in the worker

    def setup(self) -> None:
        from osora.store import Store

        self._store = Store.from_settings(self.store)

    def describe(self) -> dict:
        """The params and where the files go; never the store's credentials."""
        return {"params": self.params.model_dump(), "store_uri": self.store.uri}

    def process(self, row: Row) -> list[Row]:
        if self._store is None:
            self.setup()
        if row.get("kind") == "image":
            return [self._image_clip(row)]
        video = row["id"]
        missing = [k for k in ("fps", "num_frames", "width", "height") if not row.get(k)]
        if missing:
            raise OperatorError(f"video {video}: no {', '.join(missing)} in its clip input row "
                                "(see clip_inputs)")
        # Copies come only from shots that give re-encoded clips too: none here, none at all.
        if not plan_spans(row["num_frames"], row["fps"], row.get("cut_frames") or [],
                          self.params):
            return []
        fmt = clip_format(row, self.params)
        with self._store.local_path(row["uri"]) as source, \
                tempfile.TemporaryDirectory(prefix="osora-clips-") as tmp:
            source, tmp = Path(source), Path(tmp)
            plans = self._plan(row, self._copy_points(row, source, fmt))
            try:
                written = self._write(row, source, plans, fmt, tmp / "clips")
            except CopyFailed as err:
                log.warning("video %s: stream copy failed (%s); re-encoding every clip",
                            video, err)
                plans = self._plan(row, None)
                written = self._write(row, source, plans, fmt, tmp / "re-encoded")
            copies = sum(plan.copy for plan in plans)
            log.debug("video %s: %d clips stream-copied, %d re-encoded", video, copies,
                      len(plans) - copies)
            return [
                self._store_clip(row, i, plan.span, fmt, file, info)
                for i, (plan, (file, info)) in enumerate(zip(plans, written, strict=True))
            ]

    def _image_clip(self, row: Row) -> Row:
        """An image's one 1-frame PNG clip, stored, as a `clips` row (module docstring)."""
        video = row["id"]
        if not row.get("width") or not row.get("height"):
            raise OperatorError(f"image {video}: no width or height in its clip input row "
                                "(see clip_inputs)")
        crop = _crop_box(row)
        size = scaled_size(crop[2], crop[3], self.params.max_side)
        clip_id = f"{video}-000"
        with self._store.local_path(row["uri"]) as source, \
                tempfile.TemporaryDirectory(prefix="osora-clips-") as tmp:
            try:
                file = encode_image(Path(source), crop, size, self.params,
                                    Path(tmp) / f"{clip_id}.png")
            except FFmpegError as err:
                raise OperatorError(f"image {video}: ffmpeg could not crop and scale "
                                    f"{row['uri']}: {ffmpeg_reason(err)}") from None
            _check_image_clip(file, size, video)
            uri = self._store.put_file(file, f"clips/{video}/{clip_id}.png")
        x, y, w, h = crop
        return {
            "id": clip_id, "video_id": video, "uri": uri,
            "start_frame": 0, "end_frame": 1, "start_s": None, "end_s": None,
            "duration_s": None, "fps": None, "width": size[0], "height": size[1],
            "num_frames": 1, "crop_x": x, "crop_y": y, "crop_w": w, "crop_h": h,
        }

    def _plan(self, row: Row, cut_points: list[int] | None) -> list[ClipPlan]:
        return plan_clips(row["num_frames"], row["fps"], row.get("cut_frames") or [],
                          self.params, cut_points)

    def _copy_points(self, row: Row, source: Path, fmt: ClipFormat) -> list[int] | None:
        """Where this video's clips may be stream-copied; None when `stream_copy` is off or
        the video does not allow it (the reason is logged at debug level)."""
        if not self.params.stream_copy:
            return None
        try:
            check_copy_format(row, fmt)
            return copy_points(source, row)
        except NotCopyable as why:
            log.debug("video %s: clips re-encoded, not stream-copied: %s", row["id"], why)
            return None

    def _write(
        self, row: Row, source: Path, plans: list[ClipPlan], fmt: ClipFormat, out_dir: Path,
    ) -> list[tuple[Path, VideoInfo]]:
        """Write and check every planned clip: the copies first, with one process (so a failed
        copy wastes no encoding), then the rest with the one encode process. (file, probe) per
        plan, in plan order. Raises CopyFailed when the copy process fails or a copy does not
        check out, OperatorError when encoding does."""
        video = row["id"]
        copied = [p for p in plans if p.copy]
        encoded = [p for p in plans if not p.copy]
        written: dict[ClipPlan, tuple[Path, VideoInfo]] = {}
        if copied:
            try:
                files = copy_clips(source, [p.span for p in copied], out_dir / "copied")
                written |= _checked(copied, files, fmt)
            except FFmpegError as err:
                raise CopyFailed(ffmpeg_reason(err)) from None
            except ClipMismatch as err:
                raise CopyFailed(str(err)) from None
        if encoded:
            try:
                files = encode_clips(source, [p.span for p in encoded], fmt, self.params,
                                     out_dir / "encoded")
            except FFmpegError as err:
                raise OperatorError(f"video {video}: ffmpeg could not cut clips from "
                                    f"{row['uri']}: {ffmpeg_reason(err)}") from None
            try:
                written |= _checked(encoded, files, fmt)
            except ClipMismatch as err:
                raise OperatorError(f"video {video}: {err} (the source decodes differently "
                                    "from the shot analysis' pass: is it damaged?)") from None
        return [written[p] for p in plans]

    def _store_clip(
        self, row: Row, index: int, span: tuple[int, int], fmt: ClipFormat, file: Path,
        info: VideoInfo,
    ) -> Row:
        """Upload one clip file and describe it as a `clips` row (sizes from the file)."""
        video = row["id"]
        clip_id = f"{video}-{index:03d}"
        uri = self._store.put_file(file, f"clips/{video}/{clip_id}.mp4")
        start, end = span
        x, y, w, h = fmt.crop
        return {
            "id": clip_id, "video_id": video, "uri": uri,
            "start_frame": start, "end_frame": end,
            "start_s": start / row["fps"], "end_s": end / row["fps"],
            "duration_s": info.num_frames / info.fps,
            "fps": info.fps, "width": info.width, "height": info.height,
            "num_frames": info.num_frames,
            "crop_x": x, "crop_y": y, "crop_w": w, "crop_h": h,
        }


def _checked(
    plans: list[ClipPlan], files: list[Path], fmt: ClipFormat
) -> dict[ClipPlan, tuple[Path, VideoInfo]]:
    """Each plan's file with its probe, every file checked against its plan (check_clip; the
    size and rate of copies only)."""
    counts = clip_frame_counts([p.span for p in plans], fmt.step)
    return {p: (f, check_clip(f, n, fmt if p.copy else None))
            for p, f, n in zip(plans, files, counts, strict=True)}


def _check_image_clip(path: Path, size: tuple[int, int], video: str) -> None:
    """OperatorError unless the written PNG is one picture of `size`."""
    try:
        info = probe_image(path)
    except ProbeError as err:
        raise OperatorError(f"image {video}: the clip PNG is unreadable: {err.reason}") from None
    if (info.width, info.height) != size:
        raise OperatorError(f"image {video}: the clip PNG is {info.width}x{info.height}, "
                            f"expected {size[0]}x{size[1]}")


def _seconds(value: float) -> Fraction:
    return Fraction(value).limit_denominator(_DURATION_DENOMINATOR)


def _crop_box(row: Row) -> tuple[int, int, int, int]:
    """The shot analysis' crop as even-sided (x, y, w, h) inside the frame; the full frame when
    the row has none."""
    width, height = int(row["width"]), int(row["height"])
    if row.get("crop_w") is None or row.get("crop_h") is None:
        return 0, 0, even_down(width), even_down(height)
    x = even_down(min(max(int(row["crop_x"] or 0), 0), width - 2))
    y = even_down(min(max(int(row["crop_y"] or 0), 0), height - 2))
    w = max(2, even_down(min(int(row["crop_w"]), width - x)))
    h = max(2, even_down(min(int(row["crop_h"]), height - y)))
    return x, y, w, h
