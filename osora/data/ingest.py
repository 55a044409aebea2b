"""Ingest: register raw videos and images in the `videos` table, one row per distinct content.

A source is any of

- a local folder: every file under it (recursively) with one of the video or image extensions;
- a glob, e.g. "data/raw/**/*.mp4" (`**` spans folders): the matching files with a video or
  image extension;
- a manifest, a .csv or .parquet table with a `path` column and optionally a `caption` column:
  exactly the files listed (any extension), relative paths resolved against the manifest's
  folder, s3:// URIs allowed;
- an s3://bucket/prefix (or an s3:// glob): the objects under it with a video or image
  extension, read with the endpoint and credentials of the store settings.

A file whose suffix is one of the image extensions (`ingest.image_extensions`, wherever it was
found, a manifest included) is an image: its row has `kind` "image", width and height probed
(PyAV decodes JPEG, PNG and WebP), num_frames 1 and no fps, duration, bit rate or profile (an
image has no time axis, and a JPEG's "Baseline" is no H.264 profile). Every other file is a
video (`kind` "video"). The suffix decides, not the probe, so what a file is taken for is in
the params, and a damaged image is an unreadable image rather than an unreadable video.

The row id is a hash of the file's bytes, so ingesting the same files again (or a copy under
another name, or in another place) adds nothing; such copies are counted as duplicates. `uri`
keeps where the file is: an absolute local path or its s3:// URI. Objects in S3 are downloaded
to a temporary file to be hashed and probed, then removed. A caption comes from the manifest,
else from a sidecar `<stem>.txt` beside the video. A file that cannot be read as a video (or image)
still gets a row, with `probe_error` saying why; a path that is no file at all (a broken link,
a folder named like a video, a name that is not UTF-8, a file that cannot be opened) gets a
`skipped` row (the `ingest_quarantine` table) with the reason: nothing is dropped silently.

Growing a data set is cheap: a file whose uri is already in the `videos` table, with the same
size and not modified since it was ingested, keeps its row without being read again (`known`).
A row from a table written before `kind` existed is a video (only video suffixes were listed
then), unless its suffix is now an image one: that file is read again as an image.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from osora.media.probe import ProbeError, probe, probe_image
from osora.schemas import schema_of

if TYPE_CHECKING:
    from osora.config.store import StoreSettings

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MANIFEST_SUFFIXES = (".csv", ".parquet")
GLOB_CHARS = "*?["
SOURCE_HELP = (
    "give a folder of videos or images, a glob such as 'data/raw/**/*.mp4' (quoted in the "
    "shell), a .csv or .parquet manifest with a 'path' column, or an s3://bucket/prefix"
)


@dataclass(frozen=True)
class Candidate:
    """One file to ingest: its location (absolute local path or s3:// URI) and the caption a
    manifest gave it (None: look for a sidecar)."""

    uri: str
    caption: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A path a source named that is no file to ingest, and why."""

    path: str
    reason: str


class IngestResult(NamedTuple):
    rows: pa.Table  # `videos` rows, one per distinct content
    duplicates: int  # files skipped because their content was already ingested
    skipped: pa.Table  # `ingest_quarantine` rows: paths that are no readable file, with why
    reused: int  # rows taken from `known` without reading the file again


def ingest(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    extensions: Iterable[str],
    *,
    image_extensions: Iterable[str] = (),
    store_settings: StoreSettings | None = None,
    known: pa.Table | None = None,
) -> IngestResult:
    """Rows for the `videos` table from one source or several (see the module docstring).

    `extensions` are the video suffixes, `image_extensions` the image ones (both listed in
    folders, globs and prefixes; the image ones also mark a manifest's images). `known`: the
    current `videos` table; its rows are reused for unchanged files. The same content named by
    two sources is one row (the first source's). `store_settings.s3` (endpoint, region,
    credentials) is used for s3:// sources; without it the usual AWS environment variables and
    credential chain apply.
    """
    files = Files(store_settings)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    images = frozenset(e.lower() for e in image_extensions)
    listed = [*extensions, *images]
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    for source in sources:
        found, bad = list_source(str(source), listed, files)
        candidates += found
        skipped += bad
    rows, duplicates, reused, unreadable = video_rows(candidates, files, known, images)
    return IngestResult(rows, duplicates, skipped_table(skipped + unreadable), reused)


def kind_of(uri: str, image_extensions: Iterable[str]) -> str:
    """"image" when the file's suffix is an image extension (case-insensitive), else "video"."""
    suffix = posixpath.splitext(uri)[1].lower()
    return "image" if suffix in {e.lower() for e in image_extensions} else "video"


def skipped_table(skipped: list[Skipped]) -> pa.Table:
    """The `ingest_quarantine` rows (id = the path, as no content could be read)."""
    unique = {s.path: s.reason for s in skipped}
    return pa.table(
        {"id": list(unique), "stage": ["ingest"] * len(unique), "reason": list(unique.values()),
         "fingerprint": [None] * len(unique)},
        schema=schema_of("ingest_quarantine"),
    )


# -- listing sources ---------------------------------------------------------------------------


def list_source(
    source: str, extensions: Iterable[str], files: Files
) -> tuple[list[Candidate], list[Skipped]]:
    """The files a source names, in a stable order (folder, glob and prefix listings sorted,
    a manifest in its own order), so the first of several copies is always the one kept; and
    the paths with a video suffix that are no file to read."""
    if "://" in source:
        return [Candidate(uri) for uri in files.list_s3(source, extensions)], []
    path = Path(source).expanduser()
    if path.is_dir():
        found, skipped = find_videos(path, extensions)
        return [Candidate(str(p)) for p in found], skipped
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(path), []
    if path.is_file():
        raise ValueError(
            f"ingest source {source!r} is a file but not a manifest "
            f"({' or '.join(MANIFEST_SUFFIXES)}): {SOURCE_HELP}"
        )
    if any(c in source for c in GLOB_CHARS):
        found, skipped = glob_videos(source, extensions)
        return [Candidate(str(p)) for p in found], skipped
    raise FileNotFoundError(f"ingest source {source!r} does not exist: {SOURCE_HELP}")


def find_videos(folder: Path, extensions: Iterable[str]) -> tuple[list[Path], list[Skipped]]:
    """Video files directly or deeper under `folder`, in a stable order, and the paths with a
    video suffix that are not readable files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder {folder} does not exist; check the stage's input")
    return _video_files(folder.rglob("*"), extensions)


def glob_videos(pattern: str, extensions: Iterable[str]) -> tuple[list[Path], list[Skipped]]:
    """Video files matching a glob (`**` spans folders), in a stable order. A pattern that
    matches nothing is an error: it is far more often a typo than an empty data set."""
    matches = glob.glob(os.path.expanduser(pattern), recursive=True)
    if not matches:
        raise FileNotFoundError(
            f"ingest source {pattern!r} matches no files: check the pattern (use '**' for "
            "subfolders, and quote it so the shell does not expand it)"
        )
    return _video_files(map(Path, matches), extensions)


def _video_files(
    paths: Iterable[Path], extensions: Iterable[str]
) -> tuple[list[Path], list[Skipped]]:
    """Absolute paths of the regular files among `paths` with a video suffix, sorted, and the
    paths with a video suffix that cannot be ingested: a broken symbolic link, something that
    is not a regular file (a folder named x.mp4), a name that is not valid UTF-8 (it cannot be
    stored as a `uri` string; rename it)."""
    suffixes = {e.lower() for e in extensions}
    found, skipped = [], []
    for path in paths:
        if path.suffix.lower() not in suffixes:
            continue
        name = os.fsencode(path).decode("utf-8", errors="backslashreplace")
        if not _utf8(str(path)):
            skipped.append(Skipped(name, "the name is not valid UTF-8: rename the file"))
        elif path.is_symlink() and not path.exists():
            skipped.append(Skipped(name, f"broken symbolic link to {os.readlink(path)}"))
        elif path.is_dir():
            skipped.append(Skipped(name, "a folder named like a video, not a file"))
        elif not path.is_file():
            skipped.append(Skipped(name, "not a regular file (a device, pipe or socket)"))
        else:
            found.append(path.resolve())
    for bad in skipped:
        log.warning("ingest: skipping %s: %s", bad.path, bad.reason)
    return sorted(found), skipped


def read_manifest(path: Path) -> list[Candidate]:
    """Candidates from a .csv/.parquet manifest: its `path` column (relative paths resolve
    against the manifest's folder) and optional `caption` column (empty cells: none)."""
    table = _read_table(path)
    if "path" not in table.column_names:
        raise ValueError(
            f"manifest {path} has no 'path' column (columns: {', '.join(table.column_names)}): "
            "name the column of video paths 'path'"
        )
    if table.num_rows == 0:
        raise ValueError(f"manifest {path} has no rows: list one video per row under 'path'")
    paths = table.column("path").cast(pa.string()).to_pylist()
    captions = (
        table.column("caption").cast(pa.string()).to_pylist()
        if "caption" in table.column_names
        else [None] * len(paths)
    )
    base = path.resolve().parent
    candidates = []
    for row, (entry, caption) in enumerate(zip(paths, captions, strict=True), start=1):
        if entry is None or not entry.strip():
            raise ValueError(f"manifest {path}: row {row} has an empty 'path'; fill or remove it")
        candidates.append(Candidate(_resolve(entry.strip(), base), _text(caption)))
    _check_listed_files_exist(path, candidates)
    return candidates


def _read_table(path: Path) -> pa.Table:
    """A manifest as an Arrow table; `path` and `caption` read as text (so "0001" stays a
    name, not a number)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path)
        text_columns = {"path": pa.string(), "caption": pa.string()}
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=text_columns))
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(
            f"manifest {path} cannot be read as {path.suffix.lower()[1:]}: {err}; a manifest is "
            "a table with a header row and a 'path' column (and optionally 'caption')"
        ) from None


def _resolve(entry: str, base: Path) -> str:
    """A manifest entry as an absolute local path or an s3:// URI."""
    if "://" in entry:
        _check_scheme(entry)
        return entry
    path = Path(entry).expanduser()
    return str((path if path.is_absolute() else base / path).resolve())


def _check_listed_files_exist(manifest: Path, candidates: list[Candidate]) -> None:
    """Fail before any work when local files a manifest lists are missing: the manifest is
    wrong, and a missing file has no content to give it an id."""
    missing = [c.uri for c in candidates if "://" not in c.uri and not Path(c.uri).is_file()]
    if missing:
        raise FileNotFoundError(
            f"manifest {manifest} lists {len(missing)} files that do not exist, e.g. "
            f"{', '.join(missing[:3])}: fix the paths (relative ones are read against the "
            "manifest's folder) or remove the rows"
        )


# -- reading files, local or in S3 -------------------------------------------------------------


class Files:
    """Reads local files and S3 objects alike, with the store's endpoint, credentials,
    timeouts and local file cache (osora.fetch), so one setting serves tables and sources and
    an S3 outage is a StoreUnavailable naming the endpoint, never an unreadable video."""

    def __init__(self, store_settings: StoreSettings | None = None):
        from osora.fetch import FileCache

        self._cache = FileCache.from_settings(store_settings)

    @property
    def s3(self) -> Any:
        """An s3fs filesystem for the configured endpoint and credentials."""
        return self._cache.fs

    def _reaching(self, doing: str):
        from osora.store import s3_unavailable

        return s3_unavailable(self._cache.storage_options, doing)

    def list_s3(self, source: str, extensions: Iterable[str]) -> list[str]:
        """s3:// URIs of the video objects under a prefix (or matching an s3:// glob), sorted.
        A prefix holding no objects at all is an error (S3 cannot tell it from a typo)."""
        _check_scheme(source)
        suffixes = {e.lower() for e in extensions}
        try:
            with self._reaching(f"listing {source}"):
                keys = (
                    self.s3.glob(source) if any(c in source for c in GLOB_CHARS)
                    else self.s3.find(source)
                )
        except (FileNotFoundError, PermissionError) as err:
            raise type(err)(
                f"ingest source {source!r} cannot be listed ({err}): check the bucket and "
                "prefix, and store.s3 (endpoint_url, credentials)"
            ) from None
        if not keys:
            raise FileNotFoundError(
                f"ingest source {source!r} holds no objects: check the bucket and prefix, and "
                "store.s3.endpoint_url"
            )
        return sorted(
            f"s3://{key}" for key in keys if posixpath.splitext(key)[1].lower() in suffixes
        )

    @contextmanager
    def local(self, uri: str) -> Iterator[Path]:
        """A local path with the file's bytes: the file itself, or the cached copy of an S3
        object (FileNotFoundError naming it when there is none)."""
        with self._cache.local_path(uri) as path:
            yield path

    def stat(self, uri: str) -> tuple[int, datetime]:
        """(size in bytes, last modification time in UTC) of a file or S3 object."""
        if "://" not in uri:
            st = os.stat(uri)
            return st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc)
        with self._reaching(f"reading the size of {uri}"):
            info = self.s3.info(uri)
        modified = info.get("LastModified") or datetime.now(timezone.utc)
        return int(info["size"]), modified

    def sidecar_caption(self, uri: str) -> str | None:
        """The caption in <stem>.txt beside the file, if there is one."""
        if "://" not in uri:
            return sidecar_caption(Path(uri))
        try:
            with self._reaching(f"reading the caption beside {uri}"):
                data = self.s3.cat_file(posixpath.splitext(uri)[0] + ".txt")
        except FileNotFoundError:
            return None
        return _text(data.decode("utf-8", errors="replace"))


def sidecar_caption(video: Path) -> str | None:
    """The caption in <video stem>.txt beside the video, if there is one (bytes that are not
    UTF-8 are replaced, not fatal)."""
    sidecar = video.with_suffix(".txt")
    return _text(sidecar.read_text(encoding="utf-8", errors="replace")) if sidecar.is_file() \
        else None


# -- rows --------------------------------------------------------------------------------------


def content_id(path: Path) -> str:
    """128 bits of the SHA-256 of the file's bytes, as hex: stable across names and machines."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def video_rows(
    candidates: Iterable[Candidate], files: Files | None = None, known: pa.Table | None = None,
    image_extensions: Iterable[str] = (),
) -> tuple[pa.Table, int, int, list[Skipped]]:
    """Rows for the `videos` table, the number of files skipped as duplicate content, the
    number of rows reused from `known`, and the files that could not be read. A candidate
    whose suffix is in `image_extensions` is an image (module docstring)."""
    files = files or Files()
    now = datetime.now(timezone.utc)
    images = frozenset(e.lower() for e in image_extensions)
    reusable = _by_uri(known, images)
    rows, seen, duplicates, reused, unreadable = [], set(), 0, 0, []
    for candidate in candidates:
        kind = kind_of(candidate.uri, images)
        try:
            row = _unchanged(reusable.get(candidate.uri), files.stat(candidate.uri))
            if row is not None and row["kind"] == kind:  # the caption may have been edited
                reused += 1
                row = {**row, "caption": candidate.caption
                       or files.sidecar_caption(candidate.uri)}
            else:  # new, changed, or taken for the other kind now (ingest params changed)
                row = _read_row(candidate, files, now, kind)
        except (PermissionError, IsADirectoryError) as err:
            unreadable.append(Skipped(candidate.uri, f"cannot be read: {err.strerror or err}"))
            continue
        except FileNotFoundError as err:  # gone since it was listed, or a manifest's S3 entry
            unreadable.append(Skipped(candidate.uri, f"no such file: {err}"))
            continue
        if row["id"] in seen:
            duplicates += 1
            continue
        seen.add(row["id"])
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema_of("videos")), duplicates, reused, unreadable


def _read_row(candidate: Candidate, files: Files, now: datetime, kind: str) -> dict[str, Any]:
    """A new `videos` row of `kind` ("video" or "image"): the file's bytes hashed and probed."""
    probed = _image_columns if kind == "image" else _probe_columns
    with files.local(candidate.uri) as local:
        row = {
            "id": content_id(local),
            "uri": candidate.uri,
            "kind": kind,
            "size_bytes": local.stat().st_size,
            "ingested_at": now,
            **probed(local, candidate.uri),
        }
    row["caption"] = candidate.caption or files.sidecar_caption(candidate.uri)
    return row


def _by_uri(known: pa.Table | None, image_extensions: frozenset[str]) -> dict[str, dict[str, Any]]:
    """The reusable `known` rows by uri. Rows of a table written before `kind` existed are
    videos (only video suffixes were listed then); those whose suffix is now an image one are
    left out, so the file is read again as an image."""
    if known is None or known.num_rows == 0:
        return {}
    rows = {row["uri"]: row for row in known.to_pylist()}
    if "kind" in known.column_names:
        return rows
    return {uri: {**row, "kind": "video"} for uri, row in rows.items()
            if kind_of(uri, image_extensions) == "video"}


def _unchanged(row: dict[str, Any] | None, stat: tuple[int, datetime]) -> dict[str, Any] | None:
    """The known row when its file has the same size and was not modified after ingestion."""
    if row is None:
        return None
    size, modified = stat
    if row["size_bytes"] != size or row["ingested_at"] is None or modified > row["ingested_at"]:
        return None
    return row


def _probe_columns(local: Path, uri: str) -> dict[str, Any]:
    """The probe's numbers as `videos` columns, or `probe_error` for a file that is no
    readable video."""
    try:
        info = probe(local)
    except ProbeError as err:
        log.info("unreadable video %s: %s", uri, err.reason)
        return {"probe_error": err.reason}
    return {
        "duration_s": info.duration_s, "fps": info.fps, "width": info.width,
        "height": info.height, "rotation": info.rotation, "num_frames": info.num_frames,
        "codec": info.codec,
        "profile": info.profile, "bit_rate": info.bit_rate,
    }


def _image_columns(local: Path, uri: str) -> dict[str, Any]:
    """An image's `videos` columns (one frame; no time axis, so no fps, duration, bit rate or
    profile), or `probe_error` for a file that is no readable still image."""
    try:
        info = probe_image(local)
    except ProbeError as err:
        log.info("unreadable image %s: %s", uri, err.reason)
        return {"probe_error": err.reason}
    return {"width": info.width, "height": info.height, "rotation": info.rotation,
            "num_frames": 1, "codec": info.codec}


# -- small helpers -----------------------------------------------------------------------------


def _check_scheme(uri: str) -> None:
    if not uri.startswith("s3://"):
        scheme = uri.split("://", 1)[0]
        raise ValueError(
            f"ingest source {uri!r}: {scheme}:// is not supported; use a local path or s3://"
        )


def _text(value: str | None) -> str | None:
    """Stripped text, None when empty."""
    return (value.strip() or None) if value is not None else None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
