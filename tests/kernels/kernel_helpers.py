"""Helpers shared by the kernel tests (imported as a sibling module, like tests/data's)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def op_module(name: str):
    """osora.kernels.<name> as a module (the package re-exports functions of the same names)."""
    return importlib.import_module(f"osora.kernels.{name}")


def interpreted() -> bool:
    """True in the child process that runs the Triton kernels in Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def run_interpreted(test_file: str, timeout: float = 300) -> None:
    """Run test_file's `test_triton_*` tests in a child pytest with TRITON_INTERPRET=1 set from
    its start; fail with the child's report if any fails, skips, or none ran. Skips only where
    triton is not installed."""
    pytest.importorskip("triton")
    if interpreted():
        pytest.skip("already in the interpreter process")
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-k", "triton",
           test_file]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[2])
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert " passed" in report and " skipped" not in report, report


def leaves(*tensors: torch.Tensor, requires_grad=True) -> list[torch.Tensor]:
    """Fresh leaf copies (so two paths can be differentiated independently)."""
    return [t.detach().clone().requires_grad_(requires_grad) for t in tensors]


def bf16_close(actual: torch.Tensor, expected: torch.Tensor, ulps: int = 2) -> None:
    """actual (bf16) within `ulps` bf16 ulps of expected (float32): relative 2^-7 per ulp.

    The interpreter's float32 → bf16 cast truncates (GPUs round to nearest even), so its
    outputs can sit one ulp below the reference's rounding.
    """
    torch.testing.assert_close(actual.float(), expected.float(), rtol=ulps * 2.0**-7, atol=1e-4)


def assert_custom_op(y: torch.Tensor, op: str) -> None:
    """y came out of torch.ops.osora.<op> (the Triton path), not the torch reference."""
    name = y.grad_fn.name() if y.grad_fn is not None else "no grad_fn"
    assert f"osora_{op}_" in name, f"expected the osora::{op} custom op, got {name}"
