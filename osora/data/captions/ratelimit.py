"""A client-side request rate limit shared by every captioner in a process.

Hosted endpoints enforce requests per minute, often over windows shorter than a minute, so the
limiter spaces request starts evenly (a token bucket holding one token) rather than allowing a
burst. Captioners talking to the same endpoint at the same limit share one limiter, whatever
thread they run in; separate worker processes each have their own (hence the params advice to
divide the endpoint's limit by the number of workers).
"""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """At most `per_minute` request starts per minute, evenly spaced; thread-safe."""

    def __init__(self, per_minute: float):
        if per_minute <= 0:
            raise ValueError(f"requests per minute must be positive, got {per_minute}")
        self.interval_s = 60.0 / per_minute
        self._lock = threading.Lock()
        self._next = 0.0  # time.monotonic() at which the next request may start

    def acquire(self) -> float:
        """Wait for this caller's turn; returns the seconds waited. Each caller reserves its
        slot under the lock and sleeps outside it, so waiting callers are served in order."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval_s
        wait = start - now
        if wait > 0:
            time.sleep(wait)
        return wait

    def hold(self, seconds: float) -> None:
        """Start no request for `seconds` from now (the server asked, e.g. with Retry-After)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


_shared: dict[tuple[str, float], RateLimiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(endpoint: str, per_minute: float) -> RateLimiter:
    """The process's limiter for `endpoint` at `per_minute`, created on first use."""
    with _shared_lock:
        key = (endpoint, float(per_minute))
        if key not in _shared:
            _shared[key] = RateLimiter(per_minute)
        return _shared[key]
