"""What every scorer shares: opening the clip file, null rows when off, quarantine on bad input.

A scorer is an Operator from a `clips` row to one row of its own score table. Subclasses say
which table and columns they fill and implement `score(path, clip)`; this base fetches the clip
(a local file, or a temporary download from S3), names the clip in every error, and — when the
scorer cannot run (no weights configured, a package missing) — writes nulls instead of numbers,
so the pyramid sees the filter as off rather than trusting a made-up score.

A score about change between frames (motion, jitter: `min_frames` 2) means nothing for a clip
of one frame, an image: such a clip gets a null score without its file being read, not a 0,
which would say "a static video". Scores of the picture itself (blur, OCR, aesthetic) measure
an image's one frame.
"""

from __future__ import annotations

import importlib.util
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from osora.data.clip_file import with_clip_file
from osora.data.operator import Operator, Row

if TYPE_CHECKING:
    from pydantic import BaseModel

    from osora.config.store import StoreSettings
    from osora.store import Store


class ClipScorer(Operator):
    """Base of the five scorers. Construct in the parent (cheap, picklable); `setup()` in each
    worker loads models; `process(clip_row)` returns `[score_row]`."""

    #: Short name used in messages and in `osora.data.scores.SCORERS`, e.g. "motion".
    name: ClassVar[str]
    #: The score columns of `output_table` besides "id"; all null when the scorer is off.
    score_columns: ClassVar[tuple[str, ...]]
    #: Importable modules the scorer needs; a missing one turns it off with a reason.
    requires: ClassVar[tuple[str, ...]] = ()
    #: Frames a clip needs for the score to mean anything; a shorter clip (an image has one)
    #: gets null scores (module docstring).
    min_frames: ClassVar[int] = 1

    def __init__(self, params: BaseModel, store: StoreSettings):
        self.params = params
        self._store_settings = store
        self._store: Store | None = None
        self._unavailable: str | None = None
        self._ready = False

    # -- configuration -----------------------------------------------------------------------

    def available(self) -> str | None:
        """None when the scorer can run, else a sentence saying why not and how to fix it.

        Subclasses add their own conditions (configured weights) before calling this.
        """
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return (
                f"{self.name}: {', '.join(missing)} not installed "
                "(pip install 'osora[pipeline]')"
            )
        return None

    def describe(self) -> dict[str, Any]:
        """The params and whether the scorer is off: turning it on (weights configured, a
        package installed) must re-score clips scored as null. The store is left out: where
        a clip is read from does not change its score."""
        return {"params": self.params, "unavailable": self.available()}

    # -- lifecycle ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Open the store and, if the scorer can run, load its models (once per worker)."""
        if self._ready:
            return
        from osora.store import Store

        self._store = Store.from_settings(self._store_settings)
        self._unavailable = self.available()
        if self._unavailable is None:
            self.load()
        self._ready = True

    def load(self) -> None:
        """Load models or check tools; called by setup() only when the scorer can run."""

    def process(self, row: Row) -> list[Row]:
        """One score row for one clip row; OperatorError naming the clip when the file is
        missing or cannot be decoded. Calls setup() first if the runner did not."""
        self.setup()
        clip_id = row["id"]
        if self._unavailable is not None or self._too_few_frames(row):
            return [{"id": clip_id, **dict.fromkeys(self.score_columns)}]
        scores = with_clip_file(self._store, row["uri"], lambda path: self.score(path, row),
                                stage=self.name, clip_id=clip_id, doing="scored")
        return [{"id": clip_id, **scores}]

    def _too_few_frames(self, row: Row) -> bool:
        """Whether the clips row counts fewer frames than the score needs (an unknown count
        is left to `score`, which reads the file)."""
        frames = row.get("num_frames")
        return isinstance(frames, int) and frames < self.min_frames

    @abstractmethod
    def score(self, path: Path, clip: Row) -> dict[str, Any]:
        """The score columns for the clip file at `path` (`clip` is its clips-table row).
        Raise ValueError (or let decoding errors through) for a clip that cannot be scored."""
