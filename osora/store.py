"""Lance tables behind one root URI: a local directory or s3://bucket/prefix.

Every table is `<root>/<name>.lance`, its columns fixed by `osora.schemas`. Lance gives what the
pipeline needs from a table store:

- atomic writes: data files are written first and a write becomes visible only when its manifest
  is committed (a conditional put on S3), so a crash mid-write leaves the previous version intact;
- versions: every write is a new numbered version and old versions stay readable, so a stage can
  pin the version it consumed;
- tags: names for versions (e.g. "paper-v1") that survive later writes.

Lance is not fork-safe: run parallel workers with subprocess or a spawn pool, never fork.
Credentials live only in the storage options handed to Lance; `repr` and log lines mask them.

Every S3 call has timeouts and a bounded number of retries (`S3Settings`), on both clients: Lance
(object_store, through its storage options) and s3fs (files). An endpoint that does not answer
within them raises `StoreUnavailable`, naming it, instead of hanging; a stored file read by a
stage comes through a bounded local cache (`Store.local_path`, osora.fetch).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from osora.config.store import S3Settings
from osora.errors import EnvironmentFault
from osora.paths import workspace_root
from osora.schemas import schema_of

if TYPE_CHECKING:
    import lance

    from osora.config.store import StoreSettings
    from osora.fetch import FileCache

log = logging.getLogger(__name__)

WriteMode = Literal["create", "append", "overwrite"]
_MODES = ("create", "append", "overwrite")
# Storage options that are safe to show; every other value (keys, secrets, tokens) is masked.
_SHOWN_OPTIONS = frozenset({
    "aws_endpoint", "aws_region", "allow_http",
    "connect_timeout", "timeout", "client_max_retries", "client_retry_timeout",
})
_TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Lance (object_store) errors are ValueError/OSError carrying the Rust error's text; these say the
# endpoint did not answer (refused or dropped connection, timeout, retries used up, 5xx), not
# that a table or key is missing or the data is bad.
_UNREACHABLE = re.compile(
    r"error sending request|error decoding response body|timed out|dns error"
    r"|connection (?:refused|reset|closed)|after \d+ retries"
    r"|service unavailable|bad gateway|gateway timeout|slow ?down",
    re.IGNORECASE,
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s)")
F = TypeVar("F", bound=Callable[..., Any])


class StoreUnavailable(EnvironmentFault):
    """The S3 endpoint did not answer within its timeouts and retries (down, unreachable,
    overloaded): the environment's fault, never a bad row, so the data runner stops the stage
    rather than quarantining rows. Transient: a later retry may succeed."""

    def __init__(self, message: str):
        super().__init__(message, transient=True)


def retry_options(s3: S3Settings) -> dict[str, str]:
    """Lance (object_store) storage options bounding every request: connect and request
    timeouts, and retries. No retry starts once a request timeout has passed since the first
    try (client_retry_timeout): failures that come fast (refused connection, 5xx) get every
    attempt, a hung endpoint costs one timeout per request. That matters because Lance itself
    tries a listing 6 times over (hard-coded), so a read of a frozen endpoint takes about
    6 × request_timeout_s. Checked against pylance 14: durations need a unit ("5000ms"),
    client_retry_timeout is whole seconds, unknown keys are ignored silently."""
    return {
        "connect_timeout": _duration(s3.connect_timeout_s),
        "timeout": _duration(s3.request_timeout_s),
        "client_max_retries": str(s3.max_attempts - 1),
        "client_retry_timeout": str(math.ceil(s3.request_timeout_s)),
    }


def lance_s3_options(s3: S3Settings) -> dict[str, str]:
    """Lance (object_store) storage options for S3 from settings.

    Credentials left unset are not passed, so Lance falls back to AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, instance profiles and the rest of the usual chain.
    """
    options = {"aws_region": s3.region, **retry_options(s3)}
    if s3.endpoint_url:
        options["aws_endpoint"] = s3.endpoint_url
    if s3.allow_http:
        options["allow_http"] = "true"
    if (s3.access_key_id is None) != (s3.secret_access_key is None):
        raise ValueError(
            "store.s3: set both access_key_id and secret_access_key, or neither (then the "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY environment variables are used)"
        )
    if s3.access_key_id is not None and s3.secret_access_key is not None:
        options["aws_access_key_id"] = s3.access_key_id.get_secret_value()
        options["aws_secret_access_key"] = s3.secret_access_key.get_secret_value()
    return options


def s3_filesystem(storage_options: dict[str, str]):
    """An fsspec S3 filesystem from Lance-style storage options (`lance_s3_options`), so files
    and listings use the same endpoint, credentials, timeouts and retries as the tables
    (options without them get S3Settings' defaults)."""
    import aiobotocore.session
    import botocore.handlers
    import fsspec

    opts = storage_options
    client_kwargs = {"region_name": opts.get("aws_region")}
    if "aws_endpoint" in opts:
        client_kwargs["endpoint_url"] = opts["aws_endpoint"]
    config = boto_config(opts)
    session = aiobotocore.session.AioSession()
    # aiohttp waits for a PUT's "100 Continue" with no timeout: a frozen endpoint would hang it.
    session.unregister("before-call.s3", botocore.handlers.add_expect_header)
    fs = fsspec.filesystem(
        "s3",
        key=opts.get("aws_access_key_id"),
        secret=opts.get("aws_secret_access_key"),
        client_kwargs=client_kwargs,
        config_kwargs=config,
        session=session,
        skip_instance_cache=True,
    )
    fs.retries = 1  # botocore retries (above); s3fs's own loop would multiply the attempts
    return fs


def boto_config(storage_options: dict[str, str]) -> dict[str, Any]:
    """botocore Config arguments with the options' timeouts and retries (S3Settings' defaults
    where the options have none), for every boto/s3fs client osora makes."""
    opts = {**retry_options(S3Settings()), **storage_options}
    return {
        "connect_timeout": _seconds(opts["connect_timeout"]),
        "read_timeout": _seconds(opts["timeout"]),
        "retries": {"max_attempts": int(opts["client_max_retries"]) + 1, "mode": "standard"},
    }


def endpoint_unreachable(err: BaseException) -> bool:
    """Whether `err` (from Lance or s3fs) says the S3 endpoint did not answer, as opposed to a
    missing key, refused credentials or bad data."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    if isinstance(err, (BotoConnectionError, HTTPClientError, TimeoutError, ConnectionError)):
        return True
    return isinstance(err, (OSError, ValueError)) and bool(_UNREACHABLE.search(str(err)))


@contextmanager
def s3_unavailable(storage_options: dict[str, str], doing: str) -> Iterator[None]:
    """Within: an error saying the endpoint did not answer becomes StoreUnavailable, naming
    the endpoint, what was being done, how long it was tried and the bounds that applied; no
    credentials at all, an EnvironmentFault (neither is the fault of a row)."""
    from botocore.exceptions import NoCredentialsError

    started = time.monotonic()
    try:
        yield
    except NoCredentialsError:
        raise EnvironmentFault(
            f"no S3 credentials while {doing}: set OSORA_STORE__S3__ACCESS_KEY_ID and "
            "OSORA_STORE__S3__SECRET_ACCESS_KEY (or the AWS_* variables, or a profile)"
        ) from None
    except Exception as err:
        if isinstance(err, StoreUnavailable) or not endpoint_unreachable(err):
            raise
        raise StoreUnavailable(
            _unavailable_message(storage_options, doing, time.monotonic() - started, err)
        ) from err


def _unavailable_message(opts: dict[str, str], doing: str, elapsed_s: float,
                         err: BaseException) -> str:
    """"S3 endpoint <url> did not answer within <n> s while <doing> (...): check ..."."""
    opts = {**retry_options(S3Settings()), **opts}
    endpoint = opts.get("aws_endpoint") or \
        f"https://s3.{opts.get('aws_region', 'us-east-1')}.amazonaws.com"
    cause = (str(err).splitlines() or [""])[0][:300] or type(err).__name__
    attempts = int(opts["client_max_retries"]) + 1
    return (
        f"S3 endpoint {endpoint} did not answer within {elapsed_s:.0f} s while {doing} "
        f"(connect timeout {_seconds(opts['connect_timeout']):g} s, request timeout "
        f"{_seconds(opts['timeout']):g} s, up to {attempts} attempts per request): check "
        f"store.s3.endpoint_url and the network. Last error: {cause}"
    )


def _duration(seconds: float) -> str:
    """A duration as object_store parses it: "5000ms" (it requires a unit)."""
    return f"{max(1, round(seconds * 1000))}ms"


def _seconds(duration: str) -> float:
    """Seconds in a "5000ms" / "5s" duration (the form `_duration` writes)."""
    match = _DURATION.fullmatch(duration.strip())
    if match is None:
        raise ValueError(f"S3 storage option duration {duration!r}: use e.g. '5000ms' or '5s'")
    value, unit = float(match[1]), match[2]
    return value / 1000 if unit == "ms" else value


def _s3_call(method: F) -> F:
    """A Store method that raises StoreUnavailable when the store is on S3 and its endpoint
    does not answer (the method's own error would look like a missing table or a bad row)."""

    @functools.wraps(method)
    def call(self: Store, *args: Any, **kwargs: Any) -> Any:
        if not self.root.startswith("s3://"):
            return method(self, *args, **kwargs)
        with s3_unavailable(self._storage_options, f"Store.{method.__name__} on {self.root}"):
            return method(self, *args, **kwargs)

    return call  # type: ignore[return-value]


class Store:
    """The project's tables under one root URI."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None, *,
                 cache: FileCache | None = None):
        from osora.fetch import FileCache

        if "://" not in uri:
            # Absolute, so table URIs mean the same thing whatever the working directory.
            uri = str(Path(uri).expanduser().resolve())
        self.root = uri.rstrip("/") or "/"
        self._storage_options = dict(storage_options or {})
        if self.root.startswith("s3://"):  # bounded calls even when built from bare options
            self._storage_options = {**retry_options(S3Settings()), **self._storage_options}
        # Where local_path puts the S3 files it reads (default: same options, default cache).
        self._files = cache or FileCache(self._storage_options)
        self._pinned_versions: dict[tuple[str, int], lance.LanceDataset] = {}  # take's
        self._pinned_lock = threading.Lock()  # prefetch threads take concurrently

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> Store:
        """A store for params/store.yaml. A relative path resolves against the main checkout
        (`workspace_root()`), so DVC temporary experiment copies share the main tables."""
        from osora.fetch import FileCache

        uri, cache = settings.uri, FileCache.from_settings(settings)
        if "://" not in uri:
            path = Path(uri).expanduser()
            return cls(str(path if path.is_absolute() else workspace_root() / path), cache=cache)
        if uri.startswith("s3://"):
            return cls(uri, lance_s3_options(settings.s3), cache=cache)
        return cls(uri, cache=cache)

    @property
    def storage_options(self) -> dict[str, str]:
        """A copy of the options handed to Lance, e.g. to rebuild this store in a subprocess.
        Holds the credentials: never log it."""
        return dict(self._storage_options)

    def __repr__(self) -> str:
        shown = {k: (v if k in _SHOWN_OPTIONS else "***") for k, v in self._storage_options.items()}
        return f"Store({self.root!r}, storage_options={shown})"

    # -- files (clips, samples): stored beside the tables, under <root>/files/ -------------

    def file_uri(self, key: str) -> str:
        """The URI of artifact file `key` (a relative path like "clips/<video>/<clip>.mp4")."""
        if key.startswith("/") or ".." in Path(key).parts:
            raise ValueError(f"bad file key {key!r}: use a relative path without '..'")
        return f"{self.root}/files/{key}"

    @_s3_call
    def put_file(self, local: Path, key: str) -> str:
        """Copy a local file into the store (atomically: a reader never sees half a file)."""
        import os
        import shutil

        uri = self.file_uri(key)
        if "://" not in uri:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{uri}.partial-{os.getpid()}"
            shutil.copyfile(local, tmp)
            os.replace(tmp, uri)
        else:  # an S3 PUT is atomic: the object appears whole or not at all
            self._fs().put_file(str(local), uri)
        return uri

    @_s3_call
    def fetch_file(self, uri: str, dest: Path) -> Path:
        """Copy a stored file (a path or an s3:// URI of this store) to `dest`."""
        import shutil

        if "://" not in uri:
            shutil.copyfile(uri, dest)
        else:
            self._fs().get_file(uri, str(dest))
        return dest

    @contextmanager
    def local_path(self, uri: str) -> Iterator[Path]:
        """A local path for a stored file (a path, or an s3:// URI fetched into the bounded
        local cache, osora.fetch), valid inside the `with`. A missing object raises
        FileNotFoundError naming it; an endpoint that does not answer, StoreUnavailable."""
        with self._files.local_path(uri) as path:
            yield path

    def _fs(self):
        return self._files.fs

    # -- locating tables -------------------------------------------------------------------

    def table_uri(self, name: str) -> str:
        if not _TABLE_NAME.fullmatch(name):
            raise ValueError(f"bad table name {name!r}: use letters, digits, '_', '-' and '.'")
        return f"{self.root}/{name}.lance"

    @_s3_call
    def exists(self, name: str) -> bool:
        """Whether the table has a committed version (a crashed first write leaves none)."""
        try:
            self._open(name)
        except FileNotFoundError:
            return False
        return True

    @_s3_call
    def list_tables(self) -> list[str]:
        """Names of the tables under the root that have at least one committed version."""
        from lance.namespace import DirectoryNamespace, ListTablesRequest

        namespace = DirectoryNamespace(
            root=self.root,
            manifest_enabled="false",  # list `*.lance` folders; write no catalog of our own
            dir_listing_enabled="true",
            **{f"storage.{k}": v for k, v in self._storage_options.items()},
        )
        names: list[str] = []
        token = None
        while True:
            page = namespace.list_tables(ListTablesRequest(id=[], page_token=token))
            names += page.tables
            token = page.page_token
            if not token:
                break
        return sorted(n for n in set(names) if self.exists(n))

    # -- writing ---------------------------------------------------------------------------

    @_s3_call
    def write(
        self,
        name: str,
        data: pa.Table | pa.RecordBatchReader,
        mode: WriteMode = "create",
        *,
        max_rows_per_file: int | None = None,
    ) -> int:
        """Write `data` as one atomic commit and return the new version.

        mode: "create" (the table must not exist), "append", or "overwrite" (a new version with
        only `data`; older versions stay readable). A RecordBatchReader is streamed, so a large
        write never has to fit in memory. `max_rows_per_file` caps rows per data file (Lance's
        default otherwise, about a million).
        """
        import lance

        if mode not in _MODES:
            raise ValueError(f"write mode {mode!r}: use one of {', '.join(_MODES)}")
        uri = self.table_uri(name)
        options: dict[str, Any] = {}
        if max_rows_per_file is not None:
            options["max_rows_per_file"] = max_rows_per_file
        try:
            dataset = lance.write_dataset(
                _conform(name, data),
                uri,
                schema=schema_of(name),
                mode=mode,
                storage_options=self._storage_options or None,
                **options,
            )
        except OSError as err:
            if mode == "create" and "already exists" in str(err):
                raise FileExistsError(
                    f"table {name!r} already exists at {uri}: write with mode='append' or "
                    "mode='overwrite', or sync()"
                ) from None
            raise
        log.info("%s: %s -> version %d", uri, mode, dataset.version)
        return dataset.version

    @_s3_call
    def sync(
        self,
        name: str,
        data: pa.Table | pa.RecordBatchReader,
        key: str = "id",
        *,
        update_matched: bool = False,
    ) -> int:
        """Make the table's rows equal `data` by `key` and return the resulting version.

        Keys new to the table are inserted, keys missing from `data` are deleted, all in one
        commit (Lance merge_insert). Rows whose key is already there are left untouched (so
        ingesting the same files twice adds nothing and keeps their first `ingested_at`), or,
        with `update_matched`, replaced by `data`'s values (derived tables, whose values change
        with params). When nothing changes, no commit is made and the current version is
        returned, so a rerun does not change the table. Creates the table if it does not exist, and
        rewrites it whole when its stored columns are an older schema's.
        """
        table = _conform(name, data)
        if isinstance(table, pa.RecordBatchReader):
            table = table.read_all()  # the merge needs every key anyway
        if key not in table.column_names:
            raise ValueError(f"sync {name!r}: key column {key!r} is not in the schema")
        keys = table.column(key)
        if keys.null_count:
            raise ValueError(f"sync {name!r}: {keys.null_count} rows have a null {key!r}")
        counts = pc.value_counts(keys)
        duplicates = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
        if len(duplicates):
            raise ValueError(
                f"sync {name!r}: {len(duplicates)} {key!r} values occur more than once in the "
                f"data, e.g. {duplicates[0].as_py()!r}; deduplicate before syncing"
            )
        if not self.exists(name):
            try:
                return self.write(name, table, mode="create")
            except (FileExistsError, OSError):
                if not self.exists(name):  # no other writer created it: a real failure
                    raise
                # another stage (a queued experiment) created it meanwhile: merge into theirs
                log.info("%s: created by another writer meanwhile; merging", name)

        dataset = self._open(name)
        if dataset.schema.names != schema_of(name).names:
            # Written before its schema gained a column (e.g. videos.kind): a merge cannot add
            # one, so the table is rewritten whole as a new version and an old store keeps
            # working after an upgrade.
            log.info("%s: stored columns differ from osora.schemas: rewritten",
                     self.table_uri(name))
            return self.write(name, table, mode="overwrite")
        old = dataset.to_table(columns=[key]).column(key).combine_chunks()
        new = keys.combine_chunks()
        n_insert = len(new) - (pc.sum(pc.is_in(new, value_set=old)).as_py() or 0)
        n_delete = len(old) - (pc.sum(pc.is_in(old, value_set=new)).as_py() or 0)
        uri = self.table_uri(name)
        unchanged = n_insert == 0 and n_delete == 0
        if unchanged and update_matched:
            current = dataset.to_table().sort_by(key)
            unchanged = current.select(table.column_names).equals(table.sort_by(key))
        if unchanged:
            log.info("%s: sync found nothing to change, still version %d", uri, dataset.version)
            return dataset.version
        merge = dataset.merge_insert(key).when_not_matched_insert_all()
        if update_matched:
            merge = merge.when_matched_update_all()
        merge.when_not_matched_by_source_delete().execute(table)
        log.info("%s: sync +%d -%d -> version %d", uri, n_insert, n_delete, dataset.version)
        return dataset.version

    # -- reading ---------------------------------------------------------------------------

    @_s3_call
    def read(
        self, name: str, version: int | str | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """The table at `version` (a number, a tag name, or None for the latest)."""
        return self._open(name, version).to_table(columns=columns)

    @_s3_call
    def take(self, name: str, positions: list[int], version: int,
             columns: list[str] | None = None) -> pa.Table:
        """The rows at `positions` (offsets in the table's scan order at `version`), in that
        order: random access for a reader that needs a few rows at a time (a training step's)
        and must never hold the whole table. The version must be pinned (a number): positions
        mean nothing across versions. The opened version is kept, so a take costs no manifest
        read."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"take from {name!r}: pin a version number, got {version!r}")
        return self._pinned(name, version).take(positions, columns=columns)

    @_s3_call
    def version(self, name: str) -> int:
        """The latest version number."""
        return self._open(name).version

    @_s3_call
    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version, oldest first, as Lance reports it: {"version", "timestamp",
        "metadata"} (the timestamp is naive UTC)."""
        return sorted(self._open(name).versions(), key=lambda v: v["version"])

    # -- tags ------------------------------------------------------------------------------

    @_s3_call
    def tag(self, name: str, tag: str, version: int) -> None:
        """Point `tag` at `version`, creating the tag or moving it."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"tag {tag!r}: version must be an int, got {version!r}")
        dataset = self._open(name)
        if tag in dataset.tags.list():
            dataset.tags.update(tag, version)
        else:
            dataset.tags.create(tag, version)
        log.info("%s: tag %r -> version %d", self.table_uri(name), tag, version)

    @_s3_call
    def tags(self, name: str) -> dict[str, int]:
        """Tag name -> version."""
        return {tag: info["version"] for tag, info in self._open(name).tags.list().items()}

    # -- internals -------------------------------------------------------------------------

    def _pinned(self, name: str, version: int) -> lance.LanceDataset:
        """The table at a version number, opened once per store (a version never changes)."""
        with self._pinned_lock:
            dataset = self._pinned_versions.get((name, version))
            if dataset is None:
                dataset = self._pinned_versions[(name, version)] = self._open(name, version)
            return dataset

    def _open(self, name: str, version: int | str | None = None) -> lance.LanceDataset:
        import lance

        uri = self.table_uri(name)
        try:
            return lance.dataset(
                uri, version=version, storage_options=self._storage_options or None
            )
        except ValueError as err:
            if self.root.startswith("s3://") and endpoint_unreachable(err):
                raise  # the calling method reports it as StoreUnavailable (_s3_call)
            if version is not None and self.exists(name):
                raise ValueError(
                    f"table {name!r} has no version or tag {version!r} (see Store.versions / "
                    f"Store.tags): {err}"
                ) from None
            if "not found" in str(err).lower():
                raise FileNotFoundError(
                    f"no table {name!r} at {uri}: create it with Store.write or Store.sync"
                ) from None
            raise


def _conform(name: str, data: pa.Table | pa.RecordBatchReader) -> pa.Table | pa.RecordBatchReader:
    """`data` checked against the table's schema: columns in schema order, non-nullable columns
    without nulls. Types must match exactly (build data with the schema, see osora.schemas)."""
    schema = schema_of(name)
    if not isinstance(data, (pa.Table, pa.RecordBatchReader)):
        raise TypeError(
            f"table {name!r}: expected a pyarrow Table or RecordBatchReader, got "
            f"{type(data).__name__}"
        )
    _check_schema(name, schema, data.schema)
    if isinstance(data, pa.Table):
        try:
            return data.select(schema.names).cast(schema)
        except ValueError as err:  # nulls in a non-nullable column
            raise ValueError(f"table {name!r}: {err}") from None

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in data:
            try:
                yield batch.select(schema.names).cast(schema)
            except ValueError as err:
                raise ValueError(f"table {name!r}: {err}") from None

    return pa.RecordBatchReader.from_batches(schema, batches())


def _check_schema(name: str, expected: pa.Schema, got: pa.Schema) -> None:
    problems = []
    missing = [n for n in expected.names if n not in got.names]
    extra = [n for n in got.names if n not in expected.names]
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    wrong = [
        f"{f.name} is {got.field(f.name).type}, expected {f.type}"
        for f in expected
        if f.name in got.names and got.field(f.name).type != f.type
    ]
    if wrong:
        problems.append("wrong types: " + "; ".join(wrong))
    if problems:
        raise ValueError(
            f"data for table {name!r} does not match osora.schemas.SCHEMAS[{name!r}]: "
            + "; ".join(problems)
        )
