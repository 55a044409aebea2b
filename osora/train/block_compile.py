"""Per-block torch.compile of the MMDiT (torchtitan compiles each transformer block, not the
whole model: the blocks repeat, so one compiled graph serves all of a kind, compile time stays
short, and FSDP2's per-block all-gathers stay outside the graphs).

`nn.Module.compile` compiles a block in place: the module tree and parameter names stay as they
are, so DCP checkpoints, exported weights and FSDP2 units do not change. Apply it after
activation checkpointing (the compiled call then includes the checkpoint wrapper, as in
torchtitan) and before FSDP2.
"""

from __future__ import annotations

from torch import nn


def compile_blocks(model: nn.Module, units: tuple[type[nn.Module], ...],
                   backend: str = "inductor") -> int:
    """Compile every submodule of a `units` class in place; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, units):
            module.compile(backend=backend)
            count += 1
    if not count:
        raise ValueError(f"no {', '.join(u.__name__ for u in units)} in "
                         f"{type(model).__name__} to compile")
    return count
