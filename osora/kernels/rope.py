"""Rotary position embedding applied to q or k: one read of x, one write of the rotated x.

x (B, H, N, D) with rotation tables cos, sin (N, D/2); pair i (i < D/2) is rotated by the angle
whose cos/sin are cos[n, i], sin[n, i]. Two layouts name which elements form pair i:

    interleaved  (x[2i], x[2i+1])       FLUX, Open-Sora 2.0
        out[2i]   = x[2i]·cos_i − x[2i+1]·sin_i,   out[2i+1] = x[2i]·sin_i + x[2i+1]·cos_i
    rotate_half  (x[i], x[i + D/2])      GPT-NeoX, HunyuanVideo
        out[i]    = x[i]·cos_i − x[i+D/2]·sin_i,   out[i+D/2] = x[i]·sin_i + x[i+D/2]·cos_i

- `apply_rope_reference`: pure torch, float32 math (float64 stays), returns x's dtype.
- `torch.ops.osora.apply_rope` / `osora::apply_rope_backward`: custom ops with fake kernels and
  autograd. The backward of a rotation is the rotation by −angle: the same Triton kernel with
  sin negated in registers. Gradients for cos/sin (rarely wanted: they are buffers) are computed
  in torch from the saved x when asked for. Without Triton both ops run the reference math.
- `apply_rope`: Triton op where Triton runs, else the reference.

x may be any strided (B, H, N, D) with a unit last stride (e.g. q permuted out of a fused qkv
projection) and is read in place; the output is contiguous (B, H, N, D).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from osora.kernels import _triton
from osora.kernels._triton import lazy_kernel

if TYPE_CHECKING:  # the kernels' `tl`, bound at their first launch (_triton.LazyKernel)
    import triton.language as tl

LAYOUTS = ("interleaved", "rotate_half")


def _pairs(x: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two members of each rotated pair, each (..., D/2)."""
    if layout == "interleaved":
        return x[..., 0::2], x[..., 1::2]
    return x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]


def _unpairs(a: torch.Tensor, b: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "interleaved":
        return torch.stack((a, b), dim=-1).flatten(-2)
    return torch.cat((a, b), dim=-1)


def apply_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         layout: str = "interleaved") -> torch.Tensor:
    """x (B, H, N, D), cos/sin (N, D/2) → (B, H, N, D) in x's dtype; float32 math."""
    dt = _triton.compute_dtype(x.dtype)
    x1, x2 = _pairs(x.to(dt), layout)  # (B, H, N, D/2) each
    c, s = cos.to(dt), sin.to(dt)  # (N, D/2), broadcast over B, H
    return _unpairs(x1 * c - x2 * s, x1 * s + x2 * c, layout).to(x.dtype)


def _table_grads(dy, x, layout):
    """d/dcos and d/dsin of apply_rope given its output gradient dy and input x: (N, D/2)."""
    dt = _triton.compute_dtype(x.dtype)
    g1, g2 = _pairs(dy.to(dt), layout)
    x1, x2 = _pairs(x.to(dt), layout)
    dcos = (g1 * x1 + g2 * x2).sum(dim=(0, 1))
    dsin = (g2 * x1 - g1 * x2).sum(dim=(0, 1))
    return dcos, dsin


# ----------------------------------------------------------------------------- Triton kernel


@lazy_kernel
def _rope_kernel(X, COS, SIN, Y, H, N, HALF,
                 stride_xb, stride_xh, stride_xn, stride_yb, stride_yh, stride_yn,
                 stride_cn, stride_sn,
                 INVERSE: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_HALF: tl.constexpr, ACC: tl.constexpr):
    # One program: BLOCK_N tokens of one (b, h). Programs next to each other in launch order
    # share the token block (axis 0 is b·H + h), so the cos/sin tile comes from L2.
    pid_bh = tl.program_id(0)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    i = tl.arange(0, BLOCK_HALF)
    nmask = n < N
    mask = nmask[:, None] & (i < HALF)[None, :]
    n = n.to(tl.int64)
    c = tl.load(COS + n[:, None] * stride_cn + i[None, :], mask=mask, other=0.0).to(ACC)
    s = tl.load(SIN + n[:, None] * stride_sn + i[None, :], mask=mask, other=0.0).to(ACC)
    if INVERSE:  # the transpose of a rotation: rotate by −angle
        s = -s
    xrow = X + b * stride_xb + h * stride_xh + n[:, None] * stride_xn  # (BLOCK_N, 1) pointers
    yrow = Y + b * stride_yb + h * stride_yh + n[:, None] * stride_yn
    if INTERLEAVED:
        # Contiguous load of whole rows, de-interleaved in registers (no stride-2 accesses).
        d = tl.arange(0, 2 * BLOCK_HALF)
        dmask = nmask[:, None] & (d < 2 * HALF)[None, :]
        xx = tl.load(xrow + d[None, :], mask=dmask, other=0.0).to(ACC)
        x1, x2 = tl.split(tl.reshape(xx, (BLOCK_N, BLOCK_HALF, 2)))
        y1 = x1 * c - x2 * s
        y2 = x1 * s + x2 * c
        yy = tl.reshape(tl.join(y1, y2), (BLOCK_N, 2 * BLOCK_HALF))
        tl.store(yrow + d[None, :], yy.to(Y.dtype.element_ty), mask=dmask)
    else:
        x1 = tl.load(xrow + i[None, :], mask=mask, other=0.0).to(ACC)
        x2 = tl.load(xrow + HALF + i[None, :], mask=mask, other=0.0).to(ACC)
        y1 = x1 * c - x2 * s
        y2 = x1 * s + x2 * c
        tl.store(yrow + i[None, :], y1.to(Y.dtype.element_ty), mask=mask)
        tl.store(yrow + HALF + i[None, :], y2.to(Y.dtype.element_ty), mask=mask)


