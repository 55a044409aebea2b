"""3D rotary position embedding (RoPE) of the MMDiT (docs/recipe.md §3), as pure functions.

Every token carries an integer position per axis, (t, h, w): text tokens all 0 (no rotation),
video tokens their latent-grid coordinates after patchify, from 0. The head dimension D is split
into per-axis parts `axes_dims` (sum = D, each even; [16, 56, 56] at full size), each part
rotated by its axis' position at the frequencies theta^(-2j / d) for j < d / 2. The D / 2
rotation angles of a token are the concatenation over axes:

    angle[j] = pos[axis(j)] · theta^(-2 j' / d_axis),   j' = j − offset(axis),  j < D / 2.

A rotated pair (x_a, x_b) at angle φ becomes (x_a cos φ − x_b sin φ, x_a sin φ + x_b cos φ).
Which two channels form pair j is the layout:

- "interleaved" (FLUX `math.rope`/`apply_rope`): pair j is channels (2j, 2j + 1).
- "rotate_half" (HF-Llama `rotate_half`, Liger's `LigerRopeFunction`, which the released
  Open-Sora v2 weights were trained with, `use_liger_rope=True`): pair j is channels
  (j, j + D / 2) over the whole head — not per axis: the first half of the head holds the first
  member of every pair of all three axes (t, then h, then w), the second half the second members
  (reference `LigerEmbedND` concatenates the per-axis cos/sin and repeats them twice).

The two are the same function up to a fixed permutation of the head's channels:
x_rotate_half = x_interleaved[..., [0, 2, …, D−2, 1, 3, …, D−1]] (reference `rearrange_tensor`).
Permuting the q and k output rows (and the QK-norm scales) of a trained model by
`rope_permutation` therefore converts its weights between layouts exactly; see
`osora.models.mmdit.convert_rope_layout`.

Reference: black-forest-labs/flux `src/flux/math.py` (rope, apply_rope), `modules/layers.py`
(EmbedND); hpcaitech/Open-Sora v2 `opensora/models/mmdit/math.py` (liger_rope,
rearrange_tensor) and `layers.py` (LigerEmbedND).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LAYOUTS = ("interleaved", "rotate_half")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"RoPE layout {layout!r} is unknown; use one of {LAYOUTS}")


def grid_positions(
    t: int, h: int, w: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Integer (t, h, w) coordinates of a T×H×W token grid in row-major (t, h, w) order, the
    order patchify lays video tokens out: (t·h·w, 3) float32."""
    if min(t, h, w) < 1:
        raise ValueError(f"grid_positions: grid sizes must be ≥ 1, got (t, h, w) = {(t, h, w)}")
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in (t, h, w)]
    grid = torch.meshgrid(*axes, indexing="ij")  # 3 × (t, h, w)
    return torch.stack(grid, dim=-1).reshape(-1, 3)  # (t·h·w, 3)


