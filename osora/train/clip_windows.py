"""Training windows for the autoencoder: random (frames × crop × crop) cuts of a pyramid level's
clips, read per step.

The windows of a step are a pure function of (seed, rank, step) and the clips' small columns
(num_frames, width, height), so a resumed run trains on the same windows as an uninterrupted
one, each rank of a sharded run sees its own, and the schedule needs no pixels. A step reads
only the clips it draws. Decoding always runs from a clip's first frame: exact for any codec,
where a seek lands on a keyframe near, not always at, the asked frame.

Converting a frame (scale and YUV → RGB) costs several times its decoding, and the tiny profile
draws 16 windows a step from a few hundred small clips, so decoded clips are kept in a cache
bounded in bytes (`cache_bytes`, least recently used evicted): a clip that fits it is decoded
whole once and cut from memory afterwards; a larger one (every clip when the bound is 0, the
paper profile's millions of clips) is decoded up to its window's end and only the window's
frames are converted. Either way memory is the cache's bound plus the batches in flight,
whatever the number of clips, and the pixels are the same.

A clip that cannot be read, or whose file disagrees with its row (frame count, frame size), is
an error naming the row and the table version at the step that reads it, never a skip: a skip
would change every later step's windows. The file's header count is checked at every read; the
decoded count where the decoding reaches the end (always for a clip decoded whole), so a file
that decodes short without saying so in its header fails at the first window past its end.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from osora.media.frames import resized_size, rgb_frame

# The small columns the schedule is drawn from (and `uri`, where a drawn clip is read)
CLIP_COLUMNS = ["id", "uri", "num_frames", "width", "height"]


@dataclass(frozen=True, slots=True)
class Clip:
    """One clip row's small columns and the (width, height) it is decoded at."""

    id: str
    uri: str
    num_frames: int
    width: int
    height: int
    size: tuple[int, int]  # (width, height), the short side scaled to short_side

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the whole clip decoded at `size`: (num_frames, H, W, 3) uint8."""
        return self.num_frames * self.size[0] * self.size[1] * 3


@dataclass(frozen=True, slots=True)
class Window:
    """Frames [t0, t0 + frames) of `clip`, rows [y0, y0 + crop), columns [x0, x0 + crop) of
    its frames at `clip.size`."""

    clip: Clip
    t0: int
    y0: int
    x0: int


class ClipCache:
    """Decoded clips by id, at most `max_bytes` of them, the least recently used evicted first.
    Thread-safe: the prefetcher's workers read and fill it at once."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._clips: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            if key in self._clips:
                self._clips.move_to_end(key)
            return self._clips.get(key)

    def put(self, key: str, frames: np.ndarray) -> None:
        with self._lock:
            if key in self._clips or frames.nbytes > self.max_bytes:
                return
            self._clips[key] = frames
            self.bytes += frames.nbytes
            while self.bytes > self.max_bytes:
                self.bytes -= self._clips.popitem(last=False)[1].nbytes


