"""osora.store on a local directory and on S3 (moto's server): the same tests for both."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import SecretStr

from osora.config.store import S3Settings, StoreSettings
from osora.schemas import SCHEMAS, schema_of
from osora.store import Store

CHILD = Path(__file__).with_name("store_writer_child.py")


def videos(ids: list[str]) -> pa.Table:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return pa.Table.from_pylist(
        [
            {
                "id": i,
                "uri": f"/raw/{i}.mp4",
                "size_bytes": 10,
                "fps": 24.0,
                "width": 64,
                "height": 48,
                "num_frames": 48,
                "codec": "h264",
                "ingested_at": now,
            }
            for i in ids
        ],
        schema=schema_of("videos"),
    )


def ids(table: pa.Table) -> list[str]:
    return sorted(table.column("id").to_pylist())


def test_schemas_module():
    assert schema_of("videos") is SCHEMAS["videos"]
    assert not SCHEMAS["videos"].field("id").nullable
    assert SCHEMAS["videos"].field("caption").nullable
    with pytest.raises(KeyError, match="known tables are .*videos"):
        schema_of("nope")


def test_write_append_read_versions_tags(store: Store):
    assert not store.exists("videos")
    assert store.list_tables() == []
    v1 = store.write("videos", videos(["a", "b"]))
    v2 = store.write("videos", videos(["c"]), mode="append")
    assert v2 > v1
    assert store.version("videos") == v2
    assert [v["version"] for v in store.versions("videos")] == [v1, v2]
    assert store.exists("videos") and store.list_tables() == ["videos"]
    assert ids(store.read("videos")) == ["a", "b", "c"]
    assert store.read("videos", columns=["id"]).column_names == ["id"]
    assert store.read("videos").schema.equals(schema_of("videos"))

    store.tag("videos", "first", v1)
    assert ids(store.read("videos", version=v1)) == ["a", "b"]
    assert ids(store.read("videos", version="first")) == ["a", "b"]

    v3 = store.write("videos", videos(["z"]), mode="overwrite")
    assert ids(store.read("videos")) == ["z"]
    assert ids(store.read("videos", version=v2)) == ["a", "b", "c"]  # old versions stay
    store.tag("videos", "first", v3)  # moving a tag
    assert store.tags("videos") == {"first": v3}
    assert ids(store.read("videos", version="first")) == ["z"]

    with pytest.raises(FileExistsError, match="videos"):
        store.write("videos", videos(["y"]), mode="create")
    with pytest.raises(ValueError, match="no version or tag 'nope'"):
        store.read("videos", version="nope")
    with pytest.raises(FileNotFoundError, match="no table 'clips'"):
        store.read("clips")


def test_take_reads_rows_by_position_of_a_pinned_version(store: Store):
    """Random access as a training step does it: the rows at the positions, in the asked
    order, across data files, and still the pinned version's after later writes."""
    v1 = store.write("videos", videos(["a", "b", "c"]))
    v2 = store.write("videos", videos(["d", "e"]), mode="append")  # a second data file
    order = store.read("videos", version=v2, columns=["id"]).column("id").to_pylist()
    took = store.take("videos", [4, 0, 3], v2, columns=["id", "num_frames"])
    assert took.column_names == ["id", "num_frames"]
    assert took.column("id").to_pylist() == [order[4], order[0], order[3]]
    store.write("videos", videos(["z"]), mode="overwrite")
    assert store.take("videos", [1], v1, columns=["id"]).column("id").to_pylist() == [order[1]]
    assert store.take("videos", [4], v2, columns=["id"]).column("id").to_pylist() == [order[4]]
    with pytest.raises(TypeError, match="pin a version number"):
        store.take("videos", [0], "latest")


def test_sync_is_idempotent_and_exact(store: Store):
    v1 = store.sync("videos", videos(["a", "b", "c"]))
    assert ids(store.read("videos")) == ["a", "b", "c"]
    # The same rows again: nothing to change, so no new version and no duplicates.
    assert store.sync("videos", videos(["a", "b", "c"])) == v1
    assert store.read("videos").num_rows == 3

    before = store.read("videos")
    v2 = store.sync(
        "videos",
        pa.RecordBatchReader.from_batches(
            schema_of("videos"), videos(["a", "c", "d"]).to_batches()
        ),
    )
    assert v2 > v1
    after = store.read("videos")
    assert ids(after) == ["a", "c", "d"]
    # Matched rows are untouched.
    assert after.filter(pa.compute.field("id") == "a").equals(
        before.filter(pa.compute.field("id") == "a")
    )
    with pytest.raises(ValueError, match="more than once"):
        store.sync("videos", videos(["e", "e"]))


def test_wrong_schema_is_named(store: Store):
    bad = videos(["a"]).drop_columns(["codec"])
    bad = bad.set_column(
        bad.schema.get_field_index("width"), "width", bad.column("width").cast(pa.int64())
    )
    with pytest.raises(ValueError, match="'videos'") as err:
        store.write("videos", bad)
    assert "codec" in str(err.value) and "width" in str(err.value)
    null_id = pa.table({f.name: pa.nulls(1, f.type) for f in schema_of("videos")})
    with pytest.raises(ValueError, match="'videos'.*id"):
        store.write("videos", null_id)
    assert not store.exists("videos")


