"""Clips (RECIPE §1): shots cut into 2–8 s H.264 training clips, every clip of a video written
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
- clips are H.264 (libx264, yuv420p) at the params' CRF and preset, deterministic bytes.

How: one decode of the source feeds one encoder. A `select` expression keeps exactly the frames
of all clips (decimated per clip from its own first frame), key frames are forced at each clip's
first frame, and the segment muxer starts a new file at each of them. Compared with one ffmpeg
process per clip (seek, decode, encode), the video is decoded once, no frame outside a clip is
encoded, and there is one process and one encoder whatever the number of clips, so memory does
not grow with the clip count either.
"""

from __future__ import annotations

import math
import tempfile
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
from osora.media.ffmpeg import _BITEXACT_FLAGS as BITEXACT_FLAGS  # as encode_frames uses
from osora.media.ffmpeg import FFmpegError, run_ffmpeg
from osora.media.probe import ProbeError, VideoInfo, probe

# The rows ClipCutter reads: a video's file and size joined with its shot analysis.
CLIP_INPUT = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the video's id
        pa.field("uri", pa.string(), nullable=False),  # the raw video: a path or s3:// URI
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


def clip_inputs(videos: pa.Table, shots: pa.Table) -> pa.Table:
    """ClipCutter's input rows: each `shots` row with its video's uri and frame size.

    An inner join by id (a shot row whose video is gone is left out), in the shots table's
    order. Done with index lookups rather than Table.join, which cannot carry list columns
    such as cut_frames.
    """
    position = pc.index_in(shots.column("id"), value_set=videos.column("id"))  # (S,) or null
    found = pc.is_valid(position)
    shots, position = shots.filter(found), position.filter(found)
    matched = videos.select(["uri", "width", "height"]).take(position)  # (S', 3) in shots order
    columns = {name: (matched if name in matched.column_names else shots).column(name)
               for name in CLIP_INPUT.names}
    return pa.table(columns).cast(CLIP_INPUT)


def plan_spans(
    num_frames: int, fps: float, cut_frames: list[int], params: ClipsParams
) -> list[tuple[int, int]]:
    """The clips of one video as (start, end) source-frame spans, end exclusive, in order.

    Applies the module's rules: shots between cuts, too-short shots dropped, long shots split
    into max_duration_s pieces, a remainder kept only when it lasts min_duration_s.
    """
    rate = rational_fps(fps)  # exact arithmetic: 2 s at 24 fps is 48 frames, never 49
    min_frames = math.ceil(_seconds(params.min_duration_s) * rate)
    max_frames = max(1, math.floor(_seconds(params.max_duration_s) * rate))
    bounds = [0, *sorted(c for c in set(cut_frames) if 0 < c < num_frames), num_frames]
    spans = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        for piece_start in range(start, end, max_frames):
            piece_end = min(piece_start + max_frames, end)
            if piece_end - piece_start >= min_frames:
                spans.append((piece_start, piece_end))
    return spans


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
    counts = clip_frame_counts(spans, fmt.step)
    starts = list(accumulate(counts))[:-1]  # output frame numbers of clips 2, 3, ...
    split = []
    if starts:
        key_times = ",".join(f"{float((j - Fraction(1, 2)) / fmt.fps):.6f}" for j in starts)
        split = ["-force_key_frames", key_times, "-segment_frames", ",".join(map(str, starts))]
    threads = str(params.threads)
    run_ffmpeg([
        "-threads", threads, "-i", ffmpeg_input(source),
        "-filter_complex_threads", threads, "-filter_complex", clip_filter(spans, fmt),
        "-map", "[clips]", "-an", "-sn", "-dn",
        "-c:v", "libx264", "-preset", params.preset, "-crf", str(params.crf),
        "-threads", threads, "-fps_mode", "passthrough", *BITEXACT_FLAGS, *split,
        # Each file's timestamps start at 0; "disabled" stops the first file alone being
        # shifted by the B-frame delay.
        "-f", "segment", "-segment_format", "mp4", "-reset_timestamps", "1",
        "-avoid_negative_ts", "disabled", str(out_dir / "%06d.mp4"),
    ])
    return [out_dir / f"{i:06d}.mp4" for i in range(len(spans))]


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
        video = row["id"]
        missing = [k for k in ("fps", "num_frames", "width", "height") if not row.get(k)]
        if missing:
            raise OperatorError(f"video {video}: no {', '.join(missing)} in its clip input row "
                                "(see clip_inputs)")
        spans = plan_spans(row["num_frames"], row["fps"], row.get("cut_frames") or [],
                           self.params)
        if not spans:
            return []
        fmt = clip_format(row, self.params)
        with self._store.local_path(row["uri"]) as source, \
                tempfile.TemporaryDirectory(prefix="osora-clips-") as tmp:
            try:
                files = encode_clips(Path(source), spans, fmt, self.params, Path(tmp))
            except FFmpegError as err:
                raise OperatorError(f"video {video}: ffmpeg could not cut clips from "
                                    f"{row['uri']}: {ffmpeg_reason(err)}") from None
            expected = clip_frame_counts(spans, fmt.step)
            infos = [_probe_clip(f, n, video) for f, n in zip(files, expected, strict=True)]
            return [
                self._store_clip(row, i, span, fmt, file, info)
                for i, (span, file, info) in enumerate(zip(spans, files, infos, strict=True))
            ]

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


def _probe_clip(path: Path, expected_frames: int, video: str) -> VideoInfo:
    """Probe a written clip; OperatorError when it is missing or holds the wrong frame count
    (the source then decodes differently from the shot analysis' pass, e.g. it is corrupt)."""
    try:
        info = probe(path)
    except ProbeError as err:
        raise OperatorError(f"video {video}: clip file {path.name} is unreadable: "
                            f"{err.reason}") from None
    if info.num_frames != expected_frames:
        raise OperatorError(
            f"video {video}: clip {path.name} has {info.num_frames} frames, expected "
            f"{expected_frames}: the video does not decode the same way twice"
        )
    return info


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
