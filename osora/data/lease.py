"""One writer per stage: a lease in the store that a stage holds while it works.

Queued `dvc exp` runs and people share one store; two runs of one stage at once would both
append the same inputs to the stage's work log. So a stage first takes `<store>/_leases/<stage>`:

- local store: an exclusive `flock` on the lease file. The kernel drops it when the holder
  exits, however it exits (kill -9 included), so a dead holder never blocks anyone.
- S3: an object created with `If-None-Match: *` (only one creator wins) holding the holder's
  name and an expiry. The holder renews it every `ttl_s / 3` with `If-Match` on its own ETag;
  a lease past its expiry (its holder died) is taken over with `If-Match` on the stale ETag,
  so of two runs taking over at once only one wins.

A second run waits up to `wait_s` for the lease, then stops with a message naming the holder.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osora.data.operator import EnvironmentFault

if TYPE_CHECKING:
    from osora.store import Store

POLL_S = 1.0


class LeaseHeld(EnvironmentFault):
    """Another run holds the stage's lease and did not let go in time."""


def holder_name() -> str:
    """Who holds a lease: host, pid and start time, for the message a waiting run prints."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"{socket.gethostname()} pid {os.getpid()} since {started}"


@contextmanager
def stage_lease(store: Store, stage: str, *, wait_s: float, ttl_s: float = 60.0) -> Iterator[None]:
    """Hold the lease of `stage` on `store` for the block; wait up to `wait_s` for it."""
    lease = _S3Lease(store, stage, ttl_s) if "://" in store.root else _FileLease(store, stage)
    deadline = time.monotonic() + wait_s
    said = False
    while not lease.try_acquire():
        holder = lease.holder() or "another run"
        if time.monotonic() >= deadline:
            raise LeaseHeld(
                f"stage {stage!r} is already running on store {store.root} ({holder}); waited "
                f"{wait_s:g} s (runner.lease_wait_s). Let that run finish, or stop it; a lease "
                "of a run that died is freed by itself"
            )
        if not said:
            print(f"[{stage}] waiting for the stage's lease, held by {holder}", flush=True)
            said = True
        time.sleep(POLL_S)
    try:
        yield
    finally:
        lease.release()


class _FileLease:
    """flock on <root>/_leases/<stage>.lock; the holder's name is written inside."""

    def __init__(self, store: Store, stage: str):
        self.path = Path(store.root) / "_leases" / f"{stage}.lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_name().encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> str | None:
        try:
            return self.path.read_text().strip() or None
        except OSError:
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class _S3Lease:
    """A conditional object with an expiry, renewed by a background thread."""

    def __init__(self, store: Store, stage: str, ttl_s: float):
        root = store.root.split("://", 1)[1]
        self.bucket, _, prefix = root.partition("/")
        self.key = f"{prefix}/_leases/{stage}.json".lstrip("/")
        self.ttl_s = ttl_s
        self._options = store.storage_options
        self._client = _s3_client(self._options)
        self._etag: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"holder": holder_name(), "expires": time.time() + self.ttl_s}).encode()

    def _put(self, **condition: str) -> str | None:
        """PUT the lease under a condition; its new ETag, or None when the condition failed."""
        from botocore.exceptions import ClientError

        try:
            reply = self._client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                            **condition)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed",
                                                              "ConditionalRequestConflict"):
                return None
            raise
        return reply["ETag"]

    def _current(self) -> tuple[dict[str, Any], str] | None:
        from botocore.exceptions import ClientError

        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        try:
            body = json.loads(reply["Body"].read())
        except ValueError:
            body = {}
        return body, reply["ETag"]

    def try_acquire(self) -> bool:
        from osora.store import s3_unavailable

        with s3_unavailable(self._options, f"taking the lease {self.key}"):
            return self._try_acquire()

    def _try_acquire(self) -> bool:
        etag = self._put(IfNoneMatch="*")
        if etag is None:
            current = self._current()
            if current is None:
                return False  # released just now: the next poll creates it
            body, stale = current
            if float(body.get("expires", 0)) > time.time():
                return False
            etag = self._put(IfMatch=stale)  # the holder died: take over, one winner
            if etag is None:
                return False
        self._etag = etag
        self._renewer = threading.Thread(target=self._renew, daemon=True, name="lease-renewer")
        self._renewer.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with self._lock:
                etag = self._put(IfMatch=self._etag) if self._etag else None
                if etag is not None:
                    self._etag = etag

    def holder(self) -> str | None:
        current = self._current()
        return str(current[0].get("holder")) if current else None

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with self._lock:
            if self._etag is not None:
                from botocore.exceptions import ClientError

                try:
                    self._client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
                except ClientError:
                    pass  # taken over after we stalled past the expiry: no longer ours
                self._etag = None


def _s3_client(storage_options: dict[str, str]):
    """A boto3 client with the store's endpoint, credentials, timeouts and retries."""
    import boto3
    from botocore.config import Config

    from osora.store import boto_config

    opts = storage_options
    return boto3.client(
        "s3",
        endpoint_url=opts.get("aws_endpoint"),
        region_name=opts.get("aws_region"),
        aws_access_key_id=opts.get("aws_access_key_id"),
        aws_secret_access_key=opts.get("aws_secret_access_key"),
        config=Config(**boto_config(opts)),
    )
