"""Using a clip's file inside an operator: fetched from the store (local or s3://), and a
missing or undecodable file turned into an OperatorError naming the clip, so the runner
quarantines that row and the stage goes on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from osora.data.operator import OperatorError

if TYPE_CHECKING:
    from osora.store import Store

T = TypeVar("T")


def bad_clip_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "this clip file is bad", not "this code is broken": unreadable or
    truncated files (PyAV, ffmpeg), too few frames, missing files."""
    import av

    from osora.media.ffmpeg import FFmpegError

    return (OSError, ValueError, av.error.FFmpegError, FFmpegError)


@contextmanager
def existing_file(
    local_path: Callable[[str], AbstractContextManager[Path]], uri: str, missing: str
) -> Iterator[Path]:
    """The local path `local_path(uri)` gives (a Store's or a FileCache's: s3:// fetched), or
    OperatorError(`missing`) when there is no file at `uri`: a row naming a file that is gone
    is that row's fault."""
    with ExitStack() as stack:
        try:
            path = stack.enter_context(local_path(uri))
        except FileNotFoundError:
            path = None
        if path is None or not path.is_file():
            raise OperatorError(missing)
        yield path


def with_clip_file(store: Store, uri: str, use: Callable[[Path], T], *, stage: str,
                   clip_id: str, doing: str) -> T:
    """`use(path)` on the clip file at `uri`; "<stage>: clip <id>: no file at <uri>" or
    "<stage>: clip <id> (<uri>) cannot be <doing>: <error>" as an OperatorError."""
    with existing_file(store.local_path, uri, f"{stage}: clip {clip_id}: no file at {uri}") \
            as path:
        try:
            return use(path)
        except bad_clip_errors() as err:
            raise OperatorError(f"{stage}: clip {clip_id} ({uri}) cannot be {doing}: {err}") \
                from err
