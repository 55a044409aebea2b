"""Data parallelism for any model: process group setup, FSDP2 sharding, metrics over ranks.

The model files know nothing of parallelism: `shard_model` applies FSDP2 (`fully_shard`) to the
submodules of the classes it is given (the transformer / conv blocks) and then to the root, so
each block's parameters are all-gathered just before it runs and freed after.

Backend is a setting, never an assumption: gloo on CPU (tests, CI), nccl on CUDA. FSDP2 on gloo
needs one extra switch, forced SUM reductions (see `_force_sum_on_gloo`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
    register_fsdp_forward_method,
)

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job (0, 1, 0 when not distributed)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> Dist:
    """Join the job torchrun started, or run alone.

    With torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) this
    initialises the default process group with `backend` (None: nccl when CUDA is available,
    else gloo) and, for nccl, binds the process to GPU `LOCAL_RANK`. Without it, no group is
    created and the process is rank 0 of 1. Calling it again returns the existing group's place.
    """
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
    if missing:
        if len(missing) < len(_TORCHRUN_ENV):
            raise RuntimeError(
                f"init_distributed: torchrun environment is incomplete, {missing} unset; "
                f"launch with `torchrun` (python -m torch.distributed.run) or set all of "
                f"{_TORCHRUN_ENV}"
            )
        return Dist(0, 1, 0)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = _env_int("LOCAL_RANK", 0)
    if "nccl" in backend:  # "nccl", or e.g. "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def close_distributed() -> None:
    """Destroy the default process group if there is one (end of a run, or of a test worker)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class ContextLayout:
    """A job's ranks as data-parallel replicas × context-parallel groups of `cp` ranks.

    Consecutive ranks form a group (rank r is in group r // cp), so on a node a group's
    all-to-alls stay on the fast links. The ranks of a group share one sample's sequence: they
    read the same batch and draw the same noise (`dp_rank` seeds both), and each one's
    gradients cover its share of the tokens, so gradients are summed over a group and averaged
    over the `dp` replicas (FSDP2's divide factor dp, not the world size).
    """

    cp: int
    dp: int
    dp_rank: int
    group: dist.ProcessGroup | None  # the context-parallel group; None when cp == 1


def context_layout(job: Dist, cp: int) -> ContextLayout:
    """Split the job into `cp`-rank context-parallel groups (a collective when cp > 1)."""
    if cp < 1 or job.world_size % cp:
        raise ValueError(f"context_parallel {cp} must divide the job's {job.world_size} "
                         f"ranks: launch a multiple of {cp} processes (torchrun "
                         "--nproc-per-node) or change params/dit.yaml "
                         "train.stages.*.context_parallel")
    dp = job.world_size // cp
    if cp == 1:
        return ContextLayout(1, dp, job.rank, None)
    device_type = "cuda" if "nccl" in str(dist.get_backend()) else "cpu"
    mesh = init_device_mesh(device_type, (dp, cp), mesh_dim_names=("dp", "cp"))
    return ContextLayout(cp, dp, job.rank // cp, mesh.get_group("cp"))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard_model(
    model: nn.Module,
    units: tuple[type[nn.Module], ...],
    *,
    mesh: DeviceMesh | None = None,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    forward_methods: tuple[str, ...] = (),
    gradient_divide_factor: float | None = None,
    offload: bool = False,
) -> nn.Module:
    """Shard `model` with FSDP2: every submodule that is an instance of `units`, then the root.

    `forward_methods` names the root's entry points other than `forward` (an AE's `encode` and
    `decode`): FSDP2 gathers the root's parameters only around registered methods.

    Each unit is one all-gather / reduce-scatter group, so peak memory is the sharded model plus
    one unsharded unit. `param_dtype` / `reduce_dtype` set FSDP2 mixed precision (compute and
    gradient-reduction dtypes; the sharded master weights keep their own dtype). `mesh` defaults
    to a 1-D mesh over all ranks; without a mesh and with one process this is a no-op, so a
    single-process run keeps plain tensors. The module is sharded in place and returned (its
    parameters become DTensors; build the optimizer afterwards). Gradients are summed over the
    mesh and divided by its size, or by `gradient_divide_factor` (context parallelism: the
    data-parallel degree, see ContextLayout).

    `offload`: FSDP2 CPU offload. The sharded parameters, their gradients and so the optimizer
    state live in CPU memory (pinned when computing on CUDA); each unit's shard is copied to the
    device just before its all-gather, and the reduce-scattered gradient shard back to the CPU,
    where the optimizer steps. The gradient norm of clipping is then a CPU tensor reduced over
    ranks on the CPU, as is a full state dict: the process group needs a CPU backend
    (`offload_backend`).
    """
    if mesh is None:
        if not _is_distributed():
            return model
        device_type = "cuda" if "nccl" in str(dist.get_backend()) else "cpu"
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    offload_policy = (CPUOffloadPolicy(pin_memory=mesh.device_type == "cuda") if offload
                      else OffloadPolicy())
    # Children before parents: a parent's fully_shard takes only the parameters that no sharded
    # child owns. Reversed pre-order visits every module after all its descendants.
    for module in reversed(list(model.modules())):
        if module is not model and isinstance(module, units):
            fully_shard(
                module,
                mesh=mesh,
                mp_policy=mp_policy,
                reshard_after_forward=reshard_after_forward,
                offload_policy=offload_policy,
            )
    # The root's parameters are needed again at once by backward: keep them unsharded.
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=False,
                offload_policy=offload_policy)
    for name in forward_methods:
        register_fsdp_forward_method(model, name)
    if _uses_gloo(mesh):
        _force_sum_on_gloo(model)
    if gradient_divide_factor is not None:
        for unit in model.modules():
            if isinstance(unit, FSDPModule):
                unit.set_gradient_divide_factor(gradient_divide_factor)
    return model


