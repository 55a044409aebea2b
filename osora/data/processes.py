"""Finding and ending the processes a worker started (ffmpeg and the like), so a stopped stage,
a killed parent or an expired row limit leaves nothing running."""

from __future__ import annotations


def descendants(pid: int | None = None) -> set[int]:
    """Pids of every process below `pid` (this process when None); empty if it is gone."""
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def kill(pids: set[int]) -> None:
    """SIGKILL each of `pids` that still exists."""
    import psutil

    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts until it is reaped)."""
    import psutil

    return psutil.pid_exists(pid)
