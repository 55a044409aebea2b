"""How a context-parallel group splits one sequence: rank r of P holds the contiguous share
[offset_r, offset_r + n_r) of the N tokens, n_r = N // P, one more for the first N mod P ranks
(so any N ≥ P splits; e.g. 7394 tokens over 4 ranks: 1849, 1849, 1848, 1848). Every rank
derives all shares from N alone, on the host: no exchange of sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def token_shares(total: int, p: int) -> list[int]:
    """Every rank's share n_r of a sequence of `total` tokens over `p` ranks."""
    if total < p:
        raise ValueError(f"context parallel over {p} ranks needs at least {p} tokens, got "
                         f"{total}: use a lower degree for sequences this short")
    return [total // p + (r < total % p) for r in range(p)]


def share_offset(sizes: Sequence[int], rank: int) -> int:
    """The first token of `rank`'s share."""
    return sum(sizes[:rank])


def checked_shares(x: torch.Tensor, group, sizes: Sequence[int] | None) -> list[int]:
    """Every rank's share for an attention over `group` that got this rank's x (B, H, n_r, D):
    `sizes`, or with None, n_r for every rank (equal shares). Refuses shares that do not
    match the group or x."""
    p, rank, n = dist.get_world_size(group), dist.get_rank(group), x.shape[2]
    sizes = [n] * p if sizes is None else list(sizes)
    if len(sizes) != p or sizes[rank] != n:
        raise ValueError(f"context parallel attention: shares {sizes} for a group of {p}, but "
                         f"rank {rank} holds {n} tokens: pass each rank its share "
                         "(token_shares; context_parallel_forward does)")
    return sizes
