"""moto's S3 server, a real S3 API on 127.0.0.1, for the tests (tests/conftest.py's session
server, and tests that stop or freeze a server of their own)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


@contextmanager
def moto_server(log_path: Path, bucket: str) -> Iterator[tuple[S3Server, subprocess.Popen]]:
    """Start moto's server in its own process with one empty bucket; (server, process) while
    inside, killed on exit (it has nothing to flush; a frozen, SIGSTOPped one dies too)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", _MOTO_SERVER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.strip().isdigit():
            raise RuntimeError(f"moto server did not start; see {log_path}:\n"
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        server = S3Server(endpoint_url=f"http://127.0.0.1:{int(line)}", bucket=bucket)
        server.client().create_bucket(Bucket=server.bucket)
        yield server, proc
    finally:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe:
                pipe.close()
