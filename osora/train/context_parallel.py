"""Context parallelism, Ulysses style (DeepSpeed-Ulysses): the sequence is split over the ranks
of a group, and attention — the one place every token meets every other — swaps the split from
tokens to heads with one all-to-all, attends over the whole sequence for H/P heads, and swaps
back. Every other layer of the block works on its own tokens, so activations shrink by P.

    (B, H, n_r, D) ──all-to-all──▶ (B, H/P, N, D) ──attention──▶ ──all-to-all──▶ (B, H, n_r, D)

Needs H divisible by P, not N: rank r holds the contiguous share n_r of `token_shares(N, P)`
(osora.train.cp_shares: the first N mod P ranks one token more), so a sequence of any length
splits. The all-to-alls are torch's autograd-aware collectives with per-rank split sizes, so
the backward runs the mirror-image exchange. Ring attention (osora.train.ring_attention: K/V passed
around a ring, no head constraint) is the other choice, kind "ring" (`CP_ATTENTION`), and on
CUDA torch's own context parallelism, kind "torch" (osora.train.torch_cp_attention; equal
shares only, N divisible by P).

Two steps, as torchtitan applies context parallelism:
- the parallelize step, `parallelize_attention(model, group, kind)`, swaps every block's
  `attention` module (osora.models.attention, the seam) for a `ContextParallelAttention` bound
  to the group and kind; the modules hold no weights, so names and state dicts are unchanged.
- `context_parallel_forward` then runs the MMDiT so: the joint [text; video] sequence is cut
  into P contiguous shares (a rank's share may hold text, video or both; the double blocks run
  each stream on its part), the blocks attend over the group, and the final layer's shares are
  gathered so every rank holds the whole output. Every rank must then compute the same loss
  from it (the gather's backward hands each rank its own slice of the gradient), and the
  parameter gradients — each rank's covers its tokens — are summed over the group: FSDP2 over
  a mesh that includes the CP ranks does it, `all_reduce_grads` does it alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from osora.models.attention import Attention
from osora.models.rope import apply_rope
from osora.train.cp_shares import checked_shares, share_offset, token_shares
from osora.train.ring_attention import ring_attention
from osora.train.torch_cp_attention import torch_cp_attention


def _to_heads(x: torch.Tensor, group, sizes: list[int]) -> torch.Tensor:
    """(B, H, n_r, D), rank r's tokens of every head → (B, H/P, N, D), every token of rank r's
    heads. Token-major buffers: each rank's chunk is a run of whole tokens, so the chunks
    received concatenate in sequence order whatever their lengths."""
    p = len(sizes)
    b, h, n, d = x.shape
    # chunk j: my n tokens of rank j's heads
    send = x.reshape(b, p, h // p, n, d).permute(1, 3, 0, 2, 4).contiguous()  # (P,n,B,H/P,D)
    send = send.view(p * n, b, h // p, d)
    got = dist_fn.all_to_all_single(send.new_empty(sum(sizes), b, h // p, d), send,
                                    output_split_sizes=sizes, input_split_sizes=[n] * p,
                                    group=group)  # (N, B, H/P, D): chunk i, rank i's share
    return got.permute(1, 2, 0, 3)  # (B, H/P, N, D)


def _to_tokens(x: torch.Tensor, group, sizes: list[int]) -> torch.Tensor:
    """The inverse of `_to_heads`: (B, H/P, N, D) → (B, H, n_r, D)."""
    p, n = len(sizes), sizes[dist.get_rank(group)]
    b, hp, _, d = x.shape
    send = x.permute(2, 0, 1, 3).contiguous()  # (N, B, H/P, D): chunk j, rank j's share
    got = dist_fn.all_to_all_single(send.new_empty(p * n, b, hp, d), send,
                                    output_split_sizes=[n] * p, input_split_sizes=sizes,
                                    group=group)  # (P·n, B, H/P, D): chunk i, rank i's heads
    return got.reshape(p, n, b, hp, d).permute(2, 0, 3, 1, 4).reshape(b, p * hp, n, d)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None,
                      mask: torch.Tensor | None = None,
                      sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Attention over the whole sequence from this rank's token share.

    q, k, v: (B, H, n_r, D), rank r holding the tokens [Σ_{i<r} n_i, Σ_{i≤r} n_i) (RoPE
    already applied); sizes: every rank's n_i (`token_shares`; None: all n_r); mask: None or
    the bool key mask (B, N) of the whole sequence, True = attend.
    Returns (B, H, n_r, D), this rank's tokens.
    """
    p = dist.get_world_size(group)
    if q.shape[1] % p:
        raise ValueError(f"Ulysses needs heads divisible by the context-parallel degree: "
                         f"{q.shape[1]} heads over {p} ranks; use ring attention or another "
                         "degree")
    sizes = checked_shares(q, group, sizes)
    qh, kh, vh = (_to_heads(x, group, sizes) for x in (q, k, v))  # (B, H/P, N, D)
    attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, N)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask)
    return _to_tokens(out, group, sizes)  # (B, H, n_r, D)


# fn(q, k, v, group, mask, sizes); "torch": torch's own, CUDA only for training and equal
# shares only (torch_cp_attention)
CP_ATTENTION = {"ulysses": ulysses_attention, "ring": ring_attention,
                "torch": torch_cp_attention}


