"""Stages read S3 as they read a folder (osora.fetch), and an S3 outage fails fast, naming the
endpoint (osora.store.StoreUnavailable), all against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from s3_server import S3Server, moto_server

from osora.config import load_settings
from osora.config.store import StoreSettings
from osora.data.clip_file import with_clip_file
from osora.data.clips import ClipCutter, clip_inputs
from osora.data.operator import OperatorError
from osora.data.shots import ShotDetector
from osora.errors import environment_cause
from osora.fetch import FileCache
from osora.schemas import schema_of
from osora.store import Store, StoreUnavailable, lance_s3_options

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = load_settings(params_dir=REPO_ROOT / "params").data
# Outage test: timeouts scaled down from the defaults (5 s connect, 30 s request, 3 attempts).
FAST_S3 = {"connect_timeout_s": 0.5, "request_timeout_s": 1.0, "max_attempts": 2}
# Lance tries a listing 6 times over (5 outer retries), each try bounded by the settings above:
# under 10 s against a frozen server; the bound leaves room for a loaded machine.
OUTAGE_BOUND_S = 45


def with_cache(settings: StoreSettings, cache_dir: Path, **s3_changes) -> StoreSettings:
    """`settings` with its own cache folder (and S3 settings changed as given)."""
    s3 = settings.s3.model_copy(update=s3_changes)
    return settings.model_copy(update={"cache_dir": str(cache_dir), "s3": s3})


def upload(server: S3Server, data: bytes, key: str) -> str:
    server.client().put_object(Bucket=server.bucket, Key=key, Body=data)
    return f"s3://{server.bucket}/{key}"


def cached_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.iterdir()}


def test_shots_and_clips_read_an_s3_video_as_its_local_file(s3_server, synth_set, tmp_path):
    folder, videos = synth_set
    video = next(v for v in videos if v.stem == "scene_cuts")
    local = folder / video.file
    run = uuid.uuid4().hex
    uri = upload(s3_server, local.read_bytes(), f"{run}/raw/{video.file}")
    settings = with_cache(s3_server.store_settings(f"{run}/store"), tmp_path / "cache")
    detector = pickle.loads(pickle.dumps(ShotDetector(DATA.shots, settings)))  # as to a worker
    row = {"id": "v", "width": video.width, "height": video.height}

    shots_local = detector.process({**row, "uri": str(local)})
    shots_s3 = detector.process({**row, "uri": uri})
    assert shots_s3 == shots_local and shots_s3[0]["cut_frames"]
    assert list(cached_files(tmp_path / "cache").values()) == [local.read_bytes()]

    store = Store.from_settings(settings)
    cutter = ClipCutter(DATA.clips, settings)
    shots = pa.Table.from_pylist(shots_s3, schema=schema_of("shots"))

    def cut(source: str) -> tuple[list[dict], list[bytes]]:
        (clip_input,) = clip_inputs(pa.Table.from_pylist([{**row, "uri": source}]),
                                    shots).to_pylist()
        clips = cutter.process(clip_input)
        files = [with_clip_file(store, c["uri"], Path.read_bytes, stage="test",
                                clip_id=c["id"], doing="read") for c in clips]
        return clips, files

    clips_local, files_local = cut(str(local))
    clips_s3, files_s3 = cut(uri)
    assert len(clips_s3) >= 2 and all(c["uri"].startswith("s3://") for c in clips_s3)
    assert clips_s3 == clips_local and files_s3 == files_local  # same rows, same bytes

    missing = f"s3://{s3_server.bucket}/{run}/raw/gone.mp4"
    with pytest.raises(OperatorError, match=f"video gone: no such file {missing}"):
        detector.process({"id": "gone", "uri": missing})
    with pytest.raises(OperatorError, match=f"clip c1: no file at {missing}"):
        with_clip_file(store, missing, Path.read_bytes, stage="test", clip_id="c1", doing="x")


def test_cache_evicts_least_recently_used_beyond_its_cap(s3_server, tmp_path):
    run = uuid.uuid4().hex
    data = {name: os.urandom(400_000) for name in "abcd"}  # 4 × 400 kB under a 1 MB cap
    uris = {name: upload(s3_server, blob, f"{run}/{name}.mp4") for name, blob in data.items()}
    root = tmp_path / "cache"
    cache = FileCache(lance_s3_options(s3_server.store_settings("x").s3), root, 1_000_000)

    def fetch(name: str) -> None:
        with cache.local_path(uris[name]) as path:
            assert path.read_bytes() == data[name] and path.parent == root

    for name in "abc":
        fetch(name)
        assert sum(len(b) for b in cached_files(root).values()) <= cache.max_bytes
    assert sorted(cached_files(root).values()) == sorted([data["b"], data["c"]])  # a was LRU

    with cache.local_path(uris["c"]) as in_use:  # c is now the oldest file, but in use
        time.sleep(0.05)  # mtimes apart
        fetch("a")  # evicts b
        fetch("d")  # would evict c, the least recently used, but c is in use: a goes
        assert in_use.read_bytes() == data["c"]
    assert sorted(cached_files(root).values()) == sorted([data["c"], data["d"]])

    changed = os.urandom(1000)
    upload(s3_server, changed, f"{run}/c.mp4")  # a new version under the same key
    with cache.local_path(uris["c"]) as path:
        assert path.read_bytes() == changed


_FETCH_CHILD = """
import hashlib, json, sys
from pathlib import Path
from osora.fetch import FileCache
spec = json.loads(sys.stdin.readline())
cache = FileCache(spec["options"], Path(spec["root"]), spec["max_bytes"])
cache.fs.info(spec["uri"])  # connected before the start signal
print("ready", flush=True)
sys.stdin.readline()
with cache.local_path(spec["uri"]) as path:
    print(hashlib.sha256(path.read_bytes()).hexdigest(), flush=True)
