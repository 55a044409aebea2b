"""DVC stage `ingest`: register the raw videos of a folder in the `videos` table."""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.data.ingest import find_videos, video_rows
from osora.fileio import atomic_write_json
from osora.store import Store
from osora.tracking import stage_run

STAGE = "ingest"
PARAMS = "data.ingest"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=Path, required=True, help="folder of raw videos")
    parser.add_argument("--receipt", type=Path, required=True, help="lineage receipt to write")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    args = parser.parse_args()

    settings = load_settings()
    store = Store.from_settings(settings.store)
    with stage_run(STAGE, settings, PARAMS) as run:
        rows, duplicates = video_rows(find_videos(args.videos, settings.data.ingest.extensions))
        version = store.sync("videos", rows, key="id")
        run.log_output(store, "videos", version)
        readable = rows.column("probe_error").null_count
        metrics = {
            "videos": rows.num_rows,
            "unreadable": rows.num_rows - readable,
            "duplicate_files": duplicates,
        }
        run.log_metrics(metrics)
        run.write_receipt(args.receipt)
        atomic_write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
