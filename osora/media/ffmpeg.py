"""Running ffmpeg: argument lists (never a shell), clear errors, deterministic H.264 encoding.

The binary is the static build shipped by imageio-ffmpeg rather than the system's, because it
carries everything the data pyramid needs (libx264, scdet, cropdetect, vmafmotion, libvmaf) and
is the same build on every machine, so encoded bytes and filter scores are reproducible.

File names: ffmpeg reads an argument that starts with "-" as an option ("-y.mp4" is no output
file), "-" as stdin/stdout and "pipe:0", "concat:a|b", "http://..." as protocols. So every file
handed to `run_ffmpeg` as a path object (pathlib.Path, any os.PathLike) is passed as an absolute
path, which can be none of these; plain strings are passed as they are (filter graphs, "pipe:0",
lavfi sources). Pass file names as Path objects.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from osora.errors import EnvironmentFault

STDERR_TAIL_LINES = 12
_DEFAULT_FLAGS = ("-hide_banner", "-nostdin")
# Bit-exact flags: no encoder version string, no creation time, no metadata copied from the
# input, and C-exact colour conversion, so the same frames give the same bytes on every run.
BITEXACT_FLAGS = (
    "-fflags", "+bitexact",
    "-flags:v", "+bitexact",
    "-map_metadata", "-1",
    "-sws_flags", "bicubic+accurate_rnd+bitexact",
)


class FFmpegError(RuntimeError):
    """ffmpeg exited non-zero; the message names the file(s) it worked on and its last words."""

    def __init__(self, files: str, returncode: int, stderr: str):
        self.files = files
        self.returncode = returncode
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-STDERR_TAIL_LINES:]) or "(no output)"
        super().__init__(f"ffmpeg failed (exit {returncode}) on {files}:\n{tail}")


class FFmpegMissing(EnvironmentFault):
    """The ffmpeg binary cannot be run: a broken installation, not a bad video."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped by imageio-ffmpeg (or IMAGEIO_FFMPEG_EXE); an
    FFmpegMissing naming it when it is not an executable file."""
    import imageio_ffmpeg

    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:  # imageio-ffmpeg found no binary at all
        raise FFmpegMissing(f"no ffmpeg binary: {err}; reinstall imageio-ffmpeg") from None
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        override = os.environ.get("IMAGEIO_FFMPEG_EXE")
        hint = (f"IMAGEIO_FFMPEG_EXE is set to {override!r}: fix or unset it" if override
                else "reinstall imageio-ffmpeg")
        raise FFmpegMissing(f"the ffmpeg binary {exe} is not an executable file; {hint}")
    return exe


def run_ffmpeg(
    args: Sequence[str | os.PathLike],
    *,
    input_bytes: bytes | None = None,
    timeout: float | None = None,
    loglevel: str = "error",
) -> subprocess.CompletedProcess:
    """Run `ffmpeg <quiet defaults> <args>` and return the finished process (stdout/stderr bytes).

    Path arguments become absolute paths (see the module docstring); strings pass unchanged.
    Raises FFmpegError naming the inputs (every `-i` value) when ffmpeg exits non-zero, and
    subprocess.TimeoutExpired when it runs past `timeout` seconds.
    """
    args = [_file_arg(a) if isinstance(a, os.PathLike) else a for a in args]
    cmd = [ffmpeg_exe(), *_DEFAULT_FLAGS, "-loglevel", loglevel, *args]
    proc = subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        raise FFmpegError(_describe_inputs(args), proc.returncode, stderr)
    return proc


def filter_metadata(
    path: str | os.PathLike, video_filter: str, *, timeout: float | None = None
) -> list[dict[str, str]]:
    """Per-frame metadata that a video filter attaches (scdet, cropdetect, vmafmotion, ...).

    Decodes `path` through `<video_filter>,metadata=mode=print` and parses what it prints:
    one dict per frame with `frame`, `pts`, `pts_time` and the filter's `lavfi.*` keys.
    """
    vf = f"{video_filter},metadata=mode=print:file=-"
    proc = run_ffmpeg(["-i", Path(path), "-vf", vf, "-an", "-f", "null", "-"], timeout=timeout)
    return parse_metadata_print(proc.stdout.decode())


def parse_metadata_print(text: str) -> list[dict[str, str]]:
    """Parse the metadata filter's print format: a `frame:N pts:P pts_time:T` line per frame,
    then `key=value` lines."""
    frames: list[dict[str, str]] = []
    for line in text.splitlines():
        if line.startswith("frame:"):
            # "frame:3    pts:1536    pts_time:0.125" -> {"frame": "3", "pts": ..., ...}
            frames.append(dict(field.split(":", 1) for field in line.split()))
        elif "=" in line and frames:
            key, value = line.split("=", 1)
            frames[-1][key.strip()] = value.strip()
    return frames


def encode_frames(
    frames: Iterable[np.ndarray],
    out_path: str | os.PathLike,
    fps: float,
    *,
    crf: int | None = 23,
    profile: str | None = None,
    bitrate: int | None = None,
    preset: str = "medium",
    keyint: int | None = None,
    timeout: float | None = None,
) -> Path:
    """Stream RGB frames, each (H, W, 3) uint8, into an H.264 (libx264, yuv420p) mp4.

    Rate control: `crf` alone is constant quality; `bitrate` (bits/s) alone is average bitrate;
    both is capped CRF (the bitrate becomes the VBV max rate). `profile` is an x264 profile
    ("baseline", "main", "high"); `keyint` the maximum GOP length in frames.
    Output bytes are deterministic (one encoder thread, bit-exact flags), and the file appears
    atomically: written under a temporary name in the same folder, then renamed.
    """
    out_path = Path(out_path)
    if fps <= 0:
        raise ValueError(f"encode_frames({out_path}): fps must be > 0, got {fps}")
    if crf is None and bitrate is None:
        raise ValueError(f"encode_frames({out_path}): give crf, bitrate or both")
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"encode_frames({out_path}): no frames to encode")
    height, width = _check_frame(first, None, out_path)

    rate = _rate_control_args(crf, bitrate)
    gop = ["-g", str(keyint)] if keyint else []
    prof = ["-profile:v", profile] if profile else []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".mp4", dir=out_path.parent)
    os.close(fd)
    tmp_name = _file_arg(tmp_name)
    cmd = [
        ffmpeg_exe(), *_DEFAULT_FLAGS, "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps}",
        "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-preset", preset, *rate, *prof, *gop, "-pix_fmt", "yuv420p",
        "-threads", "1", "-filter_threads", "1", *BITEXACT_FLAGS, "-f", "mp4", tmp_name,
    ]
    try:
        _pipe_frames(cmd, first, frames, (height, width), out_path, timeout)
        os.replace(tmp_name, out_path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return out_path


def _file_arg(path: str | os.PathLike) -> str:
    """A file name ffmpeg cannot mistake for an option, stdin/stdout or a protocol: absolute
    paths start with "/" (no symlinks are resolved, so the name stays the one given)."""
    return os.path.abspath(os.fspath(path))


def _rate_control_args(crf: int | None, bitrate: int | None) -> list[str]:
    if crf is not None and not 0 <= crf <= 51:
        raise ValueError(f"crf must be in [0, 51], got {crf}")
    if bitrate is not None and bitrate <= 0:
        raise ValueError(f"bitrate must be > 0 bits/s, got {bitrate}")
    if bitrate is None:
        return ["-crf", str(crf)]
    vbv = ["-maxrate", str(bitrate), "-bufsize", str(2 * bitrate)]
    return ["-crf", str(crf), *vbv] if crf is not None else ["-b:v", str(bitrate), *vbv]


def _pipe_frames(
    cmd: list[str],
    first: np.ndarray,
    rest: Iterable[np.ndarray],
    size: tuple[int, int],
    out_path: Path,
    timeout: float | None,
) -> None:
    """Write frames to ffmpeg's stdin one at a time; stderr goes to a file so a chatty ffmpeg
    can never block on a full pipe while we are blocked writing to it."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            proc.stdin.write(np.ascontiguousarray(first).tobytes())
            for frame in rest:
                _check_frame(frame, size, out_path)
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
            proc.stdin.close()
            proc.wait(timeout=timeout)
        except BrokenPipeError:
            proc.wait(timeout=timeout)  # ffmpeg stopped reading early; its stderr says why
            if proc.returncode == 0:
                raise FFmpegError(f"frames piped to {out_path}", 0,
                                  "ffmpeg exited before reading every frame") from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            err.seek(0)
            stderr = err.read().decode(errors="replace")
            raise FFmpegError(f"frames piped to {out_path}", proc.returncode, stderr)


