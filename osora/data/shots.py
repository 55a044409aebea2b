"""Shot analysis (docs/recipe.md §1): scene cuts and the black-border crop, in one decode.

ffmpeg decodes the video once and every frame goes through one linear filter chain:

    cropdetect (full resolution) → scale to analysis_width → scdet → metadata=print

cropdetect runs first, on full-resolution frames, because a border is only a few pixels wide and
a downscaled frame would blur its edge; it is cheap (it scans rows and columns from the edges
inwards and stops at the first non-black line). scdet runs on the downscaled frames because its
score is a mean absolute frame difference: it needs no detail, and at full resolution it would
cost as much as the decode. Frame metadata survives `scale`, so one `metadata=print` at the end
reports both filters' values for every frame, and nothing has to be split or synchronised.

A cut is a frame whose scdet score (0–100) exceeds `scene_threshold`: the first frame of a new
shot. scdet scores a frame by min(difference to the previous frame, change of that difference),
so steady large motion (camera shake, pans) scores low and only an abrupt change scores high.

An image (`kind` "image") has one frame, so no scene detection runs: its row has num_frames 1,
no cuts and a null fps. Its black border is still measured, by the same cropdetect (alone in
the chain) on its one frame: a letterboxed still (a frame grab, a screenshot) trains on its
picture like a letterboxed video. With one frame there are no others to outvote a dark edge, so
an image whose edge rows are darker than `border_limit` all the way across (a night sky) is
cropped there, as a video whose every frame is that dark would be.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from osora.config.data import ShotsParams
from osora.data.clip_file import existing_file
from osora.data.operator import Operator, OperatorError, Row
from osora.media.ffmpeg import FFmpegError, parse_metadata_print, run_ffmpeg

if TYPE_CHECKING:
    from osora.config.store import StoreSettings
    from osora.fetch import FileCache

# Fraction of frames whose border measurement may be an outlier on each side, e.g. a subtitle
# drawn into the letterbox bar (the bar looks like picture) on a few frames, or a fade to black.
CROP_OUTLIER_FRACTION = 0.05
_CROP_KEYS = ("x1", "y1", "x2", "y2")
# Frame rates are rationals with denominators up to 1001 (NTSC's 30000/1001 and kin).
MAX_FPS_DENOMINATOR = 1001
_LOG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")


def ffmpeg_input(path: str | os.PathLike) -> str:
    """`path` as an ffmpeg input that can be nothing but a local file: absolute (a file named
    `-y.mp4` is not an option) and with the `file:` protocol (`a:b.mp4` is not protocol `a`)."""
    return "file:" + str(Path(path).resolve())


@contextmanager
def local_video(row: Row, files: FileCache) -> Iterator[Path]:
    """The local file of a `videos` row (an s3:// video fetched into the cache), valid inside
    the `with`; OperatorError naming the row and uri when there is none."""
    uri = row.get("uri")
    if not uri:
        raise OperatorError(f"video {row.get('id')}: the row has no uri")
    with existing_file(files.local_path, uri, f"video {row.get('id')}: no such file {uri}") \
            as path:
        yield path


class ShotDetector(Operator):
    """`videos` row → one `shots` row: decoded frame count, cut frames and the crop box."""

    output_table = "shots"

    def __init__(self, params: ShotsParams, store: StoreSettings | None = None):
        self.params = params
        # Where s3:// videos are fetched from and cached (private: not part of describe(),
        # and it holds the credentials). None: default S3 settings and cache.
        self._store_settings = store
        self._files: FileCache | None = None

    def process(self, row: Row) -> list[Row]:
        if self._files is None:
            from osora.fetch import FileCache

            self._files = FileCache.from_settings(self._store_settings)
        with local_video(row, self._files) as path:
            return self._shots(path, row)

    def _shots(self, path: Path, row: Row) -> list[Row]:
        """The `shots` row of the video file at `path`."""
        if row.get("kind") == "image":
            return [self._image_shot(path, row)]
        frames = self._frame_metadata(path, row)
        width, height = _frame_size(row, frames)
        scores = _column(frames, "lavfi.scd.score", path)  # (T,) scdet score of each frame
        edges = np.stack([_column(frames, f"lavfi.cropdetect.{k}", path) for k in _CROP_KEYS],
                         axis=1)  # (T, 4) per-frame x1, y1, x2, y2 (inclusive) of the picture
        x, y, w, h = robust_crop(edges, width, height)
        return [{
            "id": row["id"],
            "num_frames": len(frames),
            "fps": _fps(row, frames),
            "cut_frames": cut_frames(scores, self.params.scene_threshold),
            "crop_x": x, "crop_y": y, "crop_w": w, "crop_h": h,
        }]

    def _image_shot(self, path: Path, row: Row) -> Row:
        """An image's `shots` row: one frame, no cuts, no fps, the crop of its picture."""
        frames = self._frame_metadata(path, row, border_filter(self.params))
        width, height = _frame_size(row, frames)
        edges = np.stack([_column(frames[:1], f"lavfi.cropdetect.{k}", path)
                          for k in _CROP_KEYS], axis=1)  # (1, 4) x1, y1, x2, y2 of the picture
        x, y, w, h = robust_crop(edges, width, height)
        return {"id": row["id"], "num_frames": 1, "fps": None, "cut_frames": [],
                "crop_x": x, "crop_y": y, "crop_w": w, "crop_h": h}

    def _frame_metadata(self, path: Path, row: Row, vf: str | None = None
                        ) -> list[dict[str, str]]:
        """Decode the video once through the analysis chain (or the filter `vf`); one metadata
        dict per frame."""
        args = [
            "-threads", str(self.params.threads), "-i", ffmpeg_input(path),
            "-map", "0:v:0", "-an", "-sn", "-dn",
            "-filter_threads", str(self.params.threads),
            "-vf", vf or analysis_filter(self.params, row.get("width")),
            "-f", "null", "-",
        ]
        try:
            proc = run_ffmpeg(args)
        except FFmpegError as err:
            raise OperatorError(f"video {row['id']}: ffmpeg could not decode {path}: "
                                f"{ffmpeg_reason(err)}") from None
        frames = parse_metadata_print(proc.stdout.decode(errors="replace"))
        if not frames:
            raise OperatorError(f"video {row['id']}: no decodable video frame in {path}")
        return frames


def analysis_filter(params: ShotsParams, width: int | None) -> str:
    """The one filter chain of the analysis pass (see the module docstring for the order).

    cropdetect gets its black level as a fraction of full scale, so 10-bit video is judged like
    8-bit; `reset=1` measures every frame on its own (the robust crop is taken afterwards) and
    `skip=0` measures the first frames too. Frames narrower than analysis_width are not upscaled.
    """
    target = params.analysis_width if not width else min(params.analysis_width, width)
    target = max(2, target // 2 * 2)  # even: scale's -2 keeps the height even too
    return (
        f"{_cropdetect(params)},"
        f"scale={target}:-2:flags=bilinear,"
        f"scdet=threshold={params.scene_threshold},"
        "metadata=mode=print:file=-"
    )


def border_filter(params: ShotsParams) -> str:
    """An image's analysis chain: cropdetect alone (as in `analysis_filter`), no scene cuts."""
    return f"{_cropdetect(params)},metadata=mode=print:file=-"


def _cropdetect(params: ShotsParams) -> str:
    """cropdetect measuring every frame on its own, its black level a fraction of full scale."""
    limit = min(params.border_limit / 255, 0.9999)  # ≥ 1 would mean an absolute level
    return f"cropdetect=limit={limit:.6f}:round=2:reset=1:skip=0"


def cut_frames(scores: np.ndarray, threshold: float) -> list[int]:
    """Indices of frames scoring above `threshold`: the first frames of shots 2, 3, ...

    Frame 0 starts the first shot and is never a cut (scdet scores it 0 anyway)."""
    above = np.flatnonzero(scores > threshold)  # (C,) frame indices
    return [int(i) for i in above if i > 0]


def robust_crop(edges: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """One crop box (x, y, w, h) for the whole video from per-frame picture edges.

    edges: (T, 4) inclusive x1, y1, x2, y2 per frame, as cropdetect reports them. Frames with no
    picture at all (all black: x2 < x1) say nothing about the border and are ignored. Each edge
    is then taken as the outermost one after setting aside CROP_OUTLIER_FRACTION of the frames
    on that side: dark scenes (which look like wide borders) cannot shrink the crop into the
    picture, and a few frames with something bright in the bars cannot stop it cropping.
    The box is rounded inwards to even numbers (yuv420p halves the chroma) and is the full frame
    when there is no border.
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 4)  # (T, 4)
    valid = edges[(edges[:, 2] >= edges[:, 0]) & (edges[:, 3] >= edges[:, 1])]  # (V, 4)
    if len(valid) == 0:
        return 0, 0, even_down(width), even_down(height)
    q = CROP_OUTLIER_FRACTION
    x1, y1 = (int(np.quantile(valid[:, i], q, method="lower")) for i in (0, 1))
    x2, y2 = (int(np.quantile(valid[:, i], 1 - q, method="higher")) for i in (2, 3))
    x, y = even_up(max(x1, 0)), even_up(max(y1, 0))
    right = even_down(min(x2 + 1, width))  # exclusive
    bottom = even_down(min(y2 + 1, height))
    if right <= x or bottom <= y:  # cannot happen for valid frames; never return an empty box
        return 0, 0, even_down(width), even_down(height)
    return x, y, right - x, bottom - y


def _column(frames: list[dict[str, str]], key: str, path: Path) -> np.ndarray:
    """One metadata key over all frames, (T,) float; an error naming the file if a frame lacks
    it (the filter chain always sets it, so that would be a bug, not bad input)."""
    try:
        return np.array([float(f[key]) for f in frames])
    except KeyError:
        raise RuntimeError(f"shots: ffmpeg reported no {key} for a frame of {path}") from None


def _frame_size(row: Row, frames: list[dict[str, str]]) -> tuple[int, int]:
    """(width, height) of the decoded frames: from the row, else from cropdetect's full-frame
    bound (its x2/y2 can only be the frame's last pixel on a frame without borders)."""
    if row.get("width") and row.get("height"):
        return int(row["width"]), int(row["height"])
    return (max(int(float(f["lavfi.cropdetect.x2"])) for f in frames) + 1,
            max(int(float(f["lavfi.cropdetect.y2"])) for f in frames) + 1)


def rational_fps(fps: float) -> Fraction:
    """A frame rate as the nearest fraction with a denominator up to 1001: 24.00001 (measured
    from rounded timestamps) → 24, 29.97003 → 30000/1001. Frame counts computed from it are
    then exact (2 s at 24 fps is 48 frames, not 48.0002 rounded up to 49)."""
    return Fraction(fps).limit_denominator(MAX_FPS_DENOMINATOR)


def _fps(row: Row, frames: list[dict[str, str]]) -> float | None:
    """The video's frame rate: the probe's (the row's), else measured from the timestamps."""
    if row.get("fps"):
        return float(row["fps"])
    times = [float(f["pts_time"]) for f in frames if "pts_time" in f]
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return float(rational_fps((len(times) - 1) / (times[-1] - times[0])))


def ffmpeg_reason(err: FFmpegError, max_lines: int = 2) -> str:
    """ffmpeg's first distinct stderr lines (the cause comes first, the summary after), without
    the `[in#0 @ 0x55…]` prefixes that differ run to run: a short, stable quarantine reason
    such as "moov atom not found; Error opening input: Invalid data found …"."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in err.stderr.splitlines()]
    distinct = list(dict.fromkeys(line for line in lines if line))
    return "; ".join(distinct[:max_lines]) or f"ffmpeg exited with {err.returncode}"


def even_up(v: int) -> int:
    """The even number v or v + 1 (yuv420p needs even offsets and sides)."""
    return v + (v % 2)


def even_down(v: int) -> int:
    """The even number v or v - 1."""
    return v - (v % 2)