def test_credentials_never_shown(s3_server, caplog):
    settings = StoreSettings(
        uri=f"s3://{s3_server.bucket}/creds",
        s3=S3Settings(
            endpoint_url=s3_server.endpoint_url,
            allow_http=True,
            access_key_id=SecretStr("AKIDSHOULDNOTSHOW"),
            secret_access_key=SecretStr("SECRETSHOULDNOTSHOW"),
        ),
    )
    store = Store.from_settings(settings)
    assert store.storage_options["aws_secret_access_key"] == "SECRETSHOULDNOTSHOW"
    for text in (repr(store), str(store), f"{store}"):
        assert "SHOULDNOTSHOW" not in text
        assert s3_server.endpoint_url in text
    # Real credentials of the test server: the log lines of a write and a sync hold none.
    store = Store.from_settings(s3_server.store_settings("creds-log"))
    with caplog.at_level(logging.DEBUG, logger="osora"):
        store.write("videos", videos(["a"]))
        store.sync("videos", videos(["b"]))
    assert caplog.text and s3_server.secret_access_key not in caplog.text
    assert s3_server.access_key_id not in caplog.text + repr(store)


def test_from_settings_resolves_relative_paths(tmp_path: Path, monkeypatch):
    (tmp_path / "params").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    exp = tmp_path / ".dvc" / "tmp" / "exps" / "e1"
    exp.mkdir(parents=True)
    monkeypatch.chdir(exp)
    store = Store.from_settings(StoreSettings(uri="data/tables"))
    assert store.root == str(tmp_path.resolve() / "data" / "tables")
    with pytest.raises(ValueError, match="both"):
        Store.from_settings(
            StoreSettings(uri="s3://b/p", s3=S3Settings(access_key_id=SecretStr("x")))
        )


def _data_files(store: Store, request: pytest.FixtureRequest) -> set[str]:
    uri = store.table_uri("videos") + "/data/"
    if not uri.startswith("s3://"):
        return {p.name for p in Path(uri).glob("*")}
    server = request.getfixturevalue("s3_server")
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    listing = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for o in listing.get("Contents", [])}


def test_killed_writer_leaves_previous_version(store: Store, request: pytest.FixtureRequest):
    """SIGKILL a process in the middle of a streaming append: the table still opens at the
    previous version with the previous rows, and the next write works."""
    before_version = store.write("videos", videos(["a", "b"]))
    before = store.read("videos")
    files_before = _data_files(store, request)

    spec = {
        "uri": store.root,
        "storage_options": store.storage_options,
        "batches": 400,
        "rows": 50,
        "sleep_s": 0.02,
    }  # ~8 s if left alone
    child = subprocess.Popen(
        [sys.executable, str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin and child.stdout
        child.stdin.write(json.dumps(spec))
        child.stdin.close()
        assert child.stdout.readline().strip() == "writing"
        deadline = time.monotonic() + 20
        while len(_data_files(store, request) - files_before) < 2:  # the write is under way
            assert child.poll() is None, "writer ended before it was killed"
            assert time.monotonic() < deadline, "no data files appeared"
            time.sleep(0.05)
        assert child.poll() is None, "writer ended before it was killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    assert store.version("videos") == before_version
    assert store.read("videos").equals(before)
    assert store.list_tables() == ["videos"]
    after_version = store.write("videos", videos(["c"]), mode="append")
    assert after_version == before_version + 1
    assert ids(store.read("videos")) == ["a", "b", "c"]


def test_files_round_trip_beside_the_tables(store, tmp_path):
    local = tmp_path / "clip one.mp4"
    local.write_bytes(b"\x00\x01clip-bytes" * 100)
    uri = store.put_file(local, "clips/v1/clip one.mp4")
    assert uri == f"{store.root}/files/clips/v1/clip one.mp4"
    back = store.fetch_file(uri, tmp_path / "back.mp4")
    assert back.read_bytes() == local.read_bytes()
    with pytest.raises(ValueError, match="bad file key"):
        store.file_uri("../escape.mp4")


def test_sync_update_matched_replaces_changed_values(store):
    from osora.schemas import schema_of

    def motion(values):
        rows = [{"id": k, "motion": v} for k, v in values.items()]
        return pa.Table.from_pylist(rows, schema=schema_of("score_motion"))

    v1 = store.sync("score_motion", motion({"a": 1.0, "b": 2.0}), update_matched=True)
    assert store.sync("score_motion", motion({"a": 1.0, "b": 2.0}), update_matched=True) == v1
    store.sync("score_motion", motion({"a": 1.0, "b": 5.0}), update_matched=True)
    got = dict(zip(*store.read("score_motion").sort_by("id").to_pydict().values()))
    assert got == {"a": 1.0, "b": 5.0}
    # Without update_matched the first value stays (what ingest wants).
    store.sync("score_motion", motion({"a": 9.0, "b": 5.0}))
    assert store.read("score_motion").sort_by("id").column("motion").to_pylist() == [1.0, 5.0]
