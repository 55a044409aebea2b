"""osora.kernels.rope: the Triton kernel (in Triton's CPU interpreter) against the torch
reference in both layouts, forward and backward; the reference against the pair formulas; the
dispatch; the custom op under torch.compile."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_helpers import assert_custom_op, bf16_close, leaves, op_module, run_interpreted

from osora.kernels import apply_rope, apply_rope_reference

LAYOUTS = ("interleaved", "rotate_half")


def test_kernels_in_interpreter():
    """The test_triton_* tests below, in a child process with TRITON_INTERPRET=1."""
    run_interpreted(__file__)


def _tables(n, d, dtype=torch.float32):
    """Real rotary tables: angle n · 10000^(-2i/d), (N, D/2) each."""
    freqs = 10000.0 ** (-torch.arange(d // 2, dtype=torch.float64) * 2 / d)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * freqs[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _inputs(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    tables = _tables(shape[2], shape[3], torch.float64 if dtype == torch.float64 else torch.float32)
    return (x, *tables)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_is_the_pair_rotation(layout):
    # out[a] = x[a]·cos − x[b]·sin, out[b] = x[a]·sin + x[b]·cos for the pairs (a, b) of the
    # layout, written out element by element.
    x, cos, sin = _inputs((1, 2, 3, 8), torch.float64)
    half = 4
    want = torch.empty_like(x)
    for i in range(half):
        a, b = (2 * i, 2 * i + 1) if layout == "interleaved" else (i, i + half)
        c, s = cos[:, i], sin[:, i]
        want[..., a] = x[..., a] * c - x[..., b] * s
        want[..., b] = x[..., a] * s + x[..., b] * c
    torch.testing.assert_close(apply_rope_reference(x, cos, sin, layout), want)
    # a rotation keeps each pair's norm
    y = apply_rope_reference(x, cos, sin, layout)
    assert math.isclose(y.norm().item(), x.norm().item(), rel_tol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 2, 8, 16), (2, 3, 5, 12)])  # D/2 = 6: masked lanes
def test_triton_matches_reference_float32(interpret, small_tiles, layout, shape):
    x, cos, sin = _inputs(shape)
    dy = torch.randn(shape)
    xt, = leaves(x)
    y = apply_rope(xt, cos, sin, layout)
    assert_custom_op(y, "apply_rope")
    y.backward(dy)
    xr, = leaves(x)
    yr = apply_rope_reference(xr, cos, sin, layout)
    yr.backward(dy)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xt.grad, xr.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_gradcheck_float64(interpret, layout):
    # float64 kernels; cos and sin take gradients too (computed in torch from the saved x).
    x, cos, sin = _inputs((1, 2, 3, 8), torch.float64)
    assert_custom_op(apply_rope(*leaves(x), cos, sin, layout), "apply_rope")
    assert torch.autograd.gradcheck(lambda x, c, s: apply_rope(x, c, s, layout),
                                    leaves(x, cos, sin))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_bf16_within_tolerance(interpret, layout):
    x, cos, sin = _inputs((1, 2, 8, 16), torch.bfloat16)
    dy = torch.randn(x.shape).to(torch.bfloat16)
    xt, = leaves(x)
    y = apply_rope(xt, cos.float(), sin.float(), layout)
    y.backward(dy)
    assert y.dtype == torch.bfloat16 and xt.grad.dtype == torch.bfloat16
    xr, = leaves(x.float())
    yr = apply_rope_reference(xr, cos.float(), sin.float(), layout)
    yr.backward(dy.float())
    bf16_close(y, yr)
    bf16_close(xt.grad, xr.grad)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_strided_input(interpret, layout):
    # q as it comes out of a fused qkv projection: (B, N, 3, H, D) → (B, H, N, D) view, read
    # in place through its strides; the output is contiguous.
    qkv = torch.randn(2, 5, 3, 2, 8)
    q = qkv[:, :, 0].transpose(1, 2)
    assert not q.is_contiguous()
    cos, sin = _tables(5, 8)
    y = apply_rope(q, cos, sin, layout)
    assert y.is_contiguous()
    torch.testing.assert_close(y, apply_rope_reference(q, cos, sin, layout), rtol=1e-5,
                               atol=1e-6)


def test_reference_on_cpu_without_interpreter(no_interpret, monkeypatch):
    mod = op_module("rope")

    def fail(*args, **kwargs):
        raise AssertionError("the Triton path ran on CPU without TRITON_INTERPRET")

    monkeypatch.setattr(mod, "_rope_triton", fail)
    x, cos, sin = _inputs((1, 2, 4, 8))
    xt, = leaves(x)
    y = apply_rope(xt, cos, sin)
    assert "osora" not in y.grad_fn.name()
    # the custom op itself runs the reference math on CPU, forward and backward
    xo, = leaves(x)
    yo = torch.ops.osora.apply_rope(xo, cos, sin, "interleaved")
    torch.testing.assert_close(yo, y)
    yo.square().sum().backward()
    y.square().sum().backward()
    torch.testing.assert_close(xo.grad, xt.grad)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(layout):
    x = torch.randn(1, 4, 2, 8).transpose(1, 2)  # (1, 2, 4, 8), strided
    cos, sin = _tables(4, 8)
    torch.library.opcheck(torch.ops.osora.apply_rope.default, (*leaves(x), cos, sin, layout))
    torch.library.opcheck(torch.ops.osora.apply_rope.default,
                          (*leaves(x, cos, sin), layout))  # with table gradients
    torch.library.opcheck(torch.ops.osora.apply_rope_backward.default, (x, cos, sin, layout))


def test_compile_fullgraph(no_interpret):
    def fn(x, cos, sin):
        return (apply_rope(x, cos, sin).square().sum()
                + torch.ops.osora.apply_rope(x, cos, sin, "rotate_half").square().sum())

    x, cos, sin = _inputs((1, 2, 4, 8))
    xc, = leaves(x)
    torch.compile(fn, fullgraph=True, backend="aot_eager")(xc, cos, sin).backward()
    xe, = leaves(x)
    fn(xe, cos, sin).backward()
    torch.testing.assert_close(xc.grad, xe.grad)


@pytest.mark.parametrize("args, match", [
    (((1, 2, 4, 8), (4, 4), (4, 4), "halves"), "layout must be one of"),
    (((2, 4, 8), (4, 4), (4, 4), "interleaved"), r"x must be \(B, H, N, D\)"),
    (((1, 2, 4, 7), (4, 3), (4, 3), "interleaved"), "D even"),
    (((1, 2, 4, 8), (4, 8), (4, 8), "interleaved"), r"cos and sin must be \(N, D/2\)"),
])
def test_bad_inputs(args, match):
    xs, cs, ss, layout = args
    with pytest.raises(ValueError, match=match):
        apply_rope(torch.randn(xs), torch.randn(cs), torch.randn(ss), layout)
