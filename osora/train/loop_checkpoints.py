"""The training loop's checkpoints (osora.train.checkpoint): resuming from the newest, saving
every `every` steps and at the last (in the background when asked), and finding the one a
recovery goes back to. With no directory nothing is saved and there is nothing to load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from osora.train import checkpoint


class LoopCheckpoints:
    def __init__(self, directory: Path | None, state: dict[str, Any], *, every: int, last: int,
                 background: bool):
        self.directory, self.state, self.every, self.last = directory, state, every, last
        self.saver = (checkpoint.AsyncSaver(directory)
                      if directory is not None and background else None)
        self.first_save: int | None = None  # a step to save after besides (recovery: a way back)

    def resume(self) -> int | None:
        """Load the newest checkpoint into the state: the step it holds; None when none."""
        found = self.newest()
        return None if found is None else checkpoint.load(found, self.state)

    def due(self, done: int) -> bool:
        """Is a checkpoint saved after `done` steps?"""
        return self.directory is not None and (
            done % self.every == 0 or done == self.last or done == self.first_save)

    def save(self, done: int) -> None:
        if self.saver is not None:
            self.saver.save(done, self.state)
        else:
            checkpoint.save(self.directory, done, self.state)

    def newest(self) -> Path | None:
        """The newest complete checkpoint, once a save in flight has finished."""
        self.wait()
        return checkpoint.latest(self.directory) if self.directory is not None else None

    def load(self, path: Path) -> int:
        """Load `path` into the state: the step it holds."""
        return checkpoint.load(path, self.state)

    def wait(self) -> None:
        if self.saver is not None:
            self.saver.wait()
