"""osora.media: the ffmpeg runner, the H.264 encoder and the PyAV probe.

Reference videos come from ffmpeg's own `testsrc` generator, so the probe is checked against
numbers ffmpeg was told, not against our encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osora.media import (
    FFmpegError,
    ProbeError,
    VideoInfo,
    bits_per_pixel,
    encode_frames,
    filter_metadata,
    probe,
    run_ffmpeg,
)
from osora.media.ffmpeg import parse_metadata_print


@pytest.fixture(scope="module")
def testsrc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of ffmpeg's test pattern, 160x120 at 25 fps, H.264."""
    path = tmp_path_factory.mktemp("media") / "testsrc.mp4"
    run_ffmpeg([
        "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=2",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-y", path,
    ])
    return path


def _frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]  # (H, W, 3)


def test_probe_reads_what_ffmpeg_was_told(testsrc: Path):
    info = probe(testsrc)
    assert (info.width, info.height) == (160, 120)
    assert info.fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(2.0, abs=0.05)
    assert info.num_frames == 50
    assert info.codec == "h264"
    assert info.profile == "High"
    assert info.size_bytes == testsrc.stat().st_size
    # The stream's bitrate is its payload; the file's average includes the container.
    assert 0 < info.bit_rate <= info.size_bytes * 8 / info.duration_s * 1.01
    assert info.aspect_ratio == pytest.approx(4 / 3)


def test_bits_per_pixel_is_bitrate_over_pixel_rate():
    info = VideoInfo(duration_s=4.0, fps=24.0, width=320, height=180, num_frames=96,
                     codec="h264", profile="High", bit_rate=27_648, size_bytes=13_824)
    assert bits_per_pixel(info) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="positive"):
        bits_per_pixel(VideoInfo(1.0, 0.0, 320, 180, 0, "h264", None, 1000, 125))


@pytest.mark.parametrize(
    "content",
    [b"", b"not a video at all\n" * 50, bytes(np.random.default_rng(1).integers(0, 256, 5000,
                                                                                 dtype=np.uint8))],
    ids=["empty", "text", "random-bytes"],
)
def test_probe_rejects_garbage_naming_the_file(tmp_path: Path, content: bytes):
    path = tmp_path / "broken clip.mp4"
    path.write_bytes(content)
    with pytest.raises(ProbeError) as err:
        probe(path)
    assert err.value.path == path
    assert str(path) in str(err.value)
    assert err.value.reason


def test_probe_rejects_truncated_mp4(tmp_path: Path, testsrc: Path):
    path = tmp_path / "truncated.mp4"
    path.write_bytes(testsrc.read_bytes()[:2000])  # the moov index sits at the end
    with pytest.raises(ProbeError, match="truncated.mp4"):
        probe(path)


def test_probe_missing_file(tmp_path: Path):
    with pytest.raises(ProbeError, match="no such file"):
        probe(tmp_path / "nowhere.mp4")


def test_ffmpeg_error_names_the_input(tmp_path: Path):
    missing = tmp_path / "missing-input.mp4"
    with pytest.raises(FFmpegError) as err:
        run_ffmpeg(["-i", missing, "-f", "null", "-"])
    message = str(err.value)
    assert str(missing) in message
    assert "No such file" in message  # ffmpeg's own words, from stderr
    assert err.value.returncode != 0


def test_filter_metadata_reports_every_frame(testsrc: Path):
    frames = filter_metadata(testsrc, "scdet")
    assert [int(f["frame"]) for f in frames] == list(range(50))
    assert all("lavfi.scd.score" in f for f in frames)
    crops = filter_metadata(testsrc, "cropdetect=round=2")  # skips its first 2 frames
    assert crops[-1]["lavfi.cropdetect.w"] == "160"


def test_parse_metadata_print():
    text = ("frame:0    pts:0       pts_time:0\nlavfi.scd.mafd=0.000\nlavfi.scd.score=0.000\n"
            "frame:1    pts:512     pts_time:0.0416667\nlavfi.scd.score=41.5\n"
            "lavfi.scd.time=0.0416667\n")
    frames = parse_metadata_print(text)
    assert frames == [
        {"frame": "0", "pts": "0", "pts_time": "0", "lavfi.scd.mafd": "0.000",
         "lavfi.scd.score": "0.000"},
        {"frame": "1", "pts": "512", "pts_time": "0.0416667", "lavfi.scd.score": "41.5",
         "lavfi.scd.time": "0.0416667"},
    ]


def test_encode_frames_round_trip(tmp_path: Path):
    out = encode_frames(_frames(12), tmp_path / "sub" / "a.mp4", 16, crf=20)
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (64, 48, 12)
    assert info.fps == pytest.approx(16.0)
    assert info.duration_s == pytest.approx(12 / 16)
    assert [p.name for p in out.parent.iterdir()] == ["a.mp4"]  # no temporary left behind


def test_encode_frames_is_byte_deterministic(tmp_path: Path):
    a = encode_frames(iter(_frames(8)), tmp_path / "a.mp4", 24, crf=23)
    b = encode_frames(iter(_frames(8)), tmp_path / "b.mp4", 24, crf=23)
    assert a.read_bytes() == b.read_bytes()


def test_encode_frames_profile_and_bitrate(tmp_path: Path):
    base = probe(encode_frames(_frames(8), tmp_path / "b.mp4", 24, profile="baseline"))
    assert base.profile == "Constrained Baseline"
    abr = probe(encode_frames(_frames(24), tmp_path / "r.mp4", 24, crf=None, bitrate=50_000))
    assert abr.profile == "High"


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "no frames"),
        ([np.zeros((48, 64, 3), np.float32)], r"\(H, W, 3\) uint8"),
        ([np.zeros((48, 64), np.uint8)], r"\(H, W, 3\) uint8"),
        ([np.zeros((47, 64, 3), np.uint8)], "even"),
        ([np.zeros((48, 64, 3), np.uint8), np.zeros((48, 32, 3), np.uint8)], "size changed"),
    ],
    ids=["empty", "float", "grey", "odd", "size-change"],
)
def test_encode_frames_rejects_bad_frames(tmp_path: Path, frames, match):
    with pytest.raises(ValueError, match=match):
        encode_frames(frames, tmp_path / "bad.mp4", 24)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary


def test_encode_frames_rejects_bad_options(tmp_path: Path):
    with pytest.raises(ValueError, match="crf, bitrate or both"):
        encode_frames(_frames(2), tmp_path / "x.mp4", 24, crf=None)
    with pytest.raises(ValueError, match="fps"):
        encode_frames(_frames(2), tmp_path / "x.mp4", 0)
    with pytest.raises(ValueError, match="crf"):
        encode_frames(_frames(2), tmp_path / "x.mp4", 24, crf=60)


def test_encode_frames_ffmpeg_failure_names_output(tmp_path: Path):
    with pytest.raises(FFmpegError, match="x.mp4"):
        encode_frames(_frames(2), tmp_path / "x.mp4", 24, profile="no-such-profile")
    assert list(tmp_path.iterdir()) == []
