"""The tiny MMDiT and its training cases, shared by the sharding, gradient-accumulation and
FSDP2-offload tests: the model with every weight drawn, a step's float64 batch, the loop's
settings. Imports torch and osora's torch-only modules alone: the GPU check (bench/gpu_check.py)
runs test_fsdp_offload's CUDA test on machines that have nothing else."""

from __future__ import annotations

import torch
from torch import nn

from osora.diffusion.conditioning import build_cond, condition_mask
from osora.models.mmdit import MMDIT_TINY, MMDiT
from osora.train.flow_objective import LatentBatch
from osora.train.loop import LoopSettings

B = 4  # samples per step
STEPS = 3
SEED = 0
KINDS = ("t2v", "i2v_head", "i2v_tail", "i2v_loop")  # one per sample: conditions differ
# float64: the same samples split and summed otherwise differ by rounding (~1e-16) only
TOL = {"rtol": 1e-12, "atol": 1e-13}
WORLD = 2  # ranks of the multi-rank cases


def tiny_mmdit() -> MMDiT:
    """MMDIT_TINY with every weight drawn (its zero-initialised output layer would make every
    other gradient zero and the comparison empty)."""
    torch.manual_seed(0)
    model = MMDiT(MMDIT_TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def step_batch(step: int) -> LatentBatch:
    """The step's batch of B samples in float64: latents, masked text, pooled, conditions."""
    g = torch.Generator().manual_seed(1000 + step)
    cfg, t = MMDIT_TINY, 3
    latent = torch.randn(B, cfg.in_channels, t, 4, 6, generator=g, dtype=torch.float64)
    text = torch.randn(B, 5, cfg.text_dim, generator=g, dtype=torch.float64)  # (B, L, D)
    mask = torch.rand(B, 5, generator=g) > 0.4  # (B, L)
    mask[:, 0] = True
    cond = build_cond(torch.randn(latent.shape, generator=g, dtype=torch.float64),
                      torch.stack([condition_mask(k, t) for k in KINDS]))  # (B, C + 1, T, H, W)
    pooled = torch.randn(B, cfg.vec_dim, generator=g, dtype=torch.float64)
    return LatentBatch(latent, text, pooled, mask, cond)


def rank_batch(step: int, rank: int) -> LatentBatch:
    """Rank `rank`'s part of the step's batch: B / WORLD samples (two micro-batches of 1)."""
    return step_batch(step).split(WORLD)[rank]


def adamw(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def settings(steps: int, **kw) -> LoopSettings:
    # a clip that bites (the tiny model's gradient norm is ~1): the norm is the whole batch's
    return LoopSettings(steps=steps, grad_clip=0.5, log_every=1, seed=SEED,
                        checkpoint_every=kw.pop("checkpoint_every", 10**6), **kw)

