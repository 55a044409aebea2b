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
from osora.media.probe import (
    ImageInfo,
    ProbeError,
    VideoInfo,
    bits_per_pixel,
    probe,
    probe_image,
)

__all__ = [
    "FFmpegError",
    "ImageInfo",
    "ProbeError",
    "VideoInfo",
    "bits_per_pixel",
    "encode_frames",
    "ffmpeg_exe",
    "filter_metadata",
    "probe",
    "probe_image",
    "run_ffmpeg",
]
