"""Every Lance table's Arrow schema, in one place.

A stage that writes a table and a stage that reads it agree on its columns because both take
them from here; `osora.store.Store.write` refuses data that does not match. Build rows with the
schema so the types line up: `pa.Table.from_pylist(rows, schema=schema_of("videos"))`.
"""

import pyarrow as pa

VIDEOS = pa.schema(
    [
        # Content hash of the raw file: the same bytes give the same id wherever they live.
        pa.field("id", pa.string(), nullable=False),
        # Where the raw file is: a local path or an s3:// URI.
        pa.field("uri", pa.string(), nullable=False),
        # Size of the raw file in bytes.
        pa.field("size_bytes", pa.int64()),
        # Duration in seconds; null when the container does not say.
        pa.field("duration_s", pa.float64()),
        # Average frame rate of the first video stream, frames per second.
        pa.field("fps", pa.float64()),
        # Frame width in pixels.
        pa.field("width", pa.int32()),
        # Frame height in pixels.
        pa.field("height", pa.int32()),
        # Number of frames in the first video stream (counted or estimated).
        pa.field("num_frames", pa.int64()),
        # Video codec name as the decoder reports it, e.g. "h264".
        pa.field("codec", pa.string()),
        # Codec profile, e.g. "High".
        pa.field("profile", pa.string()),
        # Video stream bit rate in bits per second.
        pa.field("bit_rate", pa.int64()),
        # A caption that came with the file (e.g. from a sidecar); null when none.
        pa.field("caption", pa.string()),
        # Why the file could not be probed; null for readable files (bad files are kept,
        # quarantined by this reason, rather than dropped).
        pa.field("probe_error", pa.string()),
        # When the row was ingested.
        pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "videos": VIDEOS,
}


def schema_of(name: str) -> pa.Schema:
    """The schema of table `name`; a KeyError naming the known tables when there is none."""
    try:
        return SCHEMAS[name]
    except KeyError:
        known = ", ".join(sorted(SCHEMAS))
        raise KeyError(
            f"no schema for table {name!r}: known tables are {known} (add one to osora/schemas.py)"
        ) from None
