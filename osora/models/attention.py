"""Joint attention of the MMDiT (FLUX `math.attention`): RoPE, then attention over the heads in
(B, heads, N, head_dim) layout, then heads merged.

`Attention` is the seam parallelism plugs into: every MMDiT block holds one as its `attention`
submodule. It has no parameters, so swapping it changes neither weight names nor state dicts.
It applies RoPE and merges the heads itself and leaves the attention proper to `attend`: here
torch's scaled_dot_product_attention over the whole sequence. Context parallelism subclasses it
(osora.train.context_parallel.ContextParallelAttention: Ulysses, ring or torch's, over a rank
group) and its parallelize step swaps the blocks' modules, as torchtitan swaps attention modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from osora.models.rope import apply_rope


class Attention(nn.Module):
    """softmax(R(q) R(k)ᵀ / √D) v over all N tokens, R the 3D RoPE in `rope_layout`."""

    def __init__(self, rope_layout: str = "interleaved"):
        super().__init__()
        self.rope_layout = rope_layout

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        freqs: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q, k, v: (B, H, N, D); freqs: (N, D/2, 2) or (B, N, D/2, 2) from `rope.rope_freqs`;
        mask: None (every key attended) or a bool key mask (B, N), True = attend to this key.
        Returns (B, N, H·D)."""
        q, k = apply_rope(q, k, freqs, self.rope_layout)  # (B, H, N, D)
        return rearrange(self.attend(q, k, v, mask), "b h n d -> b n (h d)")

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """Attention after RoPE: q, k, v (B, H, N, D), mask None or (B, N) → (B, H, N, D)."""
        attn_mask = None
        if mask is not None:
            b, _, n, _ = q.shape
            if mask.dtype != torch.bool or tuple(mask.shape) != (b, n):
                raise ValueError(
                    f"attention: mask must be a bool key mask (B, N) = ({b}, {n}), got "
                    f"{mask.dtype} {tuple(mask.shape)}"
                )
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, N): broadcast over heads and queries
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)

    def extra_repr(self) -> str:
        return f"rope_layout={self.rope_layout!r}"
