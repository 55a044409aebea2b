"""osora.kernels.rms_norm: the Triton kernels (in Triton's CPU interpreter) against the torch
reference, forward and backward; the dispatch; the custom op under torch.compile."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import assert_custom_op, bf16_close, leaves, op_module, run_interpreted

from osora.kernels import rms_norm, rms_norm_reference

SHAPES = [(1, 2, 8, 16), (2, 3, 24), (5, 12)]  # QK-norm-like, non-power-of-2 D, 2-D


def test_kernels_in_interpreter():
    """The test_triton_* tests below, in a child process with TRITON_INTERPRET=1."""
    run_interpreted(__file__)


def _inputs(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    w = (1 + 0.5 * torch.randn(shape[-1], generator=g, dtype=torch.float64)).to(dtype)
    return x, w


@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference_float32(interpret, small_tiles, shape):
    x, w = _inputs(shape)
    dy = torch.randn(shape)
    xt, wt = leaves(x, w)
    y = rms_norm(xt, wt, 1e-6)
    assert_custom_op(y, "rms_norm")
    y.backward(dy)
    xr, wr = leaves(x, w)
    yr = rms_norm_reference(xr, wr, 1e-6)
    yr.backward(dy)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xt.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wt.grad, wr.grad, rtol=1e-5, atol=1e-5)


def test_triton_gradcheck_float64(interpret, small_tiles):
    # The kernels compute in float64 for float64 inputs, so gradcheck's finite differences
    # check the Triton backward kernel itself.
    x, w = _inputs((2, 3, 8), torch.float64)
    assert_custom_op(rms_norm(*leaves(x, w)), "rms_norm")
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, 1e-6), leaves(x, w))


def test_triton_bf16_within_tolerance(interpret):
    x, w = _inputs((1, 2, 8, 16), torch.bfloat16)
    dy = torch.randn(x.shape).to(torch.bfloat16)
    xt, wt = leaves(x, w)
    y = rms_norm(xt, wt)
    y.backward(dy)
    assert y.dtype == torch.bfloat16 and xt.grad.dtype == torch.bfloat16
    # against the float32 reference on the same (bf16-exact) values
    xr, wr = leaves(x.float(), w.float())
    yr = rms_norm_reference(xr, wr)
    yr.backward(dy.float())
    bf16_close(y, yr)
    bf16_close(xt.grad, xr.grad)
    bf16_close(wt.grad, wr.grad)


def test_triton_noncontiguous_input(interpret):
    # QK norm on a (B, H, N, D) view of a (B, N, H, D) projection: read through a copy-free
    # reshape where possible, a copy otherwise; the result is the same.
    x, w = _inputs((1, 8, 2, 16))
    xt = x.transpose(1, 2)
    torch.testing.assert_close(rms_norm(xt, w), rms_norm_reference(xt, w), rtol=1e-5, atol=1e-6)


def test_reference_on_cpu_without_interpreter(no_interpret, monkeypatch):
    mod = op_module("rms_norm")

    def fail(*args):
        raise AssertionError("the Triton path ran on CPU without TRITON_INTERPRET")

    monkeypatch.setattr(mod, "_fwd_triton", fail)
    monkeypatch.setattr(mod, "_bwd_triton", fail)
    x, w = _inputs((2, 3, 16))
    xt, wt = leaves(x, w)
    y = rms_norm(xt, wt)
    assert "osora" not in y.grad_fn.name()  # the reference's own autograd graph
    torch.testing.assert_close(y, rms_norm_reference(x, w))
    # the custom op itself runs the reference math on CPU, forward and backward
    xo, wo = leaves(x, w)
    yo = torch.ops.osora.rms_norm(xo, wo, 1e-6)
    yo.sum().backward()
    y.sum().backward()
    torch.testing.assert_close(yo, y)
    torch.testing.assert_close(xo.grad, xt.grad)
    torch.testing.assert_close(wo.grad, wt.grad)


def test_opcheck():
    x, w = _inputs((2, 3, 16))
    torch.library.opcheck(torch.ops.osora.rms_norm.default, (*leaves(x, w), 1e-6))
    dy = torch.randn(x.shape)
    torch.library.opcheck(torch.ops.osora.rms_norm_backward.default, (dy, x, w, 1e-6))


def test_compile_fullgraph(no_interpret):
    # dynamo + the fake kernels + AOTAutograd (aot_eager: inductor's C++ build is too slow
    # for the 2-core CI), forward and backward, both the public function and the op itself.
    def fn(x, w):
        return rms_norm(x, w).sum() + torch.ops.osora.rms_norm(x * 2, w, 1e-6).square().sum()

    x, w = _inputs((2, 3, 16))
    xc, wc = leaves(x, w)
    torch.compile(fn, fullgraph=True, backend="aot_eager")(xc, wc).backward()
    xe, we = leaves(x, w)
    fn(xe, we).backward()
    torch.testing.assert_close(xc.grad, xe.grad)
    torch.testing.assert_close(wc.grad, we.grad)


def test_bad_weight_shape():
    with pytest.raises(ValueError, match=r"weight must have shape \(D,\)"):
        rms_norm(torch.randn(2, 16), torch.randn(8))
