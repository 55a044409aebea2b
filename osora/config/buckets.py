"""params/buckets.yaml: per training stage, each bucket's batch size per rank and the
probability an item of it is kept in an epoch (docs/recipe.md §6, Tables 5–6; the batch-size search
writes this file). Buckets are keyed by their frame count (1: images)."""

from pydantic import Field

from osora.config.base import Params


class BucketRuleParams(Params):
    batch_size: int = Field(ge=1, description="clips per rank per step")
    keep: float = Field(ge=0.0, le=1.0, description="probability an item is used per epoch")


class ProbedRun(Params):
    """How the search's probes ran, as their ranks reported it (osora.tune.probe_worker)."""

    world_size: int = Field(ge=1, description="ranks of each probe's torchrun job")
    nodes: int = Field(ge=1)
    context_parallel: int = Field(ge=1, description="ranks sharing one sample's sequence")
    fsdp: bool = Field(description="the model's blocks FSDP2-sharded over the ranks")
    checkpointing: str = Field(description="the stage's: checkpointed double/single blocks "
                               "(-1: all), +offload")
    depth: str = Field(description="double+single blocks of the probed model")
    full_depth: bool = Field(description="false: params/tune.yaml reduced the depth")
    device: str = Field(description="rank 0's device")


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
    probed: ProbedRun | None = Field(default=None, description="how the probes ran; null: "
                                     "searched before probes reported it")


class BucketsParams(Params):
    stages: dict[str, dict[int, BucketRuleParams]] = Field(
        description="stage name → bucket frame count → rule")
    searched: dict[str, SearchRecord] = Field(
        default_factory=dict, description="stage → the batch-size search that set its "
        "batch sizes (absent: set by hand)")
