"""LayerNorm (no affine) fused with adaLN modulation: y = layer_norm(x) · (1 + scale) + shift.

FLUX's / the MMDiT's pre-attention and pre-MLP normalisation of every block, and its final
layer: x (B, N, D), shift and scale (B, 1, D) or (B, D) (leading dim 1 broadcasts over B).
One read of x and one write of y forward; backward reads x and dy once each (mean and rstd are
recomputed from the row, not saved), writes dx, and sums dshift = Σ_n dy and
dscale = Σ_n dy · xhat per program on a persistent grid, the partials added in torch.

- `modulate_reference`: pure torch, float32 math (float64 stays), returns x's dtype.
- `torch.ops.osora.modulate` / `osora::modulate_backward`: custom ops with fake kernels and
  autograd; the backward is the Triton backward kernel. Without Triton both run the reference.
- `modulate`: Triton op where Triton runs, else the reference.

(osora.models.layers.modulate is the modulation alone, without the norm.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from osora.kernels import _triton
from osora.kernels._triton import lazy_kernel

if TYPE_CHECKING:  # the kernels' `tl`, bound at their first launch (_triton.LazyKernel)
    import triton.language as tl


def _as_b1d(t: torch.Tensor) -> torch.Tensor:
    """(B, D) or (B, 1, D) → (B, 1, D), a view."""
    return t.unsqueeze(1) if t.ndim == 2 else t


def modulate_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                       eps: float = 1e-6) -> torch.Tensor:
    """x (B, N, D), shift/scale (B, 1, D) or (B, D) → (B, N, D) in x's dtype; float32 math."""
    dt = _triton.compute_dtype(x.dtype)
    xn = F.layer_norm(x.to(dt), (x.shape[-1],), eps=eps)
    y = xn * (1 + _as_b1d(scale).to(dt)) + _as_b1d(shift).to(dt)
    return y.to(x.dtype)


def _reduce_to(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B, D) gradient summed over a broadcast batch dim and shaped/typed like `like`."""
    if like.shape[0] == 1 and g.shape[0] != 1:
        g = g.sum(0, keepdim=True)
    return g.reshape(like.shape).to(like.dtype)


def _modulate_backward_reference(dy, x, shift, scale, eps):
    """Analytic backward of modulate_reference: (dx, dshift, dscale) in their inputs' dtypes."""
    dt = _triton.compute_dtype(x.dtype)
    xf, dyf = x.to(dt), dy.to(dt)
    mean = xf.mean(dim=-1, keepdim=True)
    xc = xf - mean
    rstd = torch.rsqrt(xc.square().mean(dim=-1, keepdim=True) + eps)
    xhat = xc * rstd
    g = dyf * (1 + _as_b1d(scale).to(dt))
    dx = rstd * (g - g.mean(dim=-1, keepdim=True) - xhat * (g * xhat).mean(dim=-1, keepdim=True))
    dshift = dyf.sum(1)  # (B, D)
    dscale = (dyf * xhat).sum(1)
    return dx.to(x.dtype), _reduce_to(dshift, shift), _reduce_to(dscale, scale)


# ----------------------------------------------------------------------------- Triton kernels