def offload_backend(backend: str) -> str:
    """The process-group backend of a job with FSDP2 CPU offload (`shard_model(offload=True)`):
    `backend` with gloo added for CPU tensors when it has none, e.g. "nccl" →
    "cpu:gloo,cuda:nccl" (as torchtitan does for its CPU offload)."""
    if "gloo" in backend:
        return backend
    return f"cpu:gloo,{backend if ':' in backend else f'cuda:{backend}'}"


def _uses_gloo(mesh: DeviceMesh) -> bool:
    """Does any of the mesh's process groups run on gloo ("gloo" or e.g. "cpu:gloo,cuda:nccl")?"""
    return any("gloo" in str(dist.get_backend(group)) for group in mesh.get_all_groups())


def _force_sum_on_gloo(model: nn.Module) -> None:
    """Make every FSDP2 unit reduce gradients with ReduceOp.SUM and divide by the world size
    itself.

    By default FSDP2 reduce-scatters fp32/bf16 gradients with ReduceOp.AVG, or PREMUL_SUM when
    a custom divide factor is set. Gloo has no PREMUL_SUM (it raises), and its AVG, added in
    torch 2.7, was silently wrong in some releases (reduce-scatter returned the sum, not the
    mean: pytorch/pytorch#162338; correct on 2.13). SUM plus FSDP's own post-division is
    right on every release. `FSDPModule.set_force_sum_reduction_for_comms` came with
    pytorch/pytorch#155915 (June 2025, torch 2.8); it sets only the module's own groups, hence
    the loop over all units.
    """
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not hasattr(FSDPModule, "set_force_sum_reduction_for_comms"):
        raise RuntimeError(
            f"torch {torch.__version__} lacks FSDPModule.set_force_sum_reduction_for_comms "
            "(added in 2.8), needed for correct FSDP2 gradients on gloo; install torch>=2.11"
        )
    for unit in units:
        unit.set_force_sum_reduction_for_comms(True)


def max_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """`values` with each element replaced by its maximum over all ranks (in place; identity
    when not distributed). The collective runs where `values` lies: pass tensors on the
    compute device, since nccl takes no CPU tensors."""
    if _is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The elementwise mean of `values` over all ranks, a new tensor on `values`' device (the
    compute device, as for `max_over_ranks`); `values` itself when not distributed. Every rank
    passes the same shape. Sums then divides, never ReduceOp.AVG, for the same gloo reason as
    `_force_sum_on_gloo`."""
    if not _is_distributed():
        return values
    summed = values.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed / dist.get_world_size()
