"""The data stages with everything in S3 (moto's server on 127.0.0.1): the raw videos behind an
s3:// prefix, the store (tables and clip files) on another prefix. `dvc repro` through the
captions and pyramid stages must give the same clips as from a local folder would."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from dvc_project import copy_project, sh

from osora.store import Store

pytestmark = pytest.mark.slow

CLEAN = ("clean_00", "clean_01")


def test_videos_and_store_in_s3_run_every_data_stage(s3_server, synth_set, tmp_path):
    folder, _ = synth_set
    run = uuid.uuid4().hex
    client = s3_server.client()
    for stem in CLEAN:  # two clean synthetic videos with their caption sidecars
        for suffix in (".mp4", ".txt"):
            client.upload_file(str(folder / f"{stem}{suffix}"), s3_server.bucket,
                               f"{run}/raw/{stem}{suffix}")
    project = copy_project(tmp_path / "project")
    data = project / "params" / "data.yaml"
    data.write_text(data.read_text().replace(
        "  sources: [data/synth]\n", f"  sources: ['s3://{s3_server.bucket}/{run}/raw']\n"))
    (project / "params" / "store.yaml").write_text(
        f"uri: s3://{s3_server.bucket}/{run}/store\n"
        f"s3:\n  endpoint_url: {s3_server.endpoint_url}\n  region: {s3_server.region}\n"
        "  allow_http: true\n")
    credentials = {"OSORA_STORE__S3__ACCESS_KEY_ID": s3_server.access_key_id,
                   "OSORA_STORE__S3__SECRET_ACCESS_KEY": s3_server.secret_access_key}
    sh("dvc", "repro", "pyramid", cwd=project, env=credentials)

    store = Store.from_settings(s3_server.store_settings(f"{run}/store"))
    videos = store.read("videos").to_pylist()
    assert sorted(Path(v["uri"]).stem for v in videos) == list(CLEAN)
    assert all(v["uri"].startswith("s3://") for v in videos)
    assert store.read("shots").num_rows == len(CLEAN)
    clips = store.read("clips").to_pylist()
    assert clips and all(c["uri"].startswith(f"s3://{s3_server.bucket}/{run}/store/files/")
                         for c in clips)
    for table in ("shots", "clips", "score_motion", "score_blur", "captions"):
        quarantine = f"{table}_quarantine"
        assert not store.exists(quarantine) or store.read(quarantine).num_rows == 0, table
    assert store.read("pyramid_all").num_rows == len(clips)
    assert not (project / "store").exists()  # nothing went to the local default store