@lazy_kernel
def _modulate_fwd_kernel(X, SHIFT, SCALE, Y, N, D, stride_xb, stride_xn, stride_yb, stride_yn,
                         stride_shift, stride_scale, eps,
                         ROWS: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    # One program: ROWS tokens of batch element b = program_id(1).
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    mask = (n < N)[:, None] & cmask[None, :]
    n = n.to(tl.int64)
    x = tl.load(X + b * stride_xb + n[:, None] * stride_xn + cols[None, :], mask=mask,
                other=0.0).to(ACC)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    shift = tl.load(SHIFT + b * stride_shift + cols, mask=cmask, other=0.0).to(ACC)
    scale = tl.load(SCALE + b * stride_scale + cols, mask=cmask, other=0.0).to(ACC)
    y = xc * rstd[:, None] * (1.0 + scale[None, :]) + shift[None, :]
    tl.store(Y + b * stride_yb + n[:, None] * stride_yn + cols[None, :],
             y.to(Y.dtype.element_ty), mask=mask)


@lazy_kernel
def _modulate_bwd_kernel(DY, X, SCALE, DX, DSHIFT_PART, DSCALE_PART, N, D,
                         stride_dyb, stride_dyn, stride_xb, stride_xn, stride_dxb, stride_dxn,
                         stride_scale, eps,
                         ROWS: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    # Persistent over tokens: program (p, b) takes token tiles p, p + P, ... of batch element b
    # and writes its sums of dshift and dscale to the partials [b, p].
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    b = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    scale1 = 1.0 + tl.load(SCALE + b * stride_scale + cols, mask=cmask, other=0.0).to(ACC)
    dshift = tl.zeros((BLOCK_D,), dtype=ACC)
    dscale = tl.zeros((BLOCK_D,), dtype=ACC)
    for start in range(pid * ROWS, N, n_prog * ROWS):
        n = start + tl.arange(0, ROWS)
        mask = (n < N)[:, None] & cmask[None, :]
        n = n.to(tl.int64)
        x = tl.load(X + b * stride_xb + n[:, None] * stride_xn + cols[None, :], mask=mask,
                    other=0.0).to(ACC)
        dy = tl.load(DY + b * stride_dyb + n[:, None] * stride_dyn + cols[None, :], mask=mask,
                     other=0.0).to(ACC)
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
        xhat = xc * rstd[:, None]
        g = dy * scale1[None, :]
        mean_g = tl.sum(g, axis=1) / D
        mean_gx = tl.sum(g * xhat, axis=1) / D
        dx = rstd[:, None] * (g - mean_g[:, None] - xhat * mean_gx[:, None])
        tl.store(DX + b * stride_dxb + n[:, None] * stride_dxn + cols[None, :],
                 dx.to(DX.dtype.element_ty), mask=mask)
        dshift += tl.sum(dy, axis=0)
        dscale += tl.sum(dy * xhat, axis=0)
    part = (b * n_prog + pid) * BLOCK_D + cols
    tl.store(DSHIFT_PART + part, dshift, mask=cmask)
    tl.store(DSCALE_PART + part, dscale, mask=cmask)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _batch_rows(t: torch.Tensor, bsz: int) -> tuple[torch.Tensor, int]:
    """shift/scale as (B', D) rows with a unit last stride, and the stride between batch
    elements (0 when one row broadcasts over the batch)."""
    rows = _unit_last(t.reshape(t.shape[0], t.shape[-1]))
    return rows, (0 if rows.shape[0] == 1 and bsz != 1 else rows.stride(0))


def _fwd_triton(x, shift, scale, eps):
    x = _unit_last(x)
    bsz, n, d = x.shape
    y = torch.empty((bsz, n, d), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    shift_rows, shift_stride = _batch_rows(shift, bsz)
    scale_rows, scale_stride = _batch_rows(scale, bsz)
    block_d, rows, warps = _triton.row_tile(d, n)
    with _triton.on_device(x):
        _modulate_fwd_kernel[(_triton.cdiv(n, rows), bsz)](
            x, shift_rows, scale_rows, y, n, d, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
            shift_stride, scale_stride, eps,
            ROWS=rows, BLOCK_D=block_d, ACC=_triton.tl_compute_dtype(x.dtype), num_warps=warps)
    return y


def _bwd_triton(dy, x, shift, scale, eps):
    x, dy = _unit_last(x), _unit_last(dy)
    bsz, n, d = x.shape
    dx = torch.empty((bsz, n, d), dtype=x.dtype, device=x.device)
    acc = _triton.compute_dtype(x.dtype)
    if dx.numel() == 0:
        zeros = torch.zeros((bsz, d), dtype=acc, device=x.device)
        return dx, _reduce_to(zeros, shift), _reduce_to(zeros, scale)
    scale_rows, scale_stride = _batch_rows(scale, bsz)
    block_d, rows, warps = _triton.row_tile(d, n)
    # Programs per batch element: about 2 per SM in all (the partials are (B, P, D) floats,
    # so fewer programs than rms_norm's 4 per SM keep their traffic small next to x's).
    n_tiles = _triton.cdiv(n, rows)
    n_prog = _triton.persistent_programs(x.device, n_tiles * bsz, per_sm=2)
    n_prog = max(1, min(n_prog // bsz, n_tiles))
    dshift_part = torch.empty((bsz, n_prog, block_d), dtype=acc, device=x.device)
    dscale_part = torch.empty_like(dshift_part)
    with _triton.on_device(x):
        _modulate_bwd_kernel[(n_prog, bsz)](
            dy, x, scale_rows, dx, dshift_part, dscale_part, n, d,
            dy.stride(0), dy.stride(1), x.stride(0), x.stride(1), dx.stride(0), dx.stride(1),
            scale_stride, eps,
            ROWS=rows, BLOCK_D=block_d, ACC=_triton.tl_compute_dtype(x.dtype), num_warps=warps)
    dshift = dshift_part.sum(1)[:, :d]
    dscale = dscale_part.sum(1)[:, :d]
    return dx, _reduce_to(dshift, shift), _reduce_to(dscale, scale)


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("osora::modulate", mutates_args=())
def _modulate_op(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                 eps: float) -> torch.Tensor:
    if _triton.kernel_applies(x, shift, scale):
        return _fwd_triton(x, shift, scale, eps)
    return modulate_reference(x, shift, scale, eps).contiguous()  # the fake's layout


@_modulate_op.register_fake
def _(x, shift, scale, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("osora::modulate_backward", mutates_args=())
def _modulate_backward_op(dy: torch.Tensor, x: torch.Tensor, shift: torch.Tensor,
                          scale: torch.Tensor,
                          eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _triton.kernel_applies(x, shift, scale):
        return _bwd_triton(dy, x, shift, scale, eps)
    dx, dshift, dscale = _modulate_backward_reference(dy, x, shift, scale, eps)
    return dx.contiguous(), dshift.contiguous(), dscale.contiguous()


@_modulate_backward_op.register_fake
def _(dy, x, shift, scale, eps):
    return x.new_empty(x.shape), shift.new_empty(shift.shape), scale.new_empty(scale.shape)


def _setup_context(ctx, inputs, output):
    x, shift, scale, eps = inputs
    ctx.save_for_backward(x, shift, scale)
    ctx.eps = eps


def _backward(ctx, dy):
    x, shift, scale = ctx.saved_tensors
    dx, dshift, dscale = torch.ops.osora.modulate_backward(dy, x, shift, scale, ctx.eps)
    return dx, dshift, dscale, None


_modulate_op.register_autograd(_backward, setup_context=_setup_context)


def _check(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> None:
    if x.ndim != 3:
        raise ValueError(f"modulate: x must be (B, N, D); got {tuple(x.shape)}")
    bsz, _, d = x.shape
    for name, t in (("shift", shift), ("scale", scale)):
        ok = (t.ndim == 2 or (t.ndim == 3 and t.shape[1] == 1)) and t.shape[-1] == d
        if not ok or t.shape[0] not in (1, bsz):
            raise ValueError(f"modulate: {name} must be (B, 1, D) or (B, D) with B = {bsz} or 1 "
                             f"and D = {d}; got {tuple(t.shape)}")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
             eps: float = 1e-6) -> torch.Tensor:
    """layer_norm(x) · (1 + scale) + shift: x (B, N, D), shift/scale (B, 1, D) or (B, D) →
    (B, N, D) in x's dtype. The LayerNorm has no affine (adaLN, as in FLUX).

    The fused Triton op where Triton runs (CUDA, or TRITON_INTERPRET=1), else the torch
    reference; both are differentiable in x, shift and scale.
    """
    _check(x, shift, scale)
    if _triton.kernel_applies(x, shift, scale):
        return torch.ops.osora.modulate(x, shift, scale, eps)
    return modulate_reference(x, shift, scale, eps)
