"""Local paths for stored files, so every stage reads S3 as it reads a folder.

`FileCache.local_path(uri)` gives a local path for a uri: a local path is itself; an s3:// object
is fetched into a cache folder on local disk and served from there while it stays unchanged.

The cache is shared by every worker process on the machine, without a coordinator:

- an entry is named by a hash of the uri and the object's ETag and size, so a changed object
  gets a new name (and is fetched again) while the stale copy ages out;
- a download goes to a temporary name and is linked into place whole: no process sees half a
  file, and two processes fetching the same object each get a whole copy;
- a file in use holds a shared flock; after each download the least recently used files are
  deleted until the cache fits `max_bytes`, skipping the ones a process holds (a running
  download included), so the cache can exceed its cap only by the files in use.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osora.paths import workspace_root
from osora.store import lance_s3_options, s3_filesystem, s3_unavailable

if TYPE_CHECKING:
    from osora.config.store import StoreSettings

GIB = 2**30
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")
_PARTIAL = ".part"


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/osora/files (~/.cache/osora/files): per user, so users never share (or
    fight over) files, and outside the per-run temporary folders (osora.data.runner), so the
    next stage finds what the last one fetched."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "osora" / "files"


class FileCache:
    """Local paths for local files and s3:// objects (module docstring)."""

    def __init__(self, storage_options: dict[str, str], root: Path | None = None,
                 max_bytes: int = 2 * GIB):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = max_bytes
        self._options = dict(storage_options)
        self._fs: Any = None

    @classmethod
    def from_settings(cls, settings: StoreSettings | None) -> FileCache:
        """The cache of params/store.yaml (its S3 endpoint, credentials, cache_dir and cap);
        None: default S3 settings (credentials from the environment) and the default cache."""
        from osora.config.store import S3Settings

        if settings is None:
            return cls(lance_s3_options(S3Settings()))
        root = None
        if settings.cache_dir is not None:
            root = Path(settings.cache_dir).expanduser()
            root = root if root.is_absolute() else workspace_root() / root
        return cls(lance_s3_options(settings.s3), root, int(settings.cache_max_gib * GIB))

    @property
    def storage_options(self) -> dict[str, str]:
        """The S3 options it fetches with (they hold the credentials: never log them)."""
        return dict(self._options)

    def __getstate__(self) -> dict[str, Any]:
        return {**vars(self), "_fs": None}  # an s3fs client does not cross a pickle

    @property
    def fs(self) -> Any:
        """The s3fs filesystem (made on first use) with the options' endpoint, credentials,
        timeouts and retries."""
        if self._fs is None:
            self._fs = s3_filesystem(self._options)
        return self._fs

    @contextmanager
    def local_path(self, uri: str) -> Iterator[Path]:
        """A local path for `uri`, valid inside the `with` (an S3 file in use is never evicted).

        A missing object raises FileNotFoundError naming the uri; an endpoint that does not
        answer within the timeouts and retries, osora.store.StoreUnavailable."""
        if "://" not in uri:
            yield Path(uri)
            return
        if not uri.startswith("s3://"):
            raise ValueError(f"cannot read {uri}: use a local path or an s3:// URI")
        with s3_unavailable(self._options, f"fetching {uri}"):
            fd, path = self._acquire(uri)
        try:
            os.utime(path)  # most recently used
            yield path
        finally:
            os.close(fd)

    def _acquire(self, uri: str) -> tuple[int, Path]:
        """(descriptor holding a shared lock on the cached file, its path), fetching the object
        first when the cache has no copy of its current version."""
        try:
            info = self.fs.info(uri, refresh=True)  # a HEAD: the current ETag and size
        except FileNotFoundError:
            raise FileNotFoundError(f"no object at {uri}") from None
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.root / cache_name(uri, info.get("ETag"), int(info["size"]))
        fd = _lock_shared(path)
        if fd is None:
            fd = self._download(uri, path)
            self._evict()
        return fd, path

    def _download(self, uri: str, path: Path) -> int:
        """Fetch `uri` to a temporary name beside `path`, then link it into place; a shared
        lock on it from the start keeps eviction away. Returns the locked descriptor of the
        file now at `path` (another process's copy if it linked one there first)."""
        partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{_PARTIAL}")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            self.fs.get_file(uri, str(partial))
            try:
                os.link(partial, path)  # never replaces: a copy already there may be in use
            except FileExistsError:
                theirs = _lock_shared(path)
                if theirs is not None:  # identical (same name, same version): share it
                    os.close(fd)
                    return theirs
                os.replace(partial, path)  # theirs was evicted meanwhile: ours takes its place
            return fd
        except BaseException:
            os.close(fd)
            raise
        finally:
            partial.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Delete the least recently used files until the cache fits `max_bytes`, skipping
        the ones a process holds."""
        entries = []
        for entry in os.scandir(self.root):
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            entries.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        total_bytes = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total_bytes <= self.max_bytes:
                break
            if _remove_unused(path):
                total_bytes -= size


def cache_name(uri: str, etag: str | None, size_bytes: int) -> str:
    """The cache file name of one version of an object: a hash of uri, ETag and size, with the
    uri's extension kept for tools that look at it."""
    digest = hashlib.sha256(f"{uri}\n{etag}\n{size_bytes}".encode()).hexdigest()[:40]
    suffix = Path(uri).suffix
    return digest + (suffix if _SUFFIX.fullmatch(suffix) else "")


def _lock_shared(path: Path) -> int | None:
    """A descriptor of `path` holding a shared lock, or None when there is no such file (or it
    was evicted between opening and locking)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    if _same_file(fd, path):
        return fd
    os.close(fd)
    return None


def _remove_unused(path: Path) -> bool:
    """Delete `path` unless a process holds a lock on it; whether it was deleted."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # in use (or being downloaded)
        os.close(fd)
        return False
    try:
        if not _same_file(fd, path):
            return False
        path.unlink()
        return True
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (not deleted or replaced since)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
