"""Shared fixtures: a real local S3 (moto's server) and a Store on a local dir or on that S3."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import S3Server, moto_server

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 with one empty bucket, for the whole session (each xdist
    worker starts its own)."""
    with moto_server(tmp_path_factory.mktemp("moto") / "server.log", "osora-test") as (server, _):
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """A Store on a fresh local directory, or on a fresh prefix of the session's S3 server."""
    from osora.store import Store

    if request.param == "local":
        return Store(str(tmp_path / "store"))
    server: S3Server = request.getfixturevalue("s3_server")
    return Store.from_settings(server.store_settings(f"tests/{uuid.uuid4().hex}"))


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory):
    """The synthetic demo set of the tiny profile without its training grid (160 more videos
    of one kind; tests/data/test_synth.py covers the grid), generated once per test process.

    Returns (folder, list of SynthVideo). Treat it as read-only: copy files before changing.
    """
    from osora.config import load_settings
    from osora.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    params = load_settings(params_dir=REPO_ROOT / "params").data.synth
    videos = generate(params.model_copy(update={"grid": None}), folder)
    return folder, videos


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op torch thread per test: `pytest -n 2` runs two workers on 2 cores, and two
    threads each oversubscribe them (up to 10× slower); the tests' tensors are too small to gain
    from more."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
