"""Joint attention of the MMDiT as a pure function (FLUX `math.attention`): RoPE, then torch's
scaled_dot_product_attention in (B, heads, N, head_dim) layout, then heads merged.

Kept apart from the model so a parallel wrapper or a fused kernel can stand in for it without
touching the blocks: inside `sequence_parallel(fn)` the attention after RoPE is fn(q, k, v,
mask) on this rank's token shard, with the whole sequence's key mask
(osora.train.context_parallel gives Ulysses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange

from osora.models.rope import apply_rope

_parallel: Callable | None = None  # set by `sequence_parallel`


@contextmanager
def sequence_parallel(fn: Callable) -> Iterator[None]:
    """Within: attention(q, k, v, …) on a token shard calls fn(q, k, v, mask=mask) after
    RoPE."""
    global _parallel
    before, _parallel = _parallel, fn
    try:
        yield
    finally:
        _parallel = before


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    freqs: torch.Tensor,
    layout: str = "interleaved",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(R(q) R(k)ᵀ / √D) v over all N tokens, R the 3D RoPE.

    q, k, v: (B, H, N, D); freqs: (N, D/2, 2) or (B, N, D/2, 2) from `rope.rope_freqs`;
    mask: None (every key attended) or a bool key mask (B, N), True = attend to this key.
    Returns (B, N, H·D).
    """
    q, k = apply_rope(q, k, freqs, layout)  # (B, H, N, D)
    if _parallel is not None:  # q, k, v: this rank's tokens; mask: the whole sequence's
        return rearrange(_parallel(q, k, v, mask=mask), "b h n d -> b n (h d)")
    attn_mask = None
    if mask is not None:
        b, _, n, _ = q.shape
        if mask.dtype != torch.bool or tuple(mask.shape) != (b, n):
            raise ValueError(
                f"attention: mask must be a bool key mask (B, N) = ({b}, {n}), got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, N): broadcast over heads and queries
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, D)
    return rearrange(x, "b h n d -> b n (h d)")
