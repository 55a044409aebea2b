"""RMSNorm over the last dimension: y = x / sqrt(mean(x², -1) + eps) · weight.

The MMDiT's QK norm (per head, D = 128) and its other RMS norms. One read of x and one write of
y forward; backward reads x and dy once each (rstd is recomputed from the row, not saved) and
writes dx, with dweight summed per program on a persistent grid and the partials added in torch.

- `rms_norm_reference`: pure torch, float32 math for half inputs (float64 stays float64),
  returns x's dtype. The weight is applied in float32 before the one rounding to x's dtype
  (osora.models.layers.rms_norm rounds before the weight, as FLUX does: within 1 ulp).
- `torch.ops.osora.rms_norm` / `osora::rms_norm_backward`: custom ops with fake (meta) kernels
  and autograd; the backward is the Triton backward kernel. On tensors Triton cannot take
  (CPU without TRITON_INTERPRET=1, no triton), both run the reference math, so the ops work
  everywhere (torch.compile traces them through the fake kernels).
- `rms_norm`: Triton op when `_triton.use_triton` says so, else the reference (which inductor
  can fuse on its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from osora.kernels import _triton
from osora.kernels._triton import lazy_kernel

if TYPE_CHECKING:  # the kernels' `tl`, bound at their first launch (_triton.LazyKernel)
    import triton.language as tl


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(..., D), weight (D,) → (..., D) in x's dtype; float32 math (float64 for float64)."""
    dt = _triton.compute_dtype(x.dtype)
    xf = x.to(dt)
    y = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps) * weight.to(dt)
    return y.to(x.dtype)


def _rms_norm_backward_reference(dy, x, weight, eps):
    """Analytic backward of rms_norm_reference: (dx in x's dtype, dweight in weight's)."""
    dt = _triton.compute_dtype(x.dtype)
    xf, dyf, wf = x.to(dt), dy.to(dt), weight.to(dt)
    rstd = torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    xhat = xf * rstd
    wdy = dyf * wf
    dx = (wdy - xhat * (xhat * wdy).mean(dim=-1, keepdim=True)) * rstd
    dw = (dyf * xhat).reshape(-1, x.shape[-1]).sum(0)
    return dx.to(x.dtype), dw.to(weight.dtype)


# ----------------------------------------------------------------------------- Triton kernels


@lazy_kernel
def _rms_norm_fwd_kernel(X, W, Y, n_rows, D, stride_x, stride_y, eps,
                         ROWS: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    # One program: ROWS whole rows (ROWS × BLOCK_D tile).
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    mask = (rows < n_rows)[:, None] & cmask[None, :]
    rows = rows.to(tl.int64)
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(ACC)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(ACC)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)  # (ROWS,)
    y = x * rstd[:, None] * w[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@lazy_kernel
def _rms_norm_bwd_kernel(DY, X, W, DX, DW_PART, n_rows, D, stride_dy, stride_x, stride_dx, eps,
                         ROWS: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    # Persistent grid: program p takes row tiles p, p + P, p + 2P, ... and sums its share of
    # dweight = Σ_rows dy · xhat into DW_PART[p].
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(W + cols, mask=cmask, other=0.0).to(ACC)
    dw = tl.zeros((BLOCK_D,), dtype=ACC)
    for start in range(pid * ROWS, n_rows, n_prog * ROWS):
        rows = start + tl.arange(0, ROWS)
        mask = (rows < n_rows)[:, None] & cmask[None, :]
        rows = rows.to(tl.int64)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(ACC)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(ACC)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)
        xhat = x * rstd[:, None]
        wdy = dy * w[None, :]
        c = tl.sum(xhat * wdy, axis=1) / D
        dx = (wdy - xhat * c[:, None]) * rstd[:, None]
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty),
                 mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
    tl.store(DW_PART + pid * BLOCK_D + cols, dw, mask=cmask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., D) as (rows, D) with a unit last stride (a view where possible)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 or t2.shape[0] == 0 else t2.contiguous()


def _fwd_triton(x, weight, eps):
    x2 = _rows(x)
    n_rows, d = x2.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n_rows == 0:
        return y
    y2 = y.view(n_rows, d)
    block_d, rows, warps = _triton.row_tile(d, n_rows)
    with _triton.on_device(x):
        _rms_norm_fwd_kernel[(_triton.cdiv(n_rows, rows),)](
            x2, weight.contiguous(), y2, n_rows, d, x2.stride(0), y2.stride(0), eps,
            ROWS=rows, BLOCK_D=block_d, ACC=_triton.tl_compute_dtype(x.dtype), num_warps=warps)
    return y


def _bwd_triton(dy, x, weight, eps):
    x2, dy2 = _rows(x), _rows(dy)
    n_rows, d = x2.shape
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n_rows == 0:
        return dx, torch.zeros_like(weight)
    dx2 = dx.view(n_rows, d)
    block_d, rows, warps = _triton.row_tile(d, n_rows)
    n_prog = _triton.persistent_programs(x.device, _triton.cdiv(n_rows, rows))
    acc = _triton.compute_dtype(x.dtype)
    dw_part = torch.empty((n_prog, block_d), dtype=acc, device=x.device)
    with _triton.on_device(x):
        _rms_norm_bwd_kernel[(n_prog,)](
            dy2, x2, weight.contiguous(), dx2, dw_part, n_rows, d,
            dy2.stride(0), x2.stride(0), dx2.stride(0), eps,
            ROWS=rows, BLOCK_D=block_d, ACC=_triton.tl_compute_dtype(x.dtype), num_warps=warps)
    return dx, dw_part.sum(0)[:d].to(weight.dtype)


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("osora::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if _triton.kernel_applies(x, weight):
        return _fwd_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps).contiguous()  # the fake's layout


@_rms_norm_op.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("osora::rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    if _triton.kernel_applies(x, weight):
        return _bwd_triton(dy, x, weight, eps)
    dx, dw = _rms_norm_backward_reference(dy, x, weight, eps)
    return dx.contiguous(), dw


@_rms_norm_backward_op.register_fake
def _(dy, x, weight, eps):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw = torch.ops.osora.rms_norm_backward(dy, x, weight, ctx.eps)
    return dx, dw, None


_rms_norm_op.register_autograd(_backward, setup_context=_setup_context)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.ndim == 0 or weight.shape != (x.shape[-1],):
        d = x.shape[-1] if x.ndim else "?"
        raise ValueError(f"rms_norm: weight must have shape (D,) = ({d},) for x of shape "
                         f"{tuple(x.shape)}; got {tuple(weight.shape)}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS norm over the last dim: (..., D), weight (D,) → (..., D) in x's dtype.

    The fused Triton op where Triton runs (CUDA, or TRITON_INTERPRET=1), else the torch
    reference; both are differentiable in x and weight.
    """
    _check(x, weight)
    if _triton.kernel_applies(x, weight):
        return torch.ops.osora.rms_norm(x, weight, eps)
    return rms_norm_reference(x, weight, eps)
