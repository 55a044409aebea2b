"""osora.kernels.modulate: LayerNorm + adaLN modulation, the Triton kernels (in Triton's CPU
interpreter) against the torch reference, forward and backward; the dispatch; the custom op
under torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import assert_custom_op, bf16_close, leaves, op_module, run_interpreted

from osora.kernels import modulate, modulate_reference

# (x shape, shift/scale shape): per-sample (B, 1, D) and (B, D), one row broadcast over B,
# non-power-of-2 D.
CASES = [((2, 8, 16), (2, 1, 16)), ((2, 5, 24), (2, 24)), ((3, 4, 16), (1, 16))]


def test_kernels_in_interpreter():
    """The test_triton_* tests below, in a child process with TRITON_INTERPRET=1."""
    run_interpreted(__file__)


def _inputs(xs, ms, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (3 + 2 * torch.randn(xs, generator=g, dtype=torch.float64)).to(dtype)  # mean ≠ 0
    shift = torch.randn(ms, generator=g, dtype=torch.float64).to(dtype)
    scale = (0.5 * torch.randn(ms, generator=g, dtype=torch.float64)).to(dtype)
    return x, shift, scale


def test_reference_is_layer_norm_then_modulation():
    x, shift, scale = _inputs((2, 4, 16), (2, 1, 16), torch.float64)
    want = F.layer_norm(x, (16,), eps=1e-6) * (1 + scale) + shift
    torch.testing.assert_close(modulate_reference(x, shift, scale), want)
    torch.testing.assert_close(modulate_reference(x, shift[:, 0], scale[:, 0]), want)


@pytest.mark.parametrize("xs, ms", CASES)
def test_triton_matches_reference_float32(interpret, small_tiles, xs, ms):
    x, shift, scale = _inputs(xs, ms)
    dy = torch.randn(xs)
    xt, sht, sct = leaves(x, shift, scale)
    y = modulate(xt, sht, sct)
    assert_custom_op(y, "modulate")
    y.backward(dy)
    xr, shr, scr = leaves(x, shift, scale)
    yr = modulate_reference(xr, shr, scr)
    yr.backward(dy)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    for got, want in ((xt, xr), (sht, shr), (sct, scr)):
        assert got.grad.shape == want.grad.shape
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ms", [CASES[0][1], CASES[2][1]])
def test_triton_gradcheck_float64(interpret, small_tiles, ms):
    x, shift, scale = _inputs((2, 2, 8), (ms[0],) + ms[1:-1] + (8,), torch.float64)
    assert_custom_op(modulate(*leaves(x, shift, scale)), "modulate")
    assert torch.autograd.gradcheck(lambda x, sh, sc: modulate(x, sh, sc),
                                    leaves(x, shift, scale))


def test_triton_bf16_within_tolerance(interpret):
    x, shift, scale = _inputs((2, 8, 16), (2, 1, 16), torch.bfloat16)
    dy = torch.randn(x.shape).to(torch.bfloat16)
    xt, sht, sct = leaves(x, shift, scale)
    y = modulate(xt, sht, sct)
    y.backward(dy)
    assert y.dtype == torch.bfloat16 and xt.grad.dtype == torch.bfloat16
    xr, shr, scr = leaves(x.float(), shift.float(), scale.float())
    yr = modulate_reference(xr, shr, scr)
    yr.backward(dy.float())
    bf16_close(y, yr)
    for got, want in ((xt, xr), (sht, shr), (sct, scr)):
        bf16_close(got.grad, want.grad)


def test_triton_strided_input(interpret):
    # x as a slice of a wider tensor (row stride > D) and mods chunked out of one projection
    x = torch.randn(2, 5, 32)[..., :16]
    mods = torch.randn(2, 1, 3 * 16)
    shift, scale = mods[..., 16:32], mods[..., 32:]
    torch.testing.assert_close(modulate(x, shift, scale), modulate_reference(x, shift, scale),
                               rtol=1e-5, atol=1e-5)


def test_reference_on_cpu_without_interpreter(no_interpret, monkeypatch):
    mod = op_module("modulate")

    def fail(*args):
        raise AssertionError("the Triton path ran on CPU without TRITON_INTERPRET")

    monkeypatch.setattr(mod, "_fwd_triton", fail)
    monkeypatch.setattr(mod, "_bwd_triton", fail)
    x, shift, scale = _inputs((2, 4, 16), (1, 16))
    xt, sht, sct = leaves(x, shift, scale)
    y = modulate(xt, sht, sct)
    assert "osora" not in y.grad_fn.name()
    # the custom op itself runs the reference math on CPU, forward and backward
    xo, sho, sco = leaves(x, shift, scale)
    yo = torch.ops.osora.modulate(xo, sho, sco, 1e-6)
    torch.testing.assert_close(yo, y)
    yo.square().sum().backward()
    y.square().sum().backward()
    for got, want in ((xo, xt), (sho, sht), (sco, sct)):
        torch.testing.assert_close(got.grad, want.grad)


@pytest.mark.parametrize("xs, ms", [CASES[0], CASES[2]])
def test_opcheck(xs, ms):
    x, shift, scale = _inputs(xs, ms)
    torch.library.opcheck(torch.ops.osora.modulate.default, (*leaves(x, shift, scale), 1e-6))
    torch.library.opcheck(torch.ops.osora.modulate_backward.default,
                          (torch.randn(xs), x, shift, scale, 1e-6))


def test_compile_fullgraph(no_interpret):
    def fn(x, shift, scale):
        return (modulate(x, shift, scale).square().sum()
                + torch.ops.osora.modulate(x, shift, scale, 1e-6).sum())

    x, shift, scale = _inputs((2, 4, 16), (2, 1, 16))
    compiled = leaves(x, shift, scale)
    torch.compile(fn, fullgraph=True, backend="aot_eager")(*compiled).backward()
    eager = leaves(x, shift, scale)
    fn(*eager).backward()
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got.grad, want.grad)


@pytest.mark.parametrize("xs, ms, match", [
    ((2, 16), (2, 16), r"x must be \(B, N, D\)"),
    ((2, 4, 16), (2, 2, 16), "shift must be"),
    ((2, 4, 16), (3, 16), "shift must be"),
    ((2, 4, 16), (2, 8), "shift must be"),
])
def test_bad_shapes(xs, ms, match):
    with pytest.raises(ValueError, match=match):
        modulate(torch.randn(xs), torch.randn(ms), torch.randn(ms))