def _check_frame(
    frame: np.ndarray, size: tuple[int, int] | None, out_path: Path
) -> tuple[int, int]:
    """Validate one frame; return its (H, W). yuv420p needs even sides."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 \
            or frame.shape[2] != 3:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame)
        raise ValueError(f"encode_frames({out_path}): frames must be (H, W, 3) uint8, got {desc}")
    height, width = frame.shape[:2]
    if size is None and (height % 2 or width % 2):
        raise ValueError(f"encode_frames({out_path}): H.264 yuv420p needs even sides, "
                         f"got {width}x{height}")
    if size is not None and (height, width) != size:
        raise ValueError(f"encode_frames({out_path}): frame size changed from "
                         f"{size[1]}x{size[0]} to {width}x{height}")
    return height, width


def _describe_inputs(args: list[str]) -> str:
    """'input a.mp4' / 'inputs a.mp4, b.mp4' from the `-i` values of an argument list."""
    inputs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-i"]
    inputs = ["<stdin>" if i in ("-", "pipe:", "pipe:0") else i for i in inputs]
    if not inputs:
        return "no input file (arguments: " + " ".join(args) + ")"
    return ("input " if len(inputs) == 1 else "inputs ") + ", ".join(inputs)


def segment_output(starts: list[int], out_dir: Path) -> list[str]:
    """Output options of the segment muxer: an mp4 per piece of the written stream, a new one
    at each of `starts` (frame numbers of that stream), named %06d.mp4 in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    split = ["-segment_frames", ",".join(map(str, starts))] if starts else []
    # Each file's timestamps start at 0; "disabled" stops the first file alone being shifted
    # by the B-frame delay.
    return [*split, "-f", "segment", "-segment_format", "mp4", "-reset_timestamps", "1",
            "-avoid_negative_ts", "disabled", str(out_dir / "%06d.mp4")]
