"""The Triton kernels compiled and run on a CUDA GPU, against the torch references, at sizes
with several programs per grid (head_dim 128, hidden 3072); and torch.compile (inductor) of a
block-like function using the ops. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import assert_custom_op, bf16_close, leaves

from osora.kernels import (
    apply_rope,
    apply_rope_reference,
    modulate,
    modulate_reference,
    rms_norm,
    rms_norm_reference,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def compiled_kernels(no_interpret):
    pytest.importorskip("triton")


def _check(y, yr, grads, grads_ref, dtype):
    if dtype == torch.bfloat16:
        bf16_close(y, yr)
        for g, gr in zip(grads, grads_ref):
            bf16_close(g, gr)
    else:
        torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
        for g, gr in zip(grads, grads_ref):
            torch.testing.assert_close(g, gr, rtol=1e-4, atol=1e-4)


def _run(fn, ref, inputs, grad_idx, dtype, op):
    """fn and ref forward+backward on the same values; ref in float32 (float64 for the
    weight-like sums is not needed at these sizes)."""
    dy = torch.randn_like(fn(*inputs).float()).to(dtype)
    got = [t.detach().clone().requires_grad_(i in grad_idx) for i, t in enumerate(inputs)]
    y = fn(*got)
    assert_custom_op(y, op)
    gs = torch.autograd.grad(y, [got[i] for i in grad_idx], dy)
    want = [t.detach().float().requires_grad_(i in grad_idx) for i, t in enumerate(inputs)]
    yr = ref(*want)
    grs = torch.autograd.grad(yr, [want[i] for i in grad_idx], dy.float())
    _check(y, yr, gs, grs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_cuda(dtype):
    q = torch.randn(2, 4, 300, 128, device="cuda").to(dtype)
    w = (1 + 0.1 * torch.randn(128, device="cuda")).to(dtype)
    _run(rms_norm, rms_norm_reference, (q, w), (0, 1), dtype, "rms_norm")


@pytest.mark.parametrize("layout", ["interleaved", "rotate_half"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_rope_cuda(dtype, layout):
    qkv = torch.randn(2, 300, 3, 4, 128, device="cuda").to(dtype)
    q = qkv[:, :, 0].transpose(1, 2)  # (B, H, N, D) view, read in place
    angles = torch.rand(300, 64, device="cuda") * 6.28
    cos, sin = angles.cos(), angles.sin()

    def fn(x, c, s):
        return apply_rope(x, c, s, layout)

    def ref(x, c, s):
        return apply_rope_reference(x, c, s, layout)

    _run(fn, ref, (q, cos, sin), (0,), dtype, "apply_rope")


@pytest.mark.parametrize("mods", [(2, 1, 3072), (2, 3072), (1, 3072)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_modulate_cuda(dtype, mods):
    x = (1 + torch.randn(2, 300, 3072, device="cuda")).to(dtype)
    shift = torch.randn(mods, device="cuda").to(dtype)
    scale = (0.1 * torch.randn(mods, device="cuda")).to(dtype)
    _run(modulate, modulate_reference, (x, shift, scale), (0, 1, 2), dtype, "modulate")


def test_inductor_compiles_the_ops():
    # A block-like chain under torch.compile (inductor, fullgraph): the custom ops stay opaque
    # calls to the Triton kernels; forward and backward match eager.
    torch._dynamo.reset()
    d, heads = 256, 2
    x = torch.randn(2, 64, d, device="cuda", dtype=torch.bfloat16)
    shift, scale = torch.randn(2, 2, d, device="cuda", dtype=torch.bfloat16).unbind(1)
    w = torch.ones(d // heads, device="cuda", dtype=torch.bfloat16)
    angles = torch.rand(64, d // heads // 2, device="cuda")
    cos, sin = angles.cos(), angles.sin()

    def block(x, shift, scale, w):
        h = modulate(x, shift, scale)  # (B, N, D)
        q = h.view(2, 64, heads, d // heads).transpose(1, 2)  # (B, H, N, Dh)
        q = apply_rope(rms_norm(q, w), cos, sin)
        return q.float().square().sum()

    eager = leaves(x, shift, scale, w)
    compiled = leaves(x, shift, scale, w)
    block(*eager).backward()
    torch.compile(block, fullgraph=True)(*compiled).backward()
    for a, b in zip(compiled, eager):
        bf16_close(a.grad, b.grad)
