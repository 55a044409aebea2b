"""Where the Triton kernels run, and the launch helpers the kernel modules share.

Triton is optional and imported lazily: `import osora.kernels` loads torch only, and where
triton is missing every op takes its torch reference. The kernels are plain functions in their
op modules, `triton.jit`-decorated at their first launch (`LazyKernel`), once per interpreter
mode. (Triton's CPU interpreter still needs TRITON_INTERPRET=1 set before triton is first
imported: triton.language's own helpers such as tl.sum are decorated at that import. The tests
therefore run the interpreted kernels in a child process; see tests/kernels/conftest.py.)

Dispatch rule (`use_triton`): Triton when triton imports and either every tensor is on CUDA or
TRITON_INTERPRET=1 is set (Triton's own switch for its CPU interpreter, used by the tests);
otherwise the torch reference.
"""

from __future__ import annotations

import contextlib
import functools
import os
import types
from collections.abc import Callable
from typing import Any

import torch

# triton, imported at the first dispatch that could use it (`_import_triton`): importing
# osora.kernels loads torch only, and on CPU without TRITON_INTERPRET triton is never imported.
_TRITON: Any = None  # the module once imported, False where it does not import

# Dtypes the kernels load and store; math runs in float32 (float64 for float64 inputs).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Largest last dimension one program holds in registers (a row per tile).
MAX_BLOCK_D = 16384
# Elements one program's tile holds: rows × next_pow2(D) ≈ this (register budget).
TILE_ELEMENTS = 4096


def _import_triton():
    """The triton module, or None where it is not installed or does not load."""
    global _TRITON
    if _TRITON is None:
        try:
            import triton
            import triton.language  # noqa: F401
        except Exception:  # ImportError, or a triton build that does not load with this torch
            _TRITON = False
        else:
            _TRITON = triton
    return _TRITON or None


def available() -> bool:
    """True when triton imports."""
    return _import_triton() is not None


def interpret() -> bool:
    """True when Triton's CPU interpreter is switched on (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreter_ready() -> bool:
    """True when triton was imported with TRITON_INTERPRET=1 (triton.language's own jit
    helpers, e.g. tl.sum, are then interpreter functions), so interpreted kernels can run."""
    triton = _import_triton()
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(getattr(triton.language.standard, "sum", None), InterpretedFunction)


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the ops run their Triton kernels on these tensors (see the module docstring)."""
    if not interpret() and not all(t.is_cuda for t in tensors):
        return False
    return available()


def kernel_applies(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether an op's Triton kernel takes these inputs: Triton runs here (`use_triton`), x's
    dtype has a kernel, and its last dim fits one block; else the op uses its torch reference."""
    return (use_triton(x, *others) and x.dtype in KERNEL_DTYPES
            and x.shape[-1] <= MAX_BLOCK_D)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float32 at least, float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_compute_dtype(dtype: torch.dtype):
    """`compute_dtype` as a triton.language dtype (a kernel's ACC constexpr)."""
    tl = _import_triton().language
    return tl.float64 if dtype == torch.float64 else tl.float32


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def row_tile(d: int, n_rows: int) -> tuple[int, int, int]:
    """(BLOCK_D, ROWS, num_warps) for kernels whose program holds ROWS whole rows of length d:
    about TILE_ELEMENTS elements per tile, never more rows than there are."""
    block_d = next_pow2(d)
    rows = max(1, min(TILE_ELEMENTS // block_d, next_pow2(max(n_rows, 1))))
    tile = block_d * rows
    num_warps = 4 if tile <= 2048 else 8 if tile <= 8192 else 16
    return block_d, rows, num_warps


def persistent_programs(device: torch.device, work_items: int, per_sm: int = 4) -> int:
    """Programs for a persistent grid over `work_items`: a few per SM on CUDA, 2 in the
    interpreter (which runs them one after another anyway)."""
    cap = _sm_count(device.index) * per_sm if device.type == "cuda" else 2
    return max(1, min(work_items, cap))


@functools.cache
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(
        index if index is not None else torch.cuda.current_device()).multi_processor_count


def on_device(t: torch.Tensor):
    """Context for a launch on t's device: Triton launches on the current CUDA device."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class LazyKernel:
    """A Triton kernel's source: a module-level function that names triton.language `tl`
    (imported only for type checkers in its module). At its first launch in each interpreter
    mode it is `triton.jit`-decorated, as a copy whose globals bind `tl`.

    `kernel[grid](*args, **constexprs)` as with a `triton.jit` function.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._built: dict[bool, Any] = {}
        functools.update_wrapper(self, fn)

    def build(self):
        """The `triton.jit` function for the current interpreter mode (made once per mode)."""
        mode = interpret()
        kernel = self._built.get(mode)
        if kernel is None:
            triton = _import_triton()
            if triton is None:
                raise RuntimeError(f"{self.fn.__name__}: triton is not installed")
            if mode and not interpreter_ready():
                raise RuntimeError(
                    "TRITON_INTERPRET=1 was set after triton was imported in this process; "
                    "Triton's interpreter needs it set before the first `import triton` "
                    "(run the interpreted kernels in a fresh process started with it)")
            kernel = self._built[mode] = triton.jit(_with_tl(self.fn, triton.language))
        return kernel

    def __getitem__(self, grid):
        return self.build()[grid]


def _with_tl(fn: Callable[..., Any], tl: Any) -> Callable[..., Any]:
    """fn with `tl` bound in (a copy of) its globals; source, name and signature unchanged."""
    bound = types.FunctionType(fn.__code__, {**fn.__globals__, "tl": tl}, fn.__name__,
                               fn.__defaults__, fn.__closure__)
    for attr in ("__module__", "__qualname__", "__doc__", "__annotations__", "__kwdefaults__"):
        setattr(bound, attr, getattr(fn, attr))
    return bound


def lazy_kernel(fn: Callable[..., Any]) -> LazyKernel:
    """Decorator: mark a module-level function as a Triton kernel (see LazyKernel)."""
    return LazyKernel(fn)
