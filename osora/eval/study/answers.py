"""The raters' answers: one append-only JSONL file per rater, `answers/<rater>.jsonl`.

Each answer is one line {rater, item, <aspect>: left|same|right, time}, written with a single
write() and fsynced before the server replies, so an acknowledged answer survives a crash or a
SIGKILL. A crash mid-write can leave a torn last line (no trailing newline): readers ignore it
(that answer was never acknowledged, the rater is shown the item again) and the next append cuts
it off first. Re-answering an item appends a new line; the last one wins.
"""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import datetime, timezone
from pathlib import Path

from osora.eval.study.layout import ANSWERS, ASPECTS, CHOICES

RATER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_rater(rater: object) -> str:
    """A rater id is also a file name: letters, digits, '_', '.', '-', at most 64."""
    if not isinstance(rater, str) or not RATER_ID.fullmatch(rater):
        raise ValueError(f"rater id {rater!r} is not valid: use 1-64 letters, digits, '_', '.' "
                         "or '-', starting with a letter or digit (e.g. 'rater-07')")
    return rater


def check_choices(answer: dict) -> dict[str, str]:
    """The three aspects' choices of one answer, each left|same|right."""
    choices = {aspect: answer.get(aspect) for aspect in ASPECTS}
    bad = {a: c for a, c in choices.items() if c not in CHOICES}
    if bad:
        raise ValueError(f"answer needs each of {', '.join(ASPECTS)} as one of "
                         f"{'|'.join(CHOICES)}; got {bad}")
    return choices


class AnswerStore:
    """Durable answers of one study; safe to share between a server's threads."""

    def __init__(self, study_dir: Path):
        self.folder = Path(study_dir) / ANSWERS
        self._lock = threading.Lock()

    def record(self, rater: str, item: str, answer: dict) -> dict:
        """Append one answer and fsync it; returns the stored line."""
        line = {"rater": check_rater(rater), "item": item, **check_choices(answer),
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        path = self.folder / f"{rater}.jsonl"
        with self._lock:
            created = not path.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(path, "a+b") as f:  # O_APPEND: every write lands at the end
                _cut_torn_tail(f)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if created:  # the new file's directory entry must survive a crash too
                _fsync_dir(self.folder)
        return line

    def answers(self, rater: str) -> dict[str, dict]:
        """item → the rater's last answer to it."""
        path = self.folder / f"{check_rater(rater)}.jsonl"
        return {line["item"]: line for line in read_lines(path)} if path.exists() else {}

    def all_answers(self) -> dict[str, dict[str, dict]]:
        """rater → item → last answer, over every rater's file."""
        return {path.stem: self.answers(path.stem) for path in sorted(self.folder.glob("*.jsonl"))}


def read_lines(path: Path) -> list[dict]:
    """The complete lines of an answer file, in order; a torn last line is ignored."""
    *complete, _torn_or_empty = path.read_bytes().split(b"\n")
    lines = []
    for number, raw in enumerate(complete, 1):
        if not raw.strip():
            continue
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number} is not JSON ({err}); only a torn last "
                             "line is expected after a crash: repair or delete that line") from err
    return lines


def _cut_torn_tail(f) -> None:
    """Truncate an unterminated last line (a crash mid-write), so the next line starts clean."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    f.seek(0)
    f.truncate(f.read().rfind(b"\n") + 1)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
