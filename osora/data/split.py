"""Held-out clips for autoencoder (and later DiT) evaluation, decided by source video.

Clips cut from one video share its look, so a clip is held out exactly when its source video
is: no frame of a held-out video is ever trained on. The choice is a pure function of the video
ids (smallest SHA-256 first), so every stage that asks gets the same answer without a table.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable


def _rank(video_id: str) -> str:
    return hashlib.sha256(video_id.encode()).hexdigest()


def holdout_videos(video_ids: Iterable[str], fraction: float) -> set[str]:
    """The `fraction` of distinct videos (at least one, never all) that are held out."""
    unique = sorted(set(video_ids), key=_rank)
    if len(unique) < 2:
        raise ValueError(
            f"holding out videos needs at least 2 distinct source videos, got {len(unique)}; "
            "use a looser pyramid level (ae.split.level) or add videos"
        )
    count = min(len(unique) - 1, max(1, math.floor(fraction * len(unique) + 0.5)))
    return set(unique[:count])


def split_rows(rows: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held out) rows of a clips-like table, each row carrying `video_id`."""
    held = holdout_videos((r["video_id"] for r in rows), fraction)
    return ([r for r in rows if r["video_id"] not in held],
            [r for r in rows if r["video_id"] in held])
