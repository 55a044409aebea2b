"""Ingest from every kind of source: the same files give the same ids wherever they live, copies
are counted not re-added, and a wrong source fails with a message naming it and the fix."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from osora.data.ingest import ingest
from osora.schemas import schema_of

EXTENSIONS = [".mp4", ".mov", ".mkv", ".webm", ".avi"]
# A few synthetic videos (readable, unreadable, with sidecars) are enough to compare sources.
SAMPLE = ("clean_00", "too_short", "unreadable", "baseline_profile")


@pytest.fixture(scope="module")
def raw(synth_set, tmp_path_factory) -> Path:
    """A folder of SAMPLE videos and their caption sidecars, one of them in a subfolder."""
    folder, _ = synth_set
    out = tmp_path_factory.mktemp("raw")
    (out / "sub").mkdir()
    for i, stem in enumerate(SAMPLE):
        dest = out / "sub" if i == 0 else out
        for suffix in (".mp4", ".txt"):
            shutil.copy(folder / f"{stem}{suffix}", dest / f"{stem}{suffix}")
    (out / "notes.md").write_text("not a video")
    return out


@pytest.fixture(scope="module")
def folder_rows(raw) -> pa.Table:
    rows, duplicates, *_ = ingest(raw, EXTENSIONS)
    assert duplicates == 0
    return rows


def _ids_by_name(rows: pa.Table) -> dict[str, str]:
    return {uri.rsplit("/", 1)[-1]: vid for uri, vid in
            zip(rows.column("uri").to_pylist(), rows.column("id").to_pylist(), strict=True)}


def test_folder_source(raw, folder_rows):
    assert folder_rows.schema == schema_of("videos")
    assert sorted(_ids_by_name(folder_rows)) == sorted(f"{s}.mp4" for s in SAMPLE)
    rows = {Path(r["uri"]).stem: r for r in folder_rows.to_pylist()}
    assert rows["clean_00"]["uri"] == str(raw / "sub" / "clean_00.mp4")
    assert rows["clean_00"]["caption"] == (raw / "sub" / "clean_00.txt").read_text().strip()
    assert rows["clean_00"]["probe_error"] is None and rows["clean_00"]["width"] == 320
    assert rows["unreadable"]["probe_error"]  # kept with its reason, not dropped


def test_glob_and_manifests_give_the_same_ids(raw, folder_rows, tmp_path):
    expected = _ids_by_name(folder_rows)
    glob_rows = ingest(f"{raw}/**/*.mp4", EXTENSIONS).rows
    assert _ids_by_name(glob_rows) == expected

    names = sorted(expected)
    rel = [os.path.relpath(next(raw.rglob(n)), tmp_path) for n in names]
    csv = tmp_path / "manifest.csv"
    csv.write_text("path,caption\n" + "".join(f'"{p}",\n' for p in rel))
    csv_rows = ingest(csv, EXTENSIONS).rows
    assert _ids_by_name(csv_rows) == expected
    # Empty caption cells fall back to the sidecar.
    assert csv_rows.column("caption").to_pylist() == _captions_of(folder_rows, names)

    parquet = tmp_path / "manifest.parquet"
    absolute = [str(next(raw.rglob(n))) for n in names]
    pq.write_table(pa.table({"path": absolute, "caption": [f"caption {n}" for n in names]}),
                   parquet)
    parquet_rows = ingest(parquet, EXTENSIONS).rows
    assert _ids_by_name(parquet_rows) == expected
    # A manifest's caption wins over the sidecar.
    assert parquet_rows.column("caption").to_pylist() == [f"caption {n}" for n in names]


def _captions_of(rows: pa.Table, names: list[str]) -> list[str | None]:
    by_name = {Path(r["uri"]).name: r["caption"] for r in rows.to_pylist()}
    return [by_name[n] for n in names]


def test_copies_are_counted_not_added(raw, folder_rows, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(raw, src)
    shutil.copy(src / "too_short.mp4", src / "sub" / "same bytes, other name.mp4")
    rows, duplicates, *_ = ingest(src, EXTENSIONS)
    assert duplicates == 1
    assert sorted(rows.column("id").to_pylist()) == sorted(folder_rows.column("id").to_pylist())


def test_ingesting_twice_adds_nothing(store, raw):
    first = ingest(raw, EXTENSIONS).rows
    version = store.sync("videos", first)
    again = ingest(raw, EXTENSIONS).rows
    assert store.sync("videos", again) == version
    stored = store.read("videos")
    assert stored.num_rows == first.num_rows
    assert stored.column("ingested_at").to_pylist() == first.column("ingested_at").to_pylist()


def test_s3_prefix_source(s3_server, raw, folder_rows, tmp_path, monkeypatch):
    prefix = f"raw/{uuid.uuid4().hex}"
    client = s3_server.client()
    for path in raw.rglob("*"):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(raw).as_posix()}"
            client.upload_file(str(path), s3_server.bucket, key)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # to see that downloads are removed

    settings = s3_server.store_settings("store")
    rows, duplicates, *_ = ingest(f"s3://{s3_server.bucket}/{prefix}", EXTENSIONS,
                                  store_settings=settings)
    assert duplicates == 0
    assert _ids_by_name(rows) == _ids_by_name(folder_rows)
    uris = rows.column("uri").to_pylist()
    clean = f"s3://{s3_server.bucket}/{prefix}/sub/clean_00.mp4"
    assert clean in uris
    captions = dict(zip(uris, rows.column("caption").to_pylist(), strict=True))
    local_captions = {Path(r["uri"]).name: r["caption"] for r in folder_rows.to_pylist()}
    assert {u.rsplit("/", 1)[-1]: c for u, c in captions.items()} == local_captions
    assert list(tmp_path.iterdir()) == []

    globbed = ingest(f"s3://{s3_server.bucket}/{prefix}/sub/*.mp4", EXTENSIONS,
                        store_settings=settings).rows
    assert globbed.column("uri").to_pylist() == [clean]

    with pytest.raises(FileNotFoundError, match="holds no objects"):
        ingest(f"s3://{s3_server.bucket}/nothing-here-{uuid.uuid4().hex}", EXTENSIONS,
               store_settings=settings)


def test_manifest_may_list_s3_objects(s3_server, raw, folder_rows, tmp_path):
    key = f"raw/{uuid.uuid4().hex}/clone.mp4"
    s3_server.client().upload_file(str(raw / "too_short.mp4"), s3_server.bucket, key)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\ns3://{s3_server.bucket}/{key}\n")
    rows = ingest(manifest, EXTENSIONS, store_settings=s3_server.store_settings("store")).rows
    assert rows.column("id").to_pylist() == [_ids_by_name(folder_rows)["too_short.mp4"]]
    assert rows.column("caption").to_pylist() == [None]  # no sidecar in the bucket


def test_undecodable_names_are_skipped_with_a_warning(raw, tmp_path, caplog):
    shutil.copy(raw / "too_short.mp4", tmp_path / "fine.mp4")
    bad = os.path.join(os.fsencode(tmp_path), b"bad\xff.mp4")
    shutil.copy(raw / "baseline_profile.mp4", bad)
    with caplog.at_level(logging.WARNING, logger="osora.data.ingest"):
        result = ingest(tmp_path, EXTENSIONS)
    assert [Path(u).name for u in result.rows.column("uri").to_pylist()] == ["fine.mp4"]
    assert "not valid UTF-8" in caplog.text
    assert result.skipped.column("reason").to_pylist() == [
        "the name is not valid UTF-8: rename the file"]
    assert result.skipped.column("id").to_pylist()[0].endswith("bad\\xff.mp4")


def test_links_folders_and_unreadable_files_are_counted_with_their_reason(raw, tmp_path):
    """Nothing is skipped silently: every path with a video suffix is a row or a reason."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(raw / "too_short.mp4", src / "fine.mp4")
    (src / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (src / "link.mp4").symlink_to(src / "fine.mp4")  # a working link is followed
    (src / "folder.mp4").mkdir()
    shutil.copy(raw / "too_short.mp4", src / "locked.mp4")
    (src / "locked.mp4").write_bytes(b"changed")  # other content, so no duplicate
    (src / "locked.mp4").chmod(0)
    (src / "notes.txt").write_text("not a video: ignored by suffix, not a skip")
    result = ingest(src, EXTENSIONS)
    reasons = {Path(i).name: r for i, r in zip(result.skipped.column("id").to_pylist(),
                                               result.skipped.column("reason").to_pylist())}
    assert reasons["dangling.mp4"] == f"broken symbolic link to {tmp_path / 'gone.mp4'}"
    assert reasons["folder.mp4"] == "a folder named like a video, not a file"
    if os.geteuid() != 0:  # root reads any file
        assert reasons["locked.mp4"].startswith("cannot be read: Permission denied")
    assert result.rows.num_rows + result.duplicates + len(reasons) == 5
    assert set(result.skipped.column("stage").to_pylist()) == {"ingest"}


def test_a_second_ingest_reads_only_new_and_changed_files(raw, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("too_short.mp4", "baseline_profile.mp4"):
        shutil.copy(raw / name, src / name)
    first = ingest(src, EXTENSIONS)
    assert first.reused == 0
    shutil.copy(raw / "sub" / "clean_00.mp4", src / "clean_00.mp4")
    (src / "too_short.txt").write_text("a caption added later")
    second = ingest(src, EXTENSIONS, known=first.rows)
    assert (second.reused, second.rows.num_rows) == (2, 3)
    by_name = {Path(r["uri"]).name: r for r in second.rows.to_pylist()}
    old = {Path(r["uri"]).name: r for r in first.rows.to_pylist()}
    assert by_name["too_short.mp4"]["id"] == old["too_short.mp4"]["id"]
    assert by_name["too_short.mp4"]["ingested_at"] == old["too_short.mp4"]["ingested_at"]
    assert by_name["too_short.mp4"]["caption"] == "a caption added later"  # sidecars re-read
    # A changed file is read again (new content, new id), even at the same path and size.
    data = (src / "baseline_profile.mp4").read_bytes()
    time.sleep(0.01)
    (src / "baseline_profile.mp4").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    third = ingest(src, EXTENSIONS, known=second.rows)
    assert third.reused == 2
    changed = {Path(r["uri"]).name: r["id"] for r in third.rows.to_pylist()}
    assert changed["baseline_profile.mp4"] != old["baseline_profile.mp4"]["id"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("make_source", "error", "match"),
    [
        (lambda d: d / "missing", FileNotFoundError, "does not exist: give a folder"),
        (lambda d: f"{d}/**/*.nothing", FileNotFoundError, "matches no files"),
        (lambda d: _write(d / "m.csv", "file,caption\na.mp4,x\n"), ValueError,
         "no 'path' column .*name the column"),
        (lambda d: _write(d / "m.csv", "path,caption\n"), ValueError, "has no rows"),
        (lambda d: _write(d / "m.csv", ""), ValueError, "cannot be read as csv"),
        (lambda d: _write(d / "m.csv", "path\nnowhere.mp4\n"), FileNotFoundError,
         "lists 1 files that do not exist.*nowhere.mp4"),
        (lambda d: _write(d / "notes.json", "{}"), ValueError, "is a file but not a manifest"),
        (lambda d: "gs://bucket/videos", ValueError, "gs:// is not supported"),
    ],
    ids=["missing", "empty-glob", "no-path-column", "no-rows", "empty-file", "missing-entry",
         "not-a-manifest", "other-scheme"],
)
def test_bad_sources_name_the_source_and_the_fix(tmp_path, make_source, error, match):
    source = make_source(tmp_path)
    with pytest.raises(error, match=match) as err:
        ingest(source, EXTENSIONS)
    assert str(source) in str(err.value)


def test_extensions_must_be_dotted_suffixes():
    from pydantic import ValidationError

    from osora.config.data import IngestParams

    assert IngestParams(sources=["raw"], extensions=[".mp4", ".MOV"]).extensions == [
        ".mp4", ".MOV"]
    with pytest.raises(ValidationError, match="look like '.mp4'"):
        IngestParams(sources=["raw"], extensions=["mp4"])
