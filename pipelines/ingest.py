"""DVC stage `ingest`: register raw videos and images in the `videos` table.

The sources are `params/data.yaml ingest.sources`: folders, globs, .csv/.parquet manifests and
s3:// prefixes (see osora.data.ingest); files with a suffix in `ingest.image_extensions` are
images (kind "image"). S3 sources use the endpoint and credentials of
params/store.yaml. The stage runs on every `dvc repro` (a folder can gain files without DVC
knowing) but reads only new or changed files, and commits nothing when nothing changed, so its
receipt, and the stages after it, stay as they are.
"""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.data.ingest import ingest
from osora.data.lease import stage_lease
from osora.data.stage import say, sync_counted
from osora.fileio import atomic_write_json
from osora.store import Store
from osora.tracking import stage_run

STAGE = "ingest"
PARAMS = "data.ingest"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--receipt", type=Path, required=True, help="lineage receipt to write")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    args = parser.parse_args()

    settings = load_settings()
    params = settings.data.ingest
    store = Store.from_settings(settings.store)
    with stage_run(STAGE, settings, PARAMS) as run, \
            stage_lease(store, STAGE, wait_s=settings.data.runner.lease_wait_s):
        known = store.read("videos") if store.exists("videos") else None
        result = ingest(params.sources, params.extensions,
                        image_extensions=params.image_extensions,
                        store_settings=settings.store, known=known)
        removed = {}
        for name, table in (("videos", result.rows), ("ingest_quarantine", result.skipped)):
            version, removed[name] = sync_counted(store, name, table)
            run.log_output(store, name, version)
        metrics = {
            "videos": result.rows.num_rows,  # rows of the table: images included
            "images": _count(result.rows, "image"),
            "unreadable": result.rows.num_rows - result.rows.column("probe_error").null_count,
            "duplicate_files": result.duplicates,
            "skipped_paths": result.skipped.num_rows,
            "reused": result.reused,
            "new": result.rows.num_rows - result.reused,
            "removed": removed["videos"],
        }
        say(run, _notes(metrics))
        run.log_metrics(metrics)
        run.write_receipt(args.receipt)
        atomic_write_json(args.metrics, metrics)


def _count(rows, kind: str) -> int:
    return sum(k == kind for k in rows.column("kind").to_pylist())


def _notes(metrics: dict[str, int]) -> list[str]:
    notes = [f"{metrics['new']} new videos, {metrics['reused']} unchanged (not read again)"]
    if metrics["images"]:
        notes.append(f"{metrics['images']} of the {metrics['videos']} rows are images (kind "
                     "'image', one frame each)")
    if metrics["removed"]:
        notes.append(f"{metrics['removed']} videos left the sources: their rows are dropped "
                     "here and, on this run, in every stage after")
    if metrics["skipped_paths"]:
        notes.append(f"{metrics['skipped_paths']} paths are no readable file (broken links, "
                     "folders, unreadable files): see the ingest_quarantine table")
    return notes


if __name__ == "__main__":
    main()
