"""params/buckets.yaml: per training stage, each bucket's batch size per rank and the
probability an item of it is kept in an epoch (RECIPE §6, Tables 5–6; the batch-size search
writes this file). Buckets are keyed by their frame count (1: images)."""

from pydantic import Field

from osora.config.base import Params


class BucketRuleParams(Params):
    batch_size: int = Field(ge=1, description="clips per rank per step")
    keep: float = Field(ge=0.0, le=1.0, description="probability an item is used per epoch")


class SearchRecord(Params):
    """What a stage's batch sizes were searched for (written by `osora tune buckets`)."""

    date: str
    hardware: str
    model: str
    device: str
    precision: str
    memory_mb: int | None = Field(description="the CPU budget per probe; null on CUDA")
    time_tolerance: float
    reference_bucket: int = Field(description="the highest-token bucket's frame count")
    probes: int = Field(ge=0, description="probes in the studies (resumed ones included)")


class BucketsParams(Params):
    stages: dict[str, dict[int, BucketRuleParams]] = Field(
        description="stage name → bucket frame count → rule")
    searched: dict[str, SearchRecord] = Field(
        default_factory=dict, description="stage → the batch-size search that set its "
        "batch sizes (absent: set by hand)")
