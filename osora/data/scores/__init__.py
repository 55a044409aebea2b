"""Score filters of the data pyramid (docs/recipe.md §1): one scorer per module, one table each.

Each scorer is an Operator from a `clips` row to one row of its own table, built from its
params section and the store settings:

    scorer = SCORERS["motion"](settings.data.scores.motion, settings.store)
    if (why := scorer.available()) is not None:
        ...  # report it: the scorer writes null scores and the pyramid's filter is off

Scores are raw measurements; thresholds live in the pyramid levels, so changing a threshold
never re-scores.
"""

from osora.data.scores.aesthetic import AestheticScorer
from osora.data.scores.base import ClipScorer
from osora.data.scores.blur import BlurScorer
from osora.data.scores.jitter import JitterScorer
from osora.data.scores.motion import MotionScorer
from osora.data.scores.ocr import OcrScorer

#: Scorer class per `data.scores` section name.
SCORERS: dict[str, type[ClipScorer]] = {
    "aesthetic": AestheticScorer,
    "motion": MotionScorer,
    "blur": BlurScorer,
    "ocr": OcrScorer,
    "jitter": JitterScorer,
}

__all__ = [
    "SCORERS",
    "AestheticScorer",
    "BlurScorer",
    "ClipScorer",
    "JitterScorer",
    "MotionScorer",
    "OcrScorer",
]
