"""Ingest: register raw videos in the `videos` table, one row per distinct file content.

The row id is a hash of the file's bytes, so ingesting the same files again (or a copy under
another name) adds nothing. A file that cannot be read still gets a row, with `probe_error`
saying why: nothing is dropped silently.
"""

import hashlib
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from osora.media.probe import ProbeError, probe
from osora.schemas import schema_of

CHUNK = 1 << 20


def content_id(path: Path) -> str:
    """128 bits of the SHA-256 of the file's bytes, as hex: stable across names and machines."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def find_videos(folder: Path, extensions: Iterable[str]) -> list[Path]:
    """Video files directly or deeper under `folder`, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder {folder} does not exist; check the stage's input")
    suffixes = {e.lower() for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def sidecar_caption(video: Path) -> str | None:
    """The caption in <video stem>.txt beside the video, if there is one."""
    sidecar = video.with_suffix(".txt")
    return sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None


def video_rows(paths: list[Path]) -> tuple[pa.Table, int]:
    """Rows for the `videos` table and the number of files skipped as duplicate content."""
    now = datetime.now(timezone.utc)
    rows, seen = [], set()
    for path in paths:
        vid = content_id(path)
        if vid in seen:
            continue
        seen.add(vid)
        row = {
            "id": vid,
            "uri": str(path.resolve()),
            "size_bytes": path.stat().st_size,
            "caption": sidecar_caption(path),
            "ingested_at": now,
        }
        try:
            info = probe(path)
            row.update(
                duration_s=info.duration_s, fps=info.fps, width=info.width, height=info.height,
                num_frames=info.num_frames, codec=info.codec, profile=info.profile,
                bit_rate=info.bit_rate,
            )
        except ProbeError as err:
            row["probe_error"] = err.reason
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema_of("videos")), len(paths) - len(rows)
