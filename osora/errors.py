"""Errors that say the environment is broken, not the data: shared by every layer.

A missing binary, a refused credential, an unreachable store or endpoint, a full disk: no row
of input is at fault, so the data runner stops the stage instead of quarantining rows
(osora.data.runner), and a retry may help when the fault is transient.
"""

from __future__ import annotations

import errno

# OSError numbers that describe the machine, not the file being read.
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EROFS}
)


class EnvironmentFault(RuntimeError):
    """Not the row's fault: a missing tool, a refused credential, an unreachable service, a
    full disk. `transient` faults (timeouts, connection failures) are worth retrying."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def environment_cause(err: BaseException) -> BaseException | None:
    """The environment fault behind `err` (itself or a cause/context in its chain), or None.

    Besides EnvironmentFault, an OSError with a machine errno (disk full, too many open files)
    and a ConnectionError count: neither says anything about the row being processed."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (EnvironmentFault, ConnectionError)):
            return current
        if isinstance(current, OSError) and current.errno in _ENVIRONMENT_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def is_transient(fault: BaseException) -> bool:
    """Whether a retry may succeed: flagged transient faults and dropped connections."""
    if isinstance(fault, EnvironmentFault):
        return fault.transient
    return isinstance(fault, ConnectionError)
