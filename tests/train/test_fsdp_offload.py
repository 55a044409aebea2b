"""FSDP2 CPU offload (`shard_model(offload=True)`, a DiT stage's fsdp_offload): the sharded
parameters, their gradients and the optimizer state live in CPU memory, and training is
unchanged by it.

On 2 gloo CPU ranks offload moves nothing (the compute device is the CPU) but runs FSDP2's
offload path (every parameter flagged, the optimizer stepping on its CPU shards): the loop's
steps with micro-batches equal those without offload bitwise. On a CUDA device (marked gpu)
one rank over a one-rank mesh checks what offload is for: the shards pinned in CPU memory, the
gradients and Adam's moments there, the loop's gradient norm brought back to the GPU for the
metrics, and the parameters those of the same run without offload. The config rule: a stage
with fsdp_offload needs several ranks.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from free_port import free_port, join_gloo
from mmdit_cases import STEPS, adamw, rank_batch, settings, tiny_mmdit
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule

from osora.models.mmdit import MMDIT_TINY
from osora.train.dit_setup import MMDIT_SHARD_UNITS
from osora.train.flow_objective import FlowObjective
from osora.train.loop import train
from osora.train.parallel import (
    close_distributed,
    init_distributed,
    offload_backend,
    shard_model,
)
from osora.train.prefetch import map_tensors

WORLD = 2


def fsdp_params(model: nn.Module) -> list:
    return [p for m in model.modules() if isinstance(m, FSDPModule)
            for g in m._get_fsdp_state()._fsdp_param_groups for p in g.fsdp_params]


def trained(offload: bool, batch_for, device: str, mesh=None) -> tuple[nn.Module, FlowObjective,
                                                                       dict]:
    """The tiny MMDiT (float32) sharded with or without offload, after STEPS loop steps of
    two micro-batches each."""
    model = shard_model(tiny_mmdit().to(device), MMDIT_SHARD_UNITS, mesh=mesh, offload=offload)
    objective = FlowObjective(model, adamw(model), patch_size=MMDIT_TINY.patch_size,
                              sigma_min=1e-5, micro_batches=2)
    logged = {}
    train(objective, batch_for, settings(STEPS, device=device),
          rank=torch.distributed.get_rank(), log=lambda m, s: logged.__setitem__(s, m))
    return model, objective, logged


def local_devices(model: nn.Module, optimizer: torch.optim.Optimizer) -> set[str]:
    """The device types of the model's parameter shards, their gradients and Adam's moments."""
    tensors = [t for p in model.parameters() for t in (p, p.grad)]
    tensors += [v for state in optimizer.state.values() for k, v in state.items()
                if k in ("exp_avg", "exp_avg_sq")]
    return {t.to_local().device.type for t in tensors}


def _cpu_worker(rank: int, port: int) -> None:
    join_gloo(rank, WORLD, port)
    try:
        def batch_for(step):
            return map_tensors(rank_batch(step, rank), lambda x: x.float() if
                               x.is_floating_point() else x)

        plain, _, plain_logged = trained(False, batch_for, "cpu")
        model, objective, logged = trained(True, batch_for, "cpu")
        assert all(p.offload_to_cpu for p in fsdp_params(model))
        assert not any(p.offload_to_cpu for p in fsdp_params(plain))
        assert local_devices(model, objective.optimizer) == {"cpu"}
        assert len(objective.optimizer.state) == len(list(model.parameters()))
        for (name, a), b in zip(model.named_parameters(), plain.parameters()):
            torch.testing.assert_close(a.full_tensor(), b.full_tensor(), rtol=0, atol=0,
                                       msg=name)
        if rank == 0:
            assert logged[STEPS]["dit/loss"] == plain_logged[STEPS]["dit/loss"]
            assert logged[STEPS]["dit/grad_norm"] == plain_logged[STEPS]["dit/grad_norm"]
    finally:
        close_distributed()


@pytest.mark.slow  # ~30 s on 2 loaded cores
def test_offload_on_two_cpu_ranks_trains_as_without_it():
    mp.spawn(_cpu_worker, args=(free_port(),), nprocs=WORLD, join=True)


def _cuda_worker(rank: int, port: int) -> None:
    import os

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    init_distributed(offload_backend("nccl"))  # gloo joins for the CPU gradient norm
    try:
        device = "cuda:0"

        def batch_for(step):
            return map_tensors(rank_batch(step, 0), lambda x: (x.float() if
                               x.is_floating_point() else x).to(device))

        mesh = init_device_mesh("cuda", (1,))
        plain, plain_objective, plain_logged = trained(False, batch_for, device, mesh)
        model, objective, logged = trained(True, batch_for, device, mesh)
        assert local_devices(plain, plain_objective.optimizer) == {"cuda"}
        assert local_devices(model, objective.optimizer) == {"cpu"}
        assert all(p.to_local().is_pinned() for p in model.parameters())
        for step in range(1, STEPS + 1):  # logged: the norm reached the GPU's all-reduce
            assert logged[step]["dit/grad_norm"] == pytest.approx(
                plain_logged[step]["dit/grad_norm"], rel=1e-5)
        for (name, a), b in zip(model.named_parameters(), plain.parameters()):
            torch.testing.assert_close(a.full_tensor().to(device), b.full_tensor(), rtol=1e-5,
                                       atol=1e-6, msg=name)  # Adam on the CPU, not the GPU
    finally:
        close_distributed()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_keeps_shards_gradients_and_adam_in_pinned_cpu_memory_on_cuda():
    mp.spawn(_cuda_worker, args=(free_port(),), nprocs=1, join=True)


def test_offload_backend_adds_gloo_for_cpu_tensors():
    assert offload_backend("nccl") == "cpu:gloo,cuda:nccl"
    assert offload_backend("gloo") == "gloo"
    assert offload_backend("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"