class ClipWindows:
    """`windows(step)` → (B, 3, frames, crop, crop) float32 in [-1, 1].

    rows: the clips' CLIP_COLUMNS (dicts; other keys are ignored). store: reads each clip's
    `uri` (`Store.local_path`). table: "pyramid_all@4", the table and version errors name.
    cache_bytes: the bound of the decoded-clip cache (0: none). Clips shorter than `frames` or,
    scaled to `short_side`, smaller than `crop` cannot give a window and are left out;
    `skipped` counts them.
    """

    def __init__(self, rows: Sequence[dict], store, table: str, *, short_side: int | None,
                 frames: int, crop: int, batch_size: int, seed: int, rank: int = 0,
                 cache_bytes: int = 0):
        clips = [_clip(row, short_side, table) for row in rows]
        fits = [c for c in clips if c.num_frames >= frames and min(c.size) >= crop]
        self.skipped = len(clips) - len(fits)
        if not fits:
            sizes = sorted({(c.num_frames, c.size[1], c.size[0]) for c in clips})
            raise ValueError(
                f"{table}: no clip gives a {frames}-frame {crop}×{crop} window (clip T×H×W at "
                f"short side {short_side}: {sizes}); lower ae.train.frames or ae.train.crop, "
                "or raise ae.train.short_side"
            )
        self.clips, self.store, self.table = fits, store, table
        self.frames, self.crop, self.batch_size = frames, crop, batch_size
        self.seed, self.rank = seed, rank
        self.cache = ClipCache(cache_bytes)

    def schedule(self, step: int) -> list[Window]:
        """The step's windows, drawn from (seed, rank, step) and the clips' sizes alone: per
        window the clip, then t0, y0, x0."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7_919 + step)
        windows = []
        for _ in range(self.batch_size):
            clip = self.clips[int(torch.randint(len(self.clips), (1,), generator=g))]
            width, height = clip.size
            t0, y0, x0 = (int(torch.randint(n - k + 1, (1,), generator=g))
                          for n, k in ((clip.num_frames, self.frames), (height, self.crop),
                                       (width, self.crop)))
            windows.append(Window(clip, t0, y0, x0))
        return windows

    def __call__(self, step: int) -> torch.Tensor:
        batch = np.stack([self.read(w) for w in self.schedule(step)])  # (B, T, H, W, 3) uint8
        # In NumPy, single-threaded: torch ops here, in a prefetch thread, start an OpenMP team
        # of their own on the step's cores (200 tiny steps took 2–4 s longer prefetched than
        # not, where NumPy's take 3 s less)
        x = batch.astype(np.float32)
        x /= np.float32(127.5)
        x -= np.float32(1.0)  # [-1, 1]
        # (B, 3, T, H, W), channels innermost in memory as the former permuted batch: the tiny
        # DC-AE's CPU convolutions are faster on it than on a contiguous copy (200 steps in
        # 27–30 s against 36–38 s)
        return torch.from_numpy(x).permute(0, 4, 1, 2, 3)

    def read(self, window: Window) -> np.ndarray:
        """The window's pixels, (frames, crop, crop, 3) uint8 (a view: the caller copies)."""
        clip, t0 = window.clip, window.t0
        if clip.decoded_bytes <= self.cache.max_bytes:
            frames = self._whole(clip)[t0:t0 + self.frames]
        else:
            frames = self._decode(clip, t0, t0 + self.frames)
        return frames[:, window.y0:window.y0 + self.crop, window.x0:window.x0 + self.crop]

    def _whole(self, clip: Clip) -> np.ndarray:
        """All the clip's frames, (num_frames, H, W, 3) uint8, from the cache or decoded
        into it."""
        frames = self.cache.get(clip.id)
        if frames is None:
            frames = self._decode(clip, 0, clip.num_frames)
            self.cache.put(clip.id, frames)
        return frames

    def _decode(self, clip: Clip, start: int, end: int) -> np.ndarray:
        """Frames [start, end) at the clip's decoding size, (end − start, H, W, 3) uint8;
        ValueError naming the clip and the table when its file is missing, unreadable or
        disagrees with its row."""
        import av

        try:
            with self.store.local_path(clip.uri) as path, av.open(str(path)) as container:
                return _frames(container, clip, start, end)
        except (OSError, av.FFmpegError, EOFError, ValueError) as err:
            raise ValueError(
                f"{self.table}: clip {clip.id} ({clip.uri}): {err}; the pyramid row does not "
                "match a readable clip file: restore the file, or rebuild the level "
                "(dvc repro pyramid) so the row goes"
            ) from err


def _clip(row: dict, short_side: int | None, table: str) -> Clip:
    """The row as a Clip; ValueError naming it when a column the schedule needs is empty."""
    empty = [k for k in CLIP_COLUMNS if row.get(k) is None]
    if empty:
        raise ValueError(f"{table}: clip {row.get('id')} has no {', '.join(empty)}: the windows "
                         "are drawn from them; rebuild the level (dvc repro pyramid)")
    size = resized_size(row["width"], row["height"], short_side)
    return Clip(row["id"], row["uri"], row["num_frames"], row["width"], row["height"], size)


def _frames(container, clip: Clip, start: int, end: int) -> np.ndarray:
    """Frames [start, end) of an open clip, decoded from the first and converted from `start`
    on, (end − start, H, W, 3) uint8. Stops after frame end − 1 unless that is the last, when
    it decodes to the stream's end to check the count. ValueError where the file disagrees with
    the row: its header's frame count, a frame's size, the frames decoded."""
    stream = container.streams.video[0]
    if stream.frames and stream.frames != clip.num_frames:
        raise ValueError(f"the file's header counts {stream.frames} frames, the row "
                         f"{clip.num_frames}")
    frames, decoded = [], 0
    for frame in container.decode(stream):
        if (frame.width, frame.height) != (clip.width, clip.height):
            raise ValueError(f"frame {decoded} is {frame.width}×{frame.height}, the row says "
                             f"{clip.width}×{clip.height}")
        if start <= decoded < end:
            frames.append(rgb_frame(frame, clip.size))  # (H, W, 3) uint8
        decoded += 1
        if decoded == end < clip.num_frames:
            return np.stack(frames)
    if decoded != clip.num_frames:
        raise ValueError(f"decodes to {decoded} frames, the row says {clip.num_frames}")
    return np.stack(frames)
