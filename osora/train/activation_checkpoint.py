"""Selective activation checkpointing of the MMDiT by block index (docs/recipe.md §6: stages 1–2 the
first 8 double blocks and every single block; stage 3 every block, with the saved activations
offloaded to CPU memory).

A checkpointed block keeps only its inputs in the forward and runs again in the backward to
rebuild what its gradients need: memory for time. Blocks are checkpointed in place — their
`forward` is wrapped, the module tree and the parameter names stay as they are — so weights,
DCP checkpoints and FSDP2 units are unaffected. With `offload`, the inputs a checkpointed block
keeps, and everything the other blocks save, go to pinned CPU memory asynchronously
(osora.train.offload) until the backward needs them.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from osora.train.offload import AsyncOffload


def chosen(count: int, total: int) -> range:
    """The first `count` block indices of `total`; count −1: all of them."""
    if count < -1:
        raise ValueError(f"checkpoint count must be ≥ −1 (−1: all), got {count}")
    return range(total if count == -1 else min(count, total))


def _checkpointed(forward, offload: bool, copy_cpu: bool):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():  # inference: nothing to save
            return forward(*args, **kwargs)
        if not offload:
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        # The inputs the recompute needs wait in CPU memory (copied asynchronously); the first
        # run uses the device inputs it was given, only the recompute brings them back.
        mover = AsyncOffload(min_bytes=0, copy_cpu=copy_cpu)
        live = [args]
        grads = [isinstance(a, torch.Tensor) and a.requires_grad for a in args]

        def on_device(*kept):
            if live:
                return forward(*live.pop(), **kwargs)
            # the recompute must save what the forward saved: inputs that needed a gradient
            # need one again (the gradient itself flows through the forward's graph)
            given = [mover.unpack(k) for k in kept]
            given = [g.detach().requires_grad_() if need else g for g, need in zip(given, grads)]
            return forward(*given, **kwargs)

        return checkpoint(on_device, *(mover.pack(a) for a in args), use_reentrant=False)

    run.osora_wrapped = "checkpoint+offload" if offload else "checkpoint"
    return run


def _offloaded(forward, copy_cpu: bool):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        with AsyncOffload(copy_cpu=copy_cpu):
            return forward(*args, **kwargs)

    run.osora_wrapped = "offload"
    return run


def apply_checkpointing(model: nn.Module, double: int, single: int,
                        offload: bool = False, copy_cpu: bool = False) -> dict[str, str]:
    """Checkpoint the first `double` double-stream and `single` single-stream blocks (−1: all),
    and with `offload` move the other blocks' activations to CPU memory; returns
    {block name: "checkpoint" | "checkpoint+offload" | "offload"}. Applying twice is an
    error. `copy_cpu`: offload CPU tensors too (tests; osora.train.offload)."""
    done = {}
    for attr, count in (("double_blocks", double), ("single_blocks", single)):
        blocks = getattr(model, attr)
        picked = chosen(count, len(blocks))
        for i, block in enumerate(blocks):
            if getattr(block.forward, "osora_wrapped", None):
                raise ValueError(f"{attr}.{i} is already wrapped ({block.forward.osora_wrapped})")
            if i in picked:
                block.forward = _checkpointed(block.forward, offload, copy_cpu)
            elif offload:
                block.forward = _offloaded(block.forward, copy_cpu)
            else:
                continue
            done[f"{attr}.{i}"] = block.forward.osora_wrapped
    return done
