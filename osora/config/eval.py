"""params/eval.yaml: evaluation beyond the sample stage's prompt following (docs/recipe.md §7) — the
prompt-following protocol of dit_sample and the VBench stage (osora.eval.vbench)."""

from pydantic import Field, field_validator

from osora.config.base import Params


class FollowParams(Params):
    """dit_sample's protocol (osora.eval.sample_eval): held-out and training prompts, seeds."""

    seeds: int = Field(ge=1, description="videos per prompt and motion score (seeds "
                       "sample.seed, +1, ...): the intervals narrow as it grows")
    train_prompts: int = Field(ge=0, description="training captions scored beside the "
                               "held-out prompts, evenly spread over them")
    motion_scores: list[int] | None = Field(
        description="motion scores each held-out prompt is asked at; null: every score the "
        "training captions state")


class VBenchParams(Params):
    prompts: str = Field(min_length=1, description="VBench's prompt suite: a file in the "
                         "format of VBench_full_info.json (prompt_en, dimension); relative "
                         "paths from the project root")
    dimensions: list[str] = Field(description="the dimensions to evaluate (VBench's names)")
    max_prompts_per_dimension: int | None = Field(ge=1, description="null: the whole suite; "
                                                  "else the first N prompts of each dimension")
    videos_per_prompt: int = Field(ge=1, description="VBench's standard protocol: 5")
    seed: int = Field(ge=0, description="video i of a prompt uses seed + i (in its sidecar)")
    executable: str | None = Field(description="VBench in its own environment, e.g. "
                                   "/opt/vbench/.venv/bin/vbench; null: only the dimensions "
                                   "osora computes itself")
    weights: dict[str, str | None] = Field(description="local paths of VBench's models "
                                           "(osora/eval/vbench_weights.py CACHE_PATHS); a "
                                           "dimension runs only when all it needs are given")
    timeout_s: float = Field(gt=0, description="per dimension run of VBench")

    @field_validator("dimensions")
    @classmethod
    def _known_dimensions(cls, names: list[str]) -> list[str]:
        from osora.eval.vbench_score import DIMENSIONS

        unknown = [n for n in names if n not in DIMENSIONS]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"dimensions: {unknown or 'a repeated name'}; each once, from "
                             f"{', '.join(DIMENSIONS)}")
        return names

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, weights: dict[str, str | None]) -> dict[str, str | None]:
        from osora.eval.vbench_weights import CACHE_PATHS

        unknown = sorted(set(weights) - set(CACHE_PATHS))
        if unknown:
            raise ValueError(f"weights: unknown {unknown}; known: {', '.join(CACHE_PATHS)}")
        return weights


class EvalParams(Params):
    follow: FollowParams
    vbench: VBenchParams
