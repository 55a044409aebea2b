"""Video I/O: ffmpeg runner and encoder (argument lists, never a shell), PyAV probe.

PyAV and imageio-ffmpeg are imported inside the functions that need them, so importing this
package stays light.
"""

from osora.media.ffmpeg import (
    FFmpegError,
    encode_frames,
    ffmpeg_exe,
    filter_metadata,
    run_ffmpeg,
)
from osora.media.probe import ProbeError, VideoInfo, bits_per_pixel, probe

__all__ = [
    "FFmpegError",
    "ProbeError",
    "VideoInfo",
    "bits_per_pixel",
    "encode_frames",
    "ffmpeg_exe",
    "filter_metadata",
    "probe",
    "run_ffmpeg",
]