def rope_freqs(
    positions: torch.Tensor,
    axes_dims: Sequence[int],
    theta: float = 10_000.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rotation (cos, sin) per token and pair: positions (..., N, n_axes) → (..., N, D/2, 2).

    D = sum(axes_dims); the last dim holds (cos, sin). Angles are computed in float64 (as the
    references' EmbedND) and returned as dtype (float32: the references'). Layout-independent:
    pair j of the result is applied to channels (2j, 2j+1) or (j, j + D/2) by `apply_rope`.
    """
    axes_dims = tuple(int(d) for d in axes_dims)
    if positions.ndim < 2 or positions.shape[-1] != len(axes_dims):
        raise ValueError(
            f"rope_freqs: positions must be (..., N, {len(axes_dims)}) for axes_dims "
            f"{axes_dims}, got {tuple(positions.shape)}"
        )
    if any(d < 2 or d % 2 for d in axes_dims):
        raise ValueError(f"rope_freqs: every axis dim must be even and ≥ 2, got {axes_dims}")
    pos = positions.to(torch.float64)
    angles = []
    for i, d in enumerate(axes_dims):
        omega = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=pos.device) / d)
        angles.append(pos[..., i, None] * omega)  # (..., N, d/2)
    angle = torch.cat(angles, dim=-1)  # (..., N, D/2)
    return torch.stack([angle.cos(), angle.sin()], dim=-1).to(dtype)  # (..., N, D/2, 2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    xf = x.to(torch.promote_types(x.dtype, cos.dtype))  # float32 at least
    if layout == "interleaved":
        a, b = xf.unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, N, D/2) each: channels 2j, 2j+1
        out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    else:
        a, b = xf.chunk(2, dim=-1)  # (B, H, N, D/2) each: channels j, j + D/2
        out = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.type_as(x)  # (B, H, N, D)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, freqs: torch.Tensor, layout: str = "interleaved"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k (B, H, N, D) by freqs (N, D/2, 2) or (B, N, D/2, 2) from `rope_freqs`.

    Computes in freqs' dtype (float32; float64 stays float64) and returns q's and k's dtypes
    (FLUX `apply_rope`). The torch reference for a fused kernel.
    """
    _check_layout(layout)
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(
            f"apply_rope: q and k must both be (B, H, N, D), got {tuple(q.shape)} and "
            f"{tuple(k.shape)}"
        )
    n, d = q.shape[-2:]
    if freqs.ndim not in (3, 4) or tuple(freqs.shape[-3:]) != (n, d // 2, 2) or d % 2:
        raise ValueError(
            f"apply_rope: freqs must be (N, D/2, 2) or (B, N, D/2, 2) = (..., {n}, {d // 2}, 2) "
            f"for q {tuple(q.shape)}, got {tuple(freqs.shape)}"
        )
    if freqs.ndim == 3:
        # Positions shared by the batch (the model's case): the fused Triton op on GPUs, its
        # torch reference elsewhere (osora.kernels; same math as `_rotate`).
        from osora.kernels import apply_rope as fused_rope

        cos, sin = freqs[..., 0], freqs[..., 1]  # (N, D/2)
        return fused_rope(q, cos, sin, layout), fused_rope(k, cos, sin, layout)
    freqs = freqs[:, None]  # (B, 1, N, D/2, 2): broadcast over heads
    cos, sin = freqs[..., 0], freqs[..., 1]  # (B, 1, N, D/2)
    return _rotate(q, cos, sin, layout), _rotate(k, cos, sin, layout)


def rope_permutation(head_dim: int, src: str, dst: str) -> torch.Tensor:
    """Channel permutation between layouts: x_dst = x_src[..., perm], (head_dim,) int64.

    Interleaved channel 2j ↔ rotate-half channel j, and 2j+1 ↔ j + D/2.
    """
    _check_layout(src)
    _check_layout(dst)
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rope_permutation: head_dim must be even and ≥ 2, got {head_dim}")
    if src == dst:
        return torch.arange(head_dim)
    evens_then_odds = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    if src == "interleaved":  # dst rotate_half: channel j ← 2j, j + D/2 ← 2j + 1
        return evens_then_odds
    return torch.argsort(evens_then_odds)  # the inverse: 2j ← j, 2j + 1 ← j + D/2


def permute_head_rows(weight: torch.Tensor, perm: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Permute the output rows of a per-head projection within every head.

    weight: (H·D, ...) (a Linear's weight or bias, or a (D,) norm scale with num_heads = 1)
    → same shape with rows h·D + i taken from h·D + perm[i].
    """
    d = perm.numel()
    if weight.shape[0] != num_heads * d:
        raise ValueError(
            f"permute_head_rows: weight has {weight.shape[0]} rows, expected heads·head_dim = "
            f"{num_heads}·{d}"
        )
    w = weight.reshape(num_heads, d, *weight.shape[1:])  # (H, D, ...)
    return w[:, perm.to(weight.device)].reshape(weight.shape)
