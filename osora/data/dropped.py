"""What the data pyramid set aside, and why: the answer to "where did my videos go?".

Every table stage keeps what it could not use: `preprocess` rows with `keep` false (the drop
rules), `<stage>_quarantine` tables (bad input, with the reason and the fingerprint of the code
and params that judged it), and `ingest_quarantine` (paths that are no readable file). This
module gathers them into one report, grouped by cause (reasons alike but for names and
numbers), and clears a stage's quarantines so its next run tries those rows again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow.compute as pc

from osora.data.runner import QUARANTINED, STATUS, cause_of
from osora.schemas import QUARANTINE_SUFFIX

if TYPE_CHECKING:
    from osora.store import Store


@dataclass(frozen=True)
class Cause:
    stage: str
    count: int
    example: str  # one reason in full
    ids: list[str]  # a few of the rows, to look them up


def dropped(store: Store, stage: str | None = None, examples: int = 3) -> list[Cause]:
    """Every set-aside row of every stage (or one), grouped by cause, largest first."""
    causes: list[Cause] = []
    label = _labeller(store)
    for table in store.list_tables():
        if table.endswith(QUARANTINE_SUFFIX):
            name = table[: -len(QUARANTINE_SUFFIX)]
            rows = store.read(table, columns=["id", "reason"])
        elif table == "preprocess":
            name = table
            rows = store.read(table, columns=["id", "reason", "keep"])
            rows = rows.filter(pc.invert(rows.column("keep"))).select(["id", "reason"])
        else:
            continue
        if stage is not None and name != stage:
            continue
        groups: dict[str, list[tuple[str, str]]] = {}
        for row_id, reason in zip(rows.column("id").to_pylist(),
                                  rows.column("reason").to_pylist()):
            groups.setdefault(cause_of(reason or ""), []).append((row_id, reason or ""))
        causes += [Cause(name, len(g), g[0][1], [label(i) for i, _ in g[:examples]])
                   for g in groups.values()]
    return sorted(causes, key=lambda c: (-c.count, c.stage))


def _labeller(store: Store):
    """Row id → something a person recognises: a video's file, or a clip as <file>#<n>
    (clip ids are <video id>-<n>); ids of nothing known (ingest's paths) stay as they are."""
    from pathlib import PurePosixPath

    files: dict[str, str] = {}
    if store.exists("videos"):
        videos = store.read("videos", columns=["id", "uri"])
        files = {i: PurePosixPath(u).name for i, u in zip(videos.column("id").to_pylist(),
                                                          videos.column("uri").to_pylist())}

    def label(row_id: str) -> str:
        if row_id in files:
            return files[row_id]
        video, _, clip = row_id.rpartition("-")
        return f"{files[video]}#{clip}" if video in files else row_id

    return label


def forget_quarantined(store: Store, stage: str) -> int:
    """Delete the quarantined rows from every work log of `stage` (all fingerprints), so its
    next run processes those inputs again. Returns how many rows were forgotten."""
    import lance

    forgotten = 0
    for uri in _work_logs(store, stage):
        dataset = lance.dataset(uri, storage_options=store.storage_options or None)
        count = dataset.count_rows(filter=f"{STATUS} = '{QUARANTINED}'")
        if count:
            dataset.delete(f"{STATUS} = '{QUARANTINED}'")
            forgotten += count
    return forgotten


def _work_logs(store: Store, stage: str) -> list[str]:
    """URIs of the stage's work logs, `<root>/_work/<stage>-<fingerprint>.lance`."""
    import re

    pattern = re.compile(re.escape(stage) + r"-[0-9a-f]{16}\.lance")
    if "://" not in store.root:
        from pathlib import Path

        work = Path(store.root) / "_work"
        return sorted(str(p) for p in work.glob("*.lance") if pattern.fullmatch(p.name)) \
            if work.is_dir() else []
    from osora.store import s3_filesystem

    fs = s3_filesystem(store.storage_options)
    scheme, _, root = store.root.partition("://")
    try:
        names = fs.ls(f"{root}/_work", detail=False)
    except FileNotFoundError:
        return []
    return sorted(f"{scheme}://{n}" for n in names if pattern.fullmatch(n.rsplit("/", 1)[-1]))