class ContextParallelAttention(Attention):
    """Attention from this rank's token share over a context-parallel group: q, k, v hold the
    share's tokens, the RoPE freqs and the key mask cover the whole sequence (whose length gives
    every rank's share, `token_shares`). `kind`: a key of `CP_ATTENTION`; `group`: the ranks
    that share one sequence (None: all)."""

    def __init__(self, rope_layout: str, group: dist.ProcessGroup | None, kind: str):
        if kind not in CP_ATTENTION:
            raise ValueError(f"context parallel attention must be one of {sorted(CP_ATTENTION)}, "
                             f"got {kind!r} (params/dit.yaml train.cp_attention)")
        super().__init__(rope_layout)
        self.group, self.kind = group, kind

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, freqs: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """q, k, v: (B, H, n_r, D), this rank's share; freqs: the whole sequence's (N, D/2, 2)
        or (B, N, D/2, 2); mask: None or (B, N). Returns (B, n_r, H·D)."""
        sizes = token_shares(freqs.shape[-3], dist.get_world_size(self.group))
        checked_shares(q, self.group, sizes)
        lo = share_offset(sizes, dist.get_rank(self.group))
        q, k = apply_rope(q, k, freqs[..., lo:lo + q.shape[2], :, :], self.rope_layout)
        out = CP_ATTENTION[self.kind](q, k, v, group=self.group, mask=mask, sizes=sizes)
        return out.transpose(1, 2).flatten(2)  # (B, n_r, H·D)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind!r}"


def parallelize_attention(model: nn.Module, group: dist.ProcessGroup | None, kind: str) -> None:
    """The parallelize step of context parallelism: every `Attention` module of `model` becomes
    a `ContextParallelAttention` over `group` (in place). The model then runs through
    `context_parallel_forward` only."""
    sites = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children() if isinstance(child, Attention)]
    if not sites:
        raise ValueError(f"{type(model).__name__} has no Attention modules to parallelize")
    for parent, name, child in sites:
        setattr(parent, name, ContextParallelAttention(child.rope_layout, group, kind))


def _group_of(model: nn.Module) -> dist.ProcessGroup | None:
    """The one group every attention module of `model` attends over (parallelize_attention)."""
    attention = [m for m in model.modules() if isinstance(m, Attention)]
    groups = {id(m.group): m.group for m in attention if isinstance(m, ContextParallelAttention)}
    local = sum(not isinstance(m, ContextParallelAttention) for m in attention)
    if local or len(groups) != 1:
        raise ValueError(f"context_parallel_forward needs every attention module bound to one "
                         f"context-parallel group; {local} of {len(attention)} attend locally "
                         f"and {len(groups)} groups are bound: call parallelize_attention(model, "
                         "group, kind) once, in the parallelize step")
    return next(iter(groups.values()))


class _GatherTokens(torch.autograd.Function):
    """All ranks' token shares (B, n_r, F) → (B, N, F); the backward keeps this rank's slice of
    the (identical on every rank) gradient. Shares are padded to the longest for the gather
    (all_gather takes equal sizes on every backend) and trimmed after."""

    @staticmethod
    def forward(ctx, share: torch.Tensor, group, sizes: list[int]) -> torch.Tensor:
        ctx.lo = share_offset(sizes, dist.get_rank(group))
        ctx.hi = ctx.lo + share.shape[1]
        padded = F.pad(share, (0, 0, 0, max(sizes) - share.shape[1])).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]  # (B, max n_i, F) each
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[:, :n] for part, n in zip(parts, sizes)], dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[:, ctx.lo:ctx.hi], None, None


def context_parallel_forward(model: nn.Module, x, t, text, pooled, text_mask=None, cond=None,
                             guidance=None) -> torch.Tensor:
    """`model(x, t, text, pooled, …)` with the sequence split over the context-parallel group
    its attention modules were bound to (`parallelize_attention`; module doc). Every rank of
    the group passes the whole inputs and gets the whole output (B, C, T, H, W)."""
    group = _group_of(model)
    p, rank = dist.get_world_size(group), dist.get_rank(group)
    img, txt, vec, freqs, mask = model.embed(x, t, text, pooled, text_mask, cond, guidance)
    n_txt = txt.shape[1]
    sizes = token_shares(n_txt + img.shape[1], p)
    lo = share_offset(sizes, rank)
    hi = lo + sizes[rank]
    txt_part = txt[:, lo:min(hi, n_txt)]
    img_part = img[:, max(lo - n_txt, 0):max(hi - n_txt, 0)]
    # the whole sequence's freqs and mask: each attention module takes its share's freqs
    seq = model.run_blocks(img_part, txt_part, vec, freqs, mask)  # (B, n_r, dim)
    out = _GatherTokens.apply(model.final_layer(seq, vec), group, sizes)  # (B, L + N, C·p²)
    return model.unembed(out[:, n_txt:], x)


def all_reduce_grads(model: nn.Module, group) -> None:
    """Sum every parameter's gradient over the context-parallel group (each rank's covers
    only its tokens)."""
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, group=group)
