"""params/tune.yaml: the per-bucket batch-size search (osora.tune), whose result is written
into params/buckets.yaml. Each probe runs as the tuned stage trains: params/launch.yaml's
ranks, the stage's context parallelism and checkpointing (params/dit.yaml)."""

from typing import Literal

from pydantic import Field

from osora.config.base import Params


class TuneParams(Params):
    stage: str = Field(min_length=1, description="the params/buckets.yaml stage to fill; its "
                       "latent set (params/dit.yaml train.stages.*.latents) gives the shapes")
    depth_double: int | None = Field(ge=0, description="double blocks of the probed model; "
                                     "null: params/dit.yaml model's (full depth, the run "
                                     "tuned); a number: a reduced-depth probe, recorded as "
                                     "such in params/buckets.yaml searched")
    depth_single: int | None = Field(ge=0, description="single blocks; null: the model's")
    device: Literal["cpu", "cuda"]
    precision: Literal["fp32", "bf16"]
    memory_mb: int = Field(ge=16, description="CPU: the memory each probe rank may use "
                           "beyond Python + torch (enforced); CUDA uses the device's memory")
    max_batch: int = Field(ge=1, description="the largest batch size tried per bucket")
    time_tolerance: float = Field(ge=1.0, description="a bucket's step, forward and backward "
                                  "may take this × the reference batch's (paper: 1)")
    steps: int = Field(ge=1, description="timed steps per probe after one warm-up (median)")
    probe_timeout_s: float = Field(gt=0, description="a probe running longer is infeasible")
    storage: str | None = Field(description="Optuna storage: null: sqlite in optuna/tune.db; "
                                "else an RDB URL (e.g. postgresql://…)")