def _rope_triton(x, cos, sin, layout, inverse):
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    bsz, heads, n, d = x.shape
    y = torch.empty((bsz, heads, n, d), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    half = d // 2
    block_half = _triton.next_pow2(half)
    block_n = max(1, min(_triton.TILE_ELEMENTS // (2 * block_half), _triton.next_pow2(n)))
    grid = (bsz * heads, _triton.cdiv(n, block_n))
    with _triton.on_device(x):
        _rope_kernel[grid](
            x, cos, sin, y, heads, n, half,
            x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
            cos.stride(0), sin.stride(0),
            INVERSE=inverse, INTERLEAVED=layout == "interleaved", BLOCK_N=block_n,
            BLOCK_HALF=block_half, ACC=_triton.tl_compute_dtype(x.dtype), num_warps=4)
    return y


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("osora::apply_rope", mutates_args=())
def _apply_rope_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   layout: str) -> torch.Tensor:
    if _triton.kernel_applies(x, cos, sin):
        return _rope_triton(x, cos, sin, layout, inverse=False)
    return apply_rope_reference(x, cos, sin, layout).contiguous()  # the fake's layout


@_apply_rope_op.register_fake
def _(x, cos, sin, layout):
    return x.new_empty(x.shape)


@torch.library.custom_op("osora::apply_rope_backward", mutates_args=())
def _apply_rope_backward_op(dy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                            layout: str) -> torch.Tensor:
    if _triton.kernel_applies(dy, cos, sin):
        return _rope_triton(dy, cos, sin, layout, inverse=True)
    return apply_rope_reference(dy, cos, -sin, layout).contiguous()


@_apply_rope_backward_op.register_fake
def _(dy, cos, sin, layout):
    return dy.new_empty(dy.shape)


def _setup_context(ctx, inputs, output):
    x, cos, sin, layout = inputs
    ctx.layout = layout
    ctx.tables_need_grad = cos.requires_grad or sin.requires_grad
    # x is kept only for the tables' gradients: the rotation's own backward does not need it.
    ctx.save_for_backward(cos, sin, x if ctx.tables_need_grad else None)


def _backward(ctx, dy):
    cos, sin, x = ctx.saved_tensors
    dx = torch.ops.osora.apply_rope_backward(dy, cos, sin, ctx.layout)
    dcos = dsin = None
    if ctx.tables_need_grad:
        dcos, dsin = _table_grads(dy, x, ctx.layout)
        dcos, dsin = dcos.to(cos.dtype), dsin.to(sin.dtype)
    return dx, dcos, dsin, None


_apply_rope_op.register_autograd(_backward, setup_context=_setup_context)


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"apply_rope: layout must be one of {LAYOUTS}; got {layout!r}")
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ValueError(f"apply_rope: x must be (B, H, N, D) with D even; got {tuple(x.shape)}")
    want = (x.shape[2], x.shape[3] // 2)
    if tuple(cos.shape) != want or tuple(sin.shape) != want:
        raise ValueError(f"apply_rope: cos and sin must be (N, D/2) = {want} for x of shape "
                         f"{tuple(x.shape)}; got {tuple(cos.shape)} and {tuple(sin.shape)}")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               layout: str = "interleaved") -> torch.Tensor:
    """Rotate x (B, H, N, D) by the tables cos, sin (N, D/2) → (B, H, N, D) in x's dtype.

    `layout` is "interleaved" (pairs 2i, 2i+1) or "rotate_half" (pairs i, i + D/2). The fused
    Triton op where Triton runs (CUDA, or TRITON_INTERPRET=1), else the torch reference.
    """
    _check(x, cos, sin, layout)
    if _triton.kernel_applies(x, cos, sin):
        return torch.ops.osora.apply_rope(x, cos, sin, layout)
    return apply_rope_reference(x, cos, sin, layout)
