"""params/launch.yaml: how the training stages start their processes (torchrun, osora.launch)."""

from typing import Literal

from pydantic import Field, field_validator

from osora.config.base import Params


class LaunchParams(Params):
    """One torchrun job per training stage (ae_train, dit_stage*): `nodes` × `nproc_per_node`
    ranks, one device each."""

    nodes: int = Field(ge=1, description="machines the job spans; one torchrun agent on each")
    nproc_per_node: int = Field(ge=1, description="ranks per node: its GPUs, or CPU processes")
    # Checked when launching, not here: the endpoint is usually set per job by the job script
    # (OSORA_LAUNCH__RDZV_ENDPOINT), and every other command must load params without it.
    rdzv_endpoint: str | None = Field(
        description="host:port of the c10d rendezvous, on the first node; required when "
        "nodes > 1 (one node: --standalone picks a free local port)")
    rdzv_id: str = Field(min_length=1, description="the job's id, the same on every node "
                         "(e.g. $SLURM_JOB_ID); several jobs may share one endpoint")
    max_restarts: int = Field(ge=0, description="times torchrun restarts the ranks after a "
                              "failure or a hang (osora.train.recovery); they resume from the "
                              "newest checkpoint")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        description="process group backend; auto: nccl for CUDA stages, gloo for CPU ones")
    node_launcher: Literal["none", "srun"] = Field(
        description="with nodes > 1, who starts torchrun on the other nodes: srun (`dvc repro` "
        "inside a SLURM allocation: one agent per node of it) or none (each node runs the "
        "stage's command itself, e.g. the pods of a Kubernetes PyTorchJob)")

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{value!r} is no host:port, e.g. node001:29500")
        return value
