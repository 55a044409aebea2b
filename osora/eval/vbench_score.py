"""VBench's summary scores of its 16 dimensions (docs/recipe.md §7), as VBench's leaderboard
computes them (scripts/constant.py and cal_final_score.py of Vchitect/VBench):

- each dimension's raw score is min–max normalised with VBench's constants and weighted
  (dynamic degree 0.5, every other dimension 1);
- Quality = the weighted mean over the 7 quality dimensions, Semantic = over the 9 semantic
  ones (sum of weighted normalised scores / sum of weights);
- Total = (4·Quality + 1·Semantic) / 5.

One departure, on purpose: VBench's script fills a missing dimension with 0. Here a dimension
without a result is *not evaluated* — listed, never filled in — and a summary that needs it is
None. Scores are fractions in [0, 1] (VBench's JSON), not percentages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Dimension:
    low: float  # VBench's normalisation Min
    high: float  # … and Max
    weight: float
    quality: bool  # Quality (True) or Semantic (False)


# VBench's constants (scripts/constant.py, NORMALIZE_DIC and DIM_WEIGHT), keyed by VBench's
# dimension names as its result files spell them (underscores).
DIMENSIONS: dict[str, Dimension] = {
    "subject_consistency": Dimension(0.1462, 1.0, 1.0, True),
    "background_consistency": Dimension(0.2615, 1.0, 1.0, True),
    "temporal_flickering": Dimension(0.6293, 1.0, 1.0, True),
    "motion_smoothness": Dimension(0.706, 0.9975, 1.0, True),
    "dynamic_degree": Dimension(0.0, 1.0, 0.5, True),
    "aesthetic_quality": Dimension(0.0, 1.0, 1.0, True),
    "imaging_quality": Dimension(0.0, 1.0, 1.0, True),
    "object_class": Dimension(0.0, 1.0, 1.0, False),
    "multiple_objects": Dimension(0.0, 1.0, 1.0, False),
    "human_action": Dimension(0.0, 1.0, 1.0, False),
    "color": Dimension(0.0, 1.0, 1.0, False),
    "spatial_relationship": Dimension(0.0, 1.0, 1.0, False),
    "scene": Dimension(0.0, 0.8222, 1.0, False),
    "appearance_style": Dimension(0.0009, 0.2855, 1.0, False),
    "temporal_style": Dimension(0.0, 0.364, 1.0, False),
    "overall_consistency": Dimension(0.0, 0.364, 1.0, False),
}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0


@dataclass(frozen=True)
class VBenchSummary:
    normalized: dict[str, float]  # evaluated dimension → weighted normalised score
    quality: float | None  # None when a quality dimension was not evaluated
    semantic: float | None
    total: float | None
    not_evaluated: tuple[str, ...]  # dimensions without a result, in VBench's order


def summarize(scores: Mapping[str, float]) -> VBenchSummary:
    """VBench's Quality, Semantic and Total from per-dimension raw scores (module doc). Keys
    may use spaces or underscores; an unknown dimension is an error naming the known ones."""
    raw = {k.replace(" ", "_"): float(v) for k, v in scores.items()}
    unknown = sorted(set(raw) - set(DIMENSIONS))
    if unknown:
        raise ValueError(f"unknown VBench dimensions {unknown}; known: {', '.join(DIMENSIONS)}")
    normalized = {name: (raw[name] - d.low) / (d.high - d.low) * d.weight
                  for name, d in DIMENSIONS.items() if name in raw}
    missing = tuple(name for name in DIMENSIONS if name not in raw)

    def group(quality: bool) -> float | None:
        names = [n for n, d in DIMENSIONS.items() if d.quality == quality]
        if any(n in missing for n in names):
            return None
        return sum(normalized[n] for n in names) / sum(DIMENSIONS[n].weight for n in names)

    quality, semantic = group(True), group(False)
    total = None
    if quality is not None and semantic is not None:
        total = ((QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic)
                 / (QUALITY_WEIGHT + SEMANTIC_WEIGHT))
    return VBenchSummary(normalized, quality, semantic, total, missing)
