"""DVC stage `ingest`: register raw videos in the `videos` table.

The source is a folder, a glob, a .csv/.parquet manifest or an s3://bucket/prefix (see
osora.data.ingest); S3 sources use the endpoint and credentials of params/store.yaml.
"""

import argparse
from pathlib import Path

from osora.config import load_settings
from osora.data.ingest import ingest
from osora.fileio import atomic_write_json
from osora.store import Store
from osora.tracking import stage_run

STAGE = "ingest"
PARAMS = "data.ingest"  # the settings section this stage reads; dvc.yaml tracks the same keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source",
        required=True,
        help="raw videos: a folder, a glob (quoted), a .csv/.parquet manifest with a 'path' "
        "column, or s3://bucket/prefix",
    )
    parser.add_argument("--receipt", type=Path, required=True, help="lineage receipt to write")
    parser.add_argument("--metrics", type=Path, required=True, help="DVC metrics JSON")
    args = parser.parse_args()

    settings = load_settings()
    store = Store.from_settings(settings.store)
    with stage_run(STAGE, settings, PARAMS) as run:
        rows, duplicates = ingest(
            args.source, settings.data.ingest.extensions, store_settings=settings.store
        )
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
