"""Training windows for the autoencoder: random (frames × crop × crop) cuts of decoded clips.

The window of a step is a pure function of (seed, rank, step), so a resumed run trains on the
same windows as an uninterrupted one, and each rank of a sharded run sees its own.
"""

from __future__ import annotations

import torch


class ClipWindows:
    """`windows(step)` → (B, 3, frames, crop, crop) float32 in [-1, 1].

    videos: decoded clips, each (T, H, W, 3) uint8 (as osora.media.frames.read_video gives).
    Clips shorter than `frames` or smaller than `crop` cannot give a window and are left out;
    `skipped` counts them.
    """

    def __init__(self, videos: list[torch.Tensor], frames: int, crop: int, batch_size: int,
                 seed: int, rank: int = 0):
        fits = [v for v in videos if v.shape[0] >= frames and min(v.shape[1:3]) >= crop]
        self.skipped = len(videos) - len(fits)
        if not fits:
            sizes = sorted({tuple(v.shape[:3]) for v in videos})
            raise ValueError(
                f"no clip gives a {frames}-frame {crop}×{crop} window (clip T×H×W: {sizes}); "
                "lower ae.train.frames or ae.train.crop, or raise ae.train.short_side"
            )
        self.videos = fits
        self.frames, self.crop, self.batch_size = frames, crop, batch_size
        self.seed, self.rank = seed, rank

    def __call__(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7_919 + step)
        windows = []
        for _ in range(self.batch_size):
            video = self.videos[int(torch.randint(len(self.videos), (1,), generator=g))]
            t, h, w = video.shape[:3]
            t0, y0, x0 = (int(torch.randint(n - k + 1, (1,), generator=g))
                          for n, k in ((t, self.frames), (h, self.crop), (w, self.crop)))
            windows.append(video[t0:t0 + self.frames, y0:y0 + self.crop, x0:x0 + self.crop])
        batch = torch.stack(windows)  # (B, T, H, W, 3) uint8
        return batch.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)  # (B, 3, T, H, W)
