"""Shared fixtures: a real local S3 (moto's server) and a Store on a local dir or on that S3."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# moto's server in its own process: a crash or a `mock_aws` elsewhere in the test process cannot
# reset its buckets, and requests from Lance's Rust client do not wait on the test's GIL. It
# binds an ephemeral port on 127.0.0.1 only, prints it, and stops when its stdin closes.
_MOTO_SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    access_key_id: str = "osora-test-key-id"
    secret_access_key: str = "osora-test-secret-key"
    region: str = "us-east-1"

    def client(self):
        """A boto3 S3 client for this server (to inspect what was written)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )

    def store_settings(self, prefix: str):
        """StoreSettings for s3://<bucket>/<prefix> on this server."""
        from pydantic import SecretStr

        from osora.config.store import S3Settings, StoreSettings

        return StoreSettings(
            uri=f"s3://{self.bucket}/{prefix}",
            s3=S3Settings(
                endpoint_url=self.endpoint_url,
                region=self.region,
                access_key_id=SecretStr(self.access_key_id),
                secret_access_key=SecretStr(self.secret_access_key),
                allow_http=True,
            ),
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 with one empty bucket, for the whole session (each xdist
    worker starts its own)."""
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.strip().isdigit():
            proc.kill()
            raise RuntimeError(f"moto server did not start; see {log_path}:\n{_tail(log_path)}")
        server = S3Server(endpoint_url=f"http://127.0.0.1:{int(line)}", bucket="osora-test")
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """A Store on a fresh local directory, or on a fresh prefix of the session's S3 server."""
    from osora.store import Store

    if request.param == "local":
        return Store(str(tmp_path / "store"))
    server: S3Server = request.getfixturevalue("s3_server")
    return Store.from_settings(server.store_settings(f"tests/{uuid.uuid4().hex}"))


def _tail(path: Path, n: int = 2000) -> str:
    return path.read_text(errors="replace")[-n:]


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory):
    """The synthetic demo set of the tiny profile, generated once per test process.

    Returns (folder, list of SynthVideo). Treat it as read-only: copy files before changing.
    """
    from osora.config import load_settings
    from osora.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    videos = generate(load_settings(params_dir=REPO_ROOT / "params").data.synth, folder)
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
