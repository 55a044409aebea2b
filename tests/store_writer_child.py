"""A writer to kill: appends a slow stream of `videos` rows to a Store, for test_store's
atomicity test.

Reads {"uri", "storage_options", "batches", "rows", "sleep_s"} as JSON from stdin (so no
credentials appear on a command line), prints "writing" once the stream has started and
"batch <i>" per batch, then "committed <version>" if it is not killed first.
"""

import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pyarrow as pa

from osora.schemas import schema_of
from osora.store import Store


def rows(start: int, n: int) -> pa.RecordBatch:
    now = datetime.now(timezone.utc)
    return pa.RecordBatch.from_pylist(
        [
            {"id": f"stream-{i:09d}", "uri": f"/raw/stream-{i}.mp4", "ingested_at": now}
            for i in range(start, start + n)
        ],
        schema=schema_of("videos"),
    )


def main() -> None:
    spec = json.load(sys.stdin)
    store = Store(spec["uri"], spec["storage_options"])

    def stream() -> Iterator[pa.RecordBatch]:
        print("writing", flush=True)
        for i in range(spec["batches"]):
            time.sleep(spec["sleep_s"])
            print(f"batch {i}", flush=True)
            yield rows(i * spec["rows"], spec["rows"])

    reader = pa.RecordBatchReader.from_batches(schema_of("videos"), stream())
    version = store.write("videos", reader, mode="append", max_rows_per_file=2 * spec["rows"])
    print(f"committed {version}", flush=True)


if __name__ == "__main__":
    main()
