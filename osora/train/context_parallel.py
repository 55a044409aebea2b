"""Context parallelism, Ulysses style (DeepSpeed-Ulysses): the sequence is split over the ranks
of a group, and attention — the one place every token meets every other — swaps the split from
tokens to heads with one all-to-all, attends over the whole sequence for H/P heads, and swaps
back. Every other layer of the block works on its own tokens, so activations shrink by P.

    (B, H, N/P, D) ──all-to-all──▶ (B, H/P, N, D) ──attention──▶ ──all-to-all──▶ (B, H, N/P, D)

Needs H divisible by P. The all-to-alls are torch's autograd-aware collectives, so the
backward runs the mirror-image exchange. Ring attention (osora.train.ring_attention: K/V passed
around a ring, no head constraint) is the other choice, `attention="ring"` (`CP_ATTENTION`), and
on CUDA torch's own context parallelism, `attention="torch"` (osora.train.torch_cp_attention).

`context_parallel_forward` runs the MMDiT so: the joint [text; video] sequence is cut into P
equal contiguous shards (a rank's shard may hold text, video or both; the double blocks run each
stream on its part), the blocks run inside `attention.sequence_parallel`, and the final layer's
shards are gathered so every rank holds the whole output. Every rank must then compute the same
loss from it (the gather's backward hands each rank its own slice of the gradient), and the
parameter gradients — each rank's covers its tokens — are summed over the group: FSDP2 over a
mesh that includes the CP ranks does it, `all_reduce_grads` does it alone.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from osora.models.attention import sequence_parallel
from osora.train.ring_attention import ring_attention
from osora.train.torch_cp_attention import torch_cp_attention


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


# fn(q, k, v, group, mask); "torch": torch's own, CUDA only for training (torch_cp_attention)
CP_ATTENTION = {"ulysses": ulysses_attention, "ring": ring_attention,
                "torch": torch_cp_attention}


class _GatherTokens(torch.autograd.Function):
    """All ranks' token shards (B, S, F) → (B, P·S, F); the backward keeps this rank's slice of
    the (identical on every rank) gradient."""

    @staticmethod
    def forward(ctx, shard: torch.Tensor, group) -> torch.Tensor:
        ctx.rank, ctx.size = dist.get_rank(group), shard.shape[1]
        parts = [torch.empty_like(shard) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, shard.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[:, ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size], None


def context_parallel_forward(model: nn.Module, group, x, t, text, pooled, text_mask=None,
                             cond=None, guidance=None, attention: str = "ulysses") -> torch.Tensor:
    """`model(x, t, text, pooled, …)` with the sequence split over `group` (module doc).
    Every rank passes the whole inputs and gets the whole output (B, C, T, H, W).
    `attention`: a key of `CP_ATTENTION`, "ulysses" (heads divisible by P), "ring" or "torch"
    (CUDA, no text mask)."""
    if attention not in CP_ATTENTION:
        raise ValueError(f"context parallel attention must be one of {sorted(CP_ATTENTION)}, "
                         f"got {attention!r}")
    p, rank = dist.get_world_size(group), dist.get_rank(group)
    img, txt, vec, freqs, mask = model.embed(x, t, text, pooled, text_mask, cond, guidance)
    n_txt, total = txt.shape[1], txt.shape[1] + img.shape[1]
    if total % p:
        raise ValueError(f"context parallel over {p} ranks needs text + video tokens divisible "
                         f"by {p}; got {n_txt} + {img.shape[1]}: pad the text (max_length) or "
                         "pick another bucket")
    lo, hi = rank * total // p, (rank + 1) * total // p
    txt_part = txt[:, lo:min(hi, n_txt)]
    img_part = img[:, max(lo - n_txt, 0):max(hi - n_txt, 0)]
    with sequence_parallel(partial(CP_ATTENTION[attention], group=group)):
        seq = model.run_blocks(img_part, txt_part, vec, freqs[lo:hi], mask)  # (B, S, dim)
    out = _GatherTokens.apply(model.final_layer(seq, vec), group)  # (B, L + N, C·p²)
    return model.unembed(out[:, n_txt:], x)


def all_reduce_grads(model: nn.Module, group) -> None:
    """Sum every parameter's gradient over the context-parallel group (each rank's covers
    only its tokens)."""
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, group=group)
