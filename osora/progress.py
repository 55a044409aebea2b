"""How far a long stage is: a tqdm bar on a terminal, plain periodic lines in logs.

    with progress_bar(steps, "ae_train") as bar:
        bar.update(1, loss=0.0712)

Where the stream is not a terminal (DVC logs, CI, a file) a bar's carriage returns would pile
up, so it writes a line at most every `interval_s` seconds and one at the end:

    ae_train: step 300/1100 (27%) loss 0.0712 · 2.1 step/s · ETA 6m20s

Imports nothing heavy (tqdm only when a bar is shown): the training loop, which must import with
torch alone, uses `Progress`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """A progress display: `update(n, **postfix)` advances it by n steps (negative goes back)
    and shows the postfix values (loss=0.07); `close()` ends it. This one shows nothing."""

    def update(self, n: int = 1, **postfix: float | str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, desc: str, unit: str = "step", enabled: bool = True,
                 initial: int = 0, stream: TextIO | None = None, interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> Progress:
    """A display of `total` units starting at `initial` (a resumed run's step) on `stream`
    (default: sys.stderr at the time of the call); a silent one when not `enabled`."""
    if not enabled:
        return Progress()
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return _Bar(total, desc, unit, initial, stream)
    return _Lines(total, desc, unit, initial, stream, interval_s, clock)


class _Bar(Progress):
    """tqdm's bar, which shows the rate and the time left itself."""

    def __init__(self, total: int, desc: str, unit: str, initial: int, stream: TextIO):
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream)

    def update(self, n: int = 1, **postfix: float | str) -> None:
        if postfix:
            self._bar.set_postfix({k: _value(v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


class _Lines(Progress):
    """A plain line every `interval_s` seconds of `clock` (and at close); the rate counts the
    units done since the start, so a resumed run's ETA is its own."""

    def __init__(self, total: int, desc: str, unit: str, initial: int, stream: TextIO,
                 interval_s: float, clock: Callable[[], float]):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.interval_s, self.clock = interval_s, clock
        self.n = self.initial = initial
        self.postfix: dict[str, float | str] = {}
        self.started = self.written = clock()
        self.closed = False
        if initial:
            self._write(f"{desc}: resuming at {unit} {initial}/{total}")

    def update(self, n: int = 1, **postfix: float | str) -> None:
        self.n += n
        self.postfix.update(postfix)
        now = self.clock()
        if now - self.written >= self.interval_s:
            self.written = now
            self._write(self._line(now, final=False))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(self._line(self.clock(), final=True))

    def _line(self, now: float, final: bool) -> str:
        elapsed = now - self.started
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        percent = 100 * self.n // self.total if self.total else 100
        head = f"{self.desc}: {self.unit} {self.n}/{self.total} ({percent}%)"
        parts = ["".join([head, *(f" {k} {_value(v)}" for k, v in self.postfix.items())])]
        if rate > 0:
            parts.append(f"{rate:.1f} {self.unit}/s" if rate >= 1
                         else f"{1 / rate:.1f} s/{self.unit}")
        if final:
            parts.append(f"took {duration(elapsed)}")
        elif rate > 0:
            parts.append(f"ETA {duration(max(0, self.total - self.n) / rate)}")
        return " · ".join(parts)

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def duration(seconds: float) -> str:
    """45s, 6m20s, 2h05m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _value(value: float | str) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
