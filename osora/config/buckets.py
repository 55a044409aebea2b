"""params/buckets.yaml: per training stage, each bucket's batch size per rank and the
probability an item of it is kept in an epoch (RECIPE §6, Tables 5–6; the batch-size search
writes this file). Buckets are keyed by their frame count (1: images)."""

from pydantic import Field

from osora.config.base import Params


class BucketRuleParams(Params):
    batch_size: int = Field(ge=1, description="clips per rank per step")
    keep: float = Field(ge=0.0, le=1.0, description="probability an item is used per epoch")


class BucketsParams(Params):
    stages: dict[str, dict[int, BucketRuleParams]] = Field(
        description="stage name → bucket frame count → rule")
