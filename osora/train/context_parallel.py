"""Context parallelism, Ulysses style (DeepSpeed-Ulysses): the sequence is split over the ranks
of a group, and attention — the one place every token meets every other — swaps the split from
tokens to heads with one all-to-all, attends over the whole sequence for H/P heads, and swaps
back. Every other layer of the block works on its own tokens, so activations shrink by P.

    (B, H, N/P, D) ──all-to-all──▶ (B, H/P, N, D) ──attention──▶ ──all-to-all──▶ (B, H, N/P, D)

Needs H divisible by P. The all-to-alls are torch's autograd-aware collectives, so the
backward runs the mirror-image exchange. Ring attention (K/V passed around a ring, no head
constraint) is not built yet.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F


def _swap(x: torch.Tensor, group, to_heads: bool) -> torch.Tensor:
    """tokens → heads: (B, H, n, D) → (B, H/P, P·n, D); heads → tokens: the inverse."""
    p = dist.get_world_size(group)
    b, h, n, d = x.shape
    if to_heads:
        send = x.reshape(b, p, h // p, n, d).transpose(0, 1).contiguous()  # (P, B, H/P, n, D)
    else:
        send = x.reshape(b, h, p, n // p, d).permute(2, 0, 1, 3, 4).contiguous()  # (P,B,H,n/P,D)
    got = dist_fn.all_to_all_single(torch.empty_like(send), send, group=group)  # chunk i: rank i
    if to_heads:  # rank i sent its tokens for my heads: concatenate along the sequence
        return got.permute(1, 2, 0, 3, 4).reshape(b, h // p, p * n, d)
    return got.permute(1, 0, 2, 3, 4).reshape(b, p * h, n // p, d)  # heads of rank i, my tokens


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over the whole sequence from this rank's token shard.

    q, k, v: (B, H, N/P, D), rank r holding tokens [r·N/P, (r+1)·N/P) (RoPE already applied);
    mask: None or the bool key mask (B, N) of the whole sequence, True = attend.
    Returns (B, H, N/P, D), this rank's tokens.
    """
    p = dist.get_world_size(group)
    if q.shape[1] % p:
        raise ValueError(f"Ulysses needs heads divisible by the context-parallel degree: "
                         f"{q.shape[1]} heads over {p} ranks; use ring attention or another "
                         "degree")
    qh, kh, vh = (_swap(x, group, to_heads=True) for x in (q, k, v))  # (B, H/P, N, D)
    attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, N)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask)
    return _swap(out, group, to_heads=False)  # (B, H, N/P, D)