"""


def test_two_processes_fetching_one_object_both_get_the_whole_file(s3_server, tmp_path):
    blob = os.urandom(24 * 2**20)
    uri = upload(s3_server, blob, f"{uuid.uuid4().hex}/big.mp4")
    spec = {"options": lance_s3_options(s3_server.store_settings("x").s3),
            "root": str(tmp_path / "cache"), "max_bytes": 2**30, "uri": uri}
    children = [subprocess.Popen([sys.executable, "-c", _FETCH_CHILD], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for child in children:
            child.stdin.write(json.dumps(spec) + "\n")
            child.stdin.flush()
        assert [child.stdout.readline().strip() for child in children] == ["ready"] * 2
        for child in children:  # both start fetching now
            child.stdin.write("go\n")
            child.stdin.close()
        digests = [child.stdout.readline().strip() for child in children]
    finally:
        for child in children:
            child.wait(timeout=120)
            child.stdout.close()
    assert [child.returncode for child in children] == [0, 0]
    assert digests == [hashlib.sha256(blob).hexdigest()] * 2
    assert list(cached_files(tmp_path / "cache").values()) == [blob]  # no partial file left


def videos_table() -> pa.Table:
    row = {"id": "a", "uri": "/raw/a.mp4", "size_bytes": 10, "fps": 24.0, "width": 64,
           "height": 48, "num_frames": 48, "codec": "h264",
           "ingested_at": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    return pa.Table.from_pylist([row], schema=schema_of("videos"))


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_an_outage_fails_in_bounded_time_naming_the_endpoint(outage, tmp_path):
    """stopped: connections are refused. frozen (SIGSTOP): the kernel still accepts them but
    nothing answers, which only timeouts end (before them, ~240 s of silence)."""
    with moto_server(tmp_path / "moto.log", "osora-outage") as (server, proc):
        settings = with_cache(server.store_settings("outage"), tmp_path / "cache", **FAST_S3)
        store = Store.from_settings(settings)
        store.write("videos", videos_table())
        uri = upload(server, b"video bytes", "outage/raw/a.mp4")
        clip = tmp_path / "clip.mp4"
        clip.write_bytes(b"clip bytes")
        if outage == "stopped":
            proc.stdin.close()
            proc.wait(timeout=10)
        else:
            os.kill(proc.pid, signal.SIGSTOP)

        def fetch() -> None:
            with FileCache.from_settings(settings).local_path(uri):
                pass

        calls = {"read": lambda: store.read("videos"), "fetch": fetch,
                 "put_file": lambda: store.put_file(clip, "clips/a/a-000.mp4")}
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                call()
            elapsed_s = time.monotonic() - started
            message = str(info.value)
            assert elapsed_s < OUTAGE_BOUND_S, (name, elapsed_s)
            assert f"S3 endpoint {server.endpoint_url} did not answer" in message, message
            assert "check store.s3.endpoint_url and the network" in message
            assert server.secret_access_key not in message
            err = info.value
            assert err.transient and environment_cause(err) is err
            assert not isinstance(err, (OSError, ValueError))  # never "a bad clip file"
            again = pickle.loads(pickle.dumps(err))  # as from a worker to the runner
            assert type(again) is StoreUnavailable and again.transient and str(again) == message


def test_s3_options_bound_every_call(s3_server):
    s3 = s3_server.store_settings("x").s3.model_copy(update=FAST_S3)
    options = lance_s3_options(s3)
    assert {k: options[k] for k in ("connect_timeout", "timeout", "client_max_retries",
                                    "client_retry_timeout")} == {
        "connect_timeout": "500ms", "timeout": "1000ms", "client_max_retries": "1",
        "client_retry_timeout": "1"}
    store = Store(f"s3://{s3_server.bucket}/bare", {"aws_endpoint": s3_server.endpoint_url})
    assert store.storage_options["timeout"] == "30000ms"  # defaults even from bare options
    assert "30000ms" in repr(store)
    fs = FileCache(options).fs
    assert fs.config_kwargs["retries"] == {"max_attempts": 2, "mode": "standard"}
    assert (fs.config_kwargs["connect_timeout"], fs.config_kwargs["read_timeout"]) == (0.5, 1.0)
