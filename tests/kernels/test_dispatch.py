"""osora.kernels as a whole: the dispatch rule, import hygiene (torch only; works without
triton), the benchmark's CPU exit, and the kernels compiling for Hopper (sm_90) with Triton's
real compiler, which runs without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from kernel_helpers import op_module

from osora.kernels import _triton

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, **env) -> str:
    import os

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **env}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_interpreter_needs_the_switch_before_import():
    # A process that imported triton without TRITON_INTERPRET cannot interpret kernels later:
    # the launch says so instead of failing inside Triton.
    pytest.importorskip("triton")
    out = _python(
        "import os, torch, triton\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from osora.kernels import rms_norm\n"
        "try:\n"
        "    rms_norm(torch.randn(2, 8), torch.ones(8))\n"
        "except RuntimeError as e:\n"
        "    print(e)\n",
        TRITON_INTERPRET="0")
    assert "set after triton was imported" in out


def test_use_triton_rule(monkeypatch):
    cpu = torch.zeros(1)
    cuda_like = SimpleNamespace(is_cuda=True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not _triton.use_triton(cpu)
    assert not _triton.use_triton(cuda_like, cpu)  # every tensor must be on CUDA
    assert _triton.use_triton(cuda_like) == _triton.available()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _triton.use_triton(cpu) == _triton.available()


def test_import_is_torch_only():
    # Importing osora.kernels and running the ops on CPU never imports triton.
    out = _python(
        "import sys, torch\n"
        "from osora.kernels import apply_rope, modulate, rms_norm\n"
        "x = torch.randn(1, 2, 4, 8, requires_grad=True)\n"
        "t = torch.ones(4, 4)\n"
        "(rms_norm(x, torch.ones(8)).sum() + apply_rope(x, t, t).sum()\n"
        " + modulate(x[0], x[0, :, :1], x[0, :, :1]).sum()).backward()\n"
        "print('triton' in sys.modules)\n",
        TRITON_INTERPRET="0")
    assert out.strip() == "False"


def test_works_without_triton():
    # With triton unimportable, even TRITON_INTERPRET=1 falls back to the references, the
    # custom ops run the reference math, and the benchmark exits 0.
    out = _python(
        "import runpy, sys, torch\n"
        "sys.modules['triton'] = None  # import triton now raises ImportError\n"
        "from osora.kernels import _triton, rms_norm, rms_norm_reference\n"
        "x, w = torch.randn(3, 8, requires_grad=True), torch.ones(8)\n"
        "assert not _triton.available() and not _triton.use_triton(x)\n"
        "assert 'osora' not in rms_norm(x, w).grad_fn.name()\n"
        "torch.testing.assert_close(torch.ops.osora.rms_norm(x, w, 1e-6),\n"
        "                           rms_norm_reference(x, w))\n"
        "sys.argv = ['bench_kernels.py']\n"
        "try:\n"
        "    runpy.run_path('bench/bench_kernels.py', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('ok')\n",
        TRITON_INTERPRET="1")
    assert out.strip().endswith("ok")
    assert "needs a CUDA GPU" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU exit")
def test_bench_exits_zero_on_cpu():
    done = subprocess.run([sys.executable, "bench/bench_kernels.py"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "needs a CUDA GPU" in done.stdout


# Each kernel with the constexprs it takes at the MMDiT shapes (D = 128 per head, 3072 hidden).
KERNELS = [
    ("rms_norm", "_rms_norm_fwd_kernel", {"ROWS": 32, "BLOCK_D": 128}),
    ("rms_norm", "_rms_norm_bwd_kernel", {"ROWS": 32, "BLOCK_D": 128}),
    ("rope", "_rope_kernel", {"INVERSE": False, "INTERLEAVED": True, "BLOCK_N": 32,
                              "BLOCK_HALF": 64}),
    ("rope", "_rope_kernel", {"INVERSE": True, "INTERLEAVED": False, "BLOCK_N": 32,
                              "BLOCK_HALF": 64}),
    ("modulate", "_modulate_fwd_kernel", {"ROWS": 1, "BLOCK_D": 4096}),
    ("modulate", "_modulate_bwd_kernel", {"ROWS": 1, "BLOCK_D": 4096}),
]


SIZES = ("D", "N", "H", "HALF")  # the upper-case integer arguments


@pytest.mark.parametrize("module, kernel, constexprs", KERNELS,
                         ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(KERNELS)])
def test_kernels_compile_for_sm90(module, kernel, constexprs, monkeypatch, tmp_path):
    # Triton's compiler (not the interpreter, which accepts more) lowers each kernel to PTX and
    # runs ptxas for sm_90, no GPU needed. With the launch's usual specialisation (16-byte
    # aligned pointers, strides divisible by 16) the bf16 loads and stores are 16 bytes wide.
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if _triton.interpreter_ready():
        pytest.skip("triton was imported in interpreter mode in this process")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    fn = getattr(op_module(module), kernel).build()
    signature, constants, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constants[p.name] = constexprs.get(p.name, triton.language.float32)  # ACC
        elif p.name.isupper() and p.name not in SIZES:  # pointers are upper-case here
            fp32 = p.name.endswith("_PART") or p.name in ("COS", "SIN")
            signature[p.name] = "*fp32" if fp32 else "*bf16"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[p.name] = "fp32" if p.name == "eps" else "i32"
            if p.name.startswith("stride") or p.name in ("D", "HALF"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(fn, signature, constants, attrs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    ptx = compiled.asm["ptx"]
    assert compiled.asm["cubin"], "ptxas produced no cubin"
    assert "ld.global.v4" in ptx and "st.global.v4" in ptx, "loads/stores not 16 bytes wide"
