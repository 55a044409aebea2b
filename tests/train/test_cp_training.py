"""Context parallelism inside DiT training, on real gloo processes: the loop, FSDP2 over every
rank and the flow objective with the sequence split over each group of ranks train exactly the
model that the same run without context parallelism trains (float64, 3 AdamW steps, I2V
conditions so the loss mask is exercised, a sequence of 37 tokens that a group of 2 shares
unequally).

- 2 ranks as one group of 2 (dp 1 × cp 2) against one plain process: both see the whole
  global batch and draw the noise of data rank 0; with Ulysses and with ring attention.
- 4 ranks as 2 replicas × groups of 2 against 2 ranks of plain FSDP2 (dp 2 × cp 1): each
  replica trains on its half of the batch, drawing the noise of its data rank.

A group whose gradients were averaged over the world instead of summed over the group, or
whose ranks drew different noise, would end with other weights. Every collective of these runs
(the loop's, FSDP2's, the attention's) must get tensors on the model's device
(collective_devices).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from collective_devices import collectives_on
from free_port import free_port, join_gloo

from osora.diffusion.conditioning import build_cond, condition_mask
from osora.models.mmdit import MMDIT_TINY, MMDiT
from osora.train.checkpoint import full_state_dict
from osora.train.context_parallel import parallelize_attention
from osora.train.dit_setup import MMDIT_SHARD_UNITS
from osora.train.flow_objective import FlowObjective, LatentBatch
from osora.train.loop import LoopSettings, train
from osora.train.parallel import (
    Dist,
    close_distributed,
    context_layout,
    shard_model,
)

# 5 text + 2·4·4 video tokens = 37: a group of 2 shares it unequally, 19 + 18 tokens
GLOBAL_BATCH, STEPS, N_TEXT = 4, 3, 5
CONFIG = dataclasses.replace(MMDIT_TINY, depth_double=2)


def global_batch(step: int) -> LatentBatch:
    """The step's whole batch (float64), the same in every process."""
    g = torch.Generator().manual_seed(100 + step)
    latent = torch.randn(GLOBAL_BATCH, 16, 2, 4, 4, generator=g, dtype=torch.float64)
    kinds = ["i2v_head", "t2v", "i2v_tail", "t2v"]
    cond = torch.cat([build_cond(latent[i:i + 1], condition_mask(kind, 2))
                      for i, kind in enumerate(kinds)])  # (B, 17, T, H, W)
    text = torch.randn(GLOBAL_BATCH, N_TEXT, CONFIG.text_dim, generator=g, dtype=torch.float64)
    pooled = torch.randn(GLOBAL_BATCH, CONFIG.vec_dim, generator=g, dtype=torch.float64)
    mask = torch.ones(GLOBAL_BATCH, N_TEXT, dtype=torch.bool)
    mask[1, 4:] = False
    return LatentBatch(latent, text, pooled, mask, cond)


def replica_batch(step: int, dp: int, dp_rank: int) -> LatentBatch:
    """This replica's share of the step's batch."""
    whole = global_batch(step)
    share = slice(dp_rank * GLOBAL_BATCH // dp, (dp_rank + 1) * GLOBAL_BATCH // dp)
    return LatentBatch(*(x[share] for x in (whole.latent, whole.text, whole.pooled,
                                            whole.text_mask, whole.cond)))


def run(job: Dist, cp: int, attention: str, out: Path) -> None:
    """Train STEPS steps; rank 0 saves the final weights to `out`."""
    context = context_layout(job, cp)
    torch.manual_seed(0)
    model = MMDiT(CONFIG).double()
    if cp > 1:
        parallelize_attention(model, context.group, attention)
    if job.world_size > 1:
        model = shard_model(model, MMDIT_SHARD_UNITS,
                            forward_methods=("embed",) if cp > 1 else (),
                            gradient_divide_factor=context.dp if cp > 1 else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-15)
    objective = FlowObjective(model, optimizer, patch_size=1, sigma_min=1e-5, context=context)
    settings = LoopSettings(steps=STEPS, grad_clip=1.0, log_every=1, checkpoint_every=100)
    with collectives_on(next(model.parameters()).device) as calls:
        train(objective, lambda step: replica_batch(step, context.dp, context.dp_rank), settings,
              rank=job.rank, data_rank=context.dp_rank)
    if cp > 1:  # the guard saw the loop's, FSDP2's and the attention's collectives
        exchange = "all_to_all_single" if attention == "ulysses" else "batch_isend_irecv"
        assert {"all_reduce", "all_gather", "all_gather_single", exchange} <= set(calls), calls
    weights = full_state_dict(objective.model)
    if job.rank == 0:
        torch.save(weights, out)


def _worker(rank: int, world: int, cp: int, attention: str, port: int, out: Path) -> None:
    try:
        run(join_gloo(rank, world, port), cp, attention, out)
    finally:
        close_distributed()


def trained(world: int, cp: int, out: Path, attention: str = "ulysses"
            ) -> dict[str, torch.Tensor]:
    if world == 1:
        run(Dist(0, 1, 0), cp, attention, out)
    else:
        mp.spawn(_worker, args=(world, cp, attention, free_port(), out), nprocs=world,
                 join=True)
    return torch.load(out)


@pytest.mark.parametrize("world,plain_world,attention",
                         [(2, 1, "ulysses"), (2, 1, "ring"), (4, 2, "ulysses")])
def test_context_parallel_training_equals_training_without_it(world, plain_world, attention,
                                                              tmp_path):
    want = trained(plain_world, 1, tmp_path / "plain.pt")
    got = trained(world, 2, tmp_path / "cp.pt", attention)
    torch.manual_seed(0)
    start = MMDiT(CONFIG).state_dict()
    assert set(got) == set(want)
    moved = 0
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-12,
                                   msg=lambda m, name=name: f"{name}: {m}")
        moved += not torch.equal(value.float(), start[name])
    assert moved > len(want) // 2  # training changed the weights it compares


def test_a_degree_that_does_not_divide_the_job_is_an_error():
    with pytest.raises(ValueError, match="context_parallel 2 must divide the job's 3 ranks"):
        context_layout(Dist(0, 3, 0), 2)
