"""A corpus of broken and awkward raw videos, to run through the whole data pyramid.

Real crawls hold files that are cut short, empty, not video at all, audio only, a single frame,
absurdly sized, variable-frame-rate, in unusual pixel formats or codecs, rotated by metadata,
or named so that a careless shell command or ffmpeg call would misread them (spaces, quotes,
";", a leading "-", "$(...)", non-ASCII). `make_bad_inputs` writes one small example of each
(well under 2 MB and a few seconds in all) with ffmpeg's own test sources, so every stage can
be tested against them: each must either process the file or set it aside with a reason,
never crash, hang, exhaust memory or run a command hidden in a name.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from osora.media.ffmpeg import run_ffmpeg

# Readable, keepable videos (2.5 s, 24 fps, 128×72, H.264 High) under names that break naive
# shell or ffmpeg command lines. Each has its own content (a different length), so content-hash
# ids keep them apart instead of counting them as copies of one another.
AWKWARD_NAMES = (
    "with space.mp4",
    "quote's \"double\".mp4",
    "semi;colon.mp4",
    "-i.mp4",
    "-y.mp4",
    "$(touch pwned).mp4",
    "vidéo 日本.mp4",
)
# A YUV4MPEG2 header (a format FFmpeg detects by content, whatever the file's suffix) claiming
# 16000×16000 frames, followed by a few bytes: about 384 MB per frame if anything trusted it.
HUGE_HEADER = b"YUV4MPEG2 W16000 H16000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(4096)


def make_bad_inputs(folder: Path) -> dict[str, str]:
    """Write the corpus into `folder` (created if needed); return file name -> what is wrong."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (problem, make) in _CORPUS.items():
        make(folder / name)
        written[name] = problem
    for i, name in enumerate(AWKWARD_NAMES):
        _encode(folder / name, duration=2.5 + 0.25 * i)
        written[name] = "a readable video whose name a shell or ffmpeg could misread"
    return written


# -- makers: one per broken file -----------------------------------------------------------------


def _encode(
    out: Path,
    *,
    source: str = "testsrc2",
    size: str = "128x72",
    rate: float = 24,
    duration: float = 2.5,
    codec: tuple[str, ...] = ("-c:v", "libx264", "-pix_fmt", "yuv420p"),
    extra: tuple[str, ...] = (),
) -> None:
    """A short clip of one of ffmpeg's test sources (moving patterns, so later stages have
    motion to measure); `out` is a Path, which run_ffmpeg passes safely whatever its name."""
    run_ffmpeg([
        "-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}:duration={duration}",
        *codec, *extra, "-threads", "1", "-y", out,
    ])


def _truncated_tail(out: Path) -> None:
    """Index at the front (faststart), second half of the data missing: it opens and its first
    frame decodes, as with an interrupted download."""
    with _scratch(out) as full:
        _encode(full, duration=3.0, extra=("-movflags", "+faststart"))
        out.write_bytes(full.read_bytes()[: full.stat().st_size // 2])


def _truncated_index(out: Path) -> None:
    """Index (moov) at the end, cut off: the container cannot be opened at all."""
    with _scratch(out) as full:
        _encode(full, duration=3.25)
        out.write_bytes(full.read_bytes()[: full.stat().st_size // 2])


def _audio_only(out: Path) -> None:
    run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=2.5", "-c:a", "aac",
                "-y", out])


def _single_frame(out: Path) -> None:
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=128x72:rate=24", "-frames:v", "1",
                "-c:v", "libx264", "-pix_fmt", "yuv420p", "-y", out])


def _wide(out: Path) -> None:
    _encode(out, size="8192x64", extra=("-preset", "veryfast"))


def _variable_frame_rate(out: Path) -> None:
    """1.5 s at 30 fps then 1.5 s at 10 fps in one stream, timestamps kept as they are."""
    source = "testsrc2=size=128x72:rate={}:duration=1.5"
    run_ffmpeg([
        "-f", "lavfi", "-i", source.format(30), "-f", "lavfi", "-i", source.format(10),
        "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-fps_mode", "vfr",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-threads", "1", "-y", out,
    ])


def _rotated(out: Path) -> None:
    """Stored 160×96 with a 90° display matrix: players (and ffmpeg) show it 96×160."""
    with _scratch(out) as plain:
        _encode(plain, size="160x96")
        run_ffmpeg(["-display_rotation", "90", "-i", plain, "-c", "copy", "-y", out])


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda out: out.write_bytes(data)


def _yuv444p10(out: Path) -> None:
    _encode(out, codec=("-c:v", "libx264", "-pix_fmt", "yuv444p10le"))


def _ffv1_alpha(out: Path) -> None:
    _encode(out, codec=("-c:v", "ffv1", "-pix_fmt", "yuva420p"))


@contextmanager
def _scratch(out: Path) -> Iterator[Path]:
    """A temporary file name with `out`'s suffix, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="osora-bad-inputs-") as tmp:
        yield Path(tmp) / f"scratch{out.suffix}"


_CORPUS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "truncated_tail.mp4": ("mp4 cut in half after a front index: opens, data missing",
                           _truncated_tail),
    "truncated_index.mp4": ("mp4 cut in half before its index (moov at the end)",
                            _truncated_index),
    "empty.mp4": ("zero bytes", _write(b"")),
    "text.mp4": ("a text file named .mp4", _write(b"This is not a video.\n" * 20)),
    "audio_only.mp4": ("AAC audio, no video stream", _audio_only),
    "single_frame.mp4": ("one frame of H.264", _single_frame),
    "wide_8192x64.mp4": ("8192x64 frames (aspect ratio 128)", _wide),
    "huge_header.mp4": ("a YUV4MPEG2 header claiming 16000x16000 frames, then 4 kB",
                        _write(HUGE_HEADER)),
    "vfr.mp4": ("variable frame rate: 30 fps then 10 fps", _variable_frame_rate),
    "yuv444p10.mp4": ("H.264 High 4:4:4 Predictive, 10-bit 4:4:4 pixels", _yuv444p10),
    "ffv1_alpha.mkv": ("FFV1 lossless with an alpha plane (yuva420p) in Matroska", _ffv1_alpha),
    "rotated_90.mp4": ("stored 160x96 with a 90-degree display rotation", _rotated),
}
