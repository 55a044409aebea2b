"""Fixtures for the kernel tests.

Triton's CPU interpreter works only in a process that had TRITON_INTERPRET=1 set before triton
was imported (triton.language's own helpers, e.g. tl.sum, are `triton.jit`-decorated at import
in the mode of that moment). An xdist worker may have imported triton long before (inductor
does, and osora.kernels at its first CUDA launch), so each kernel test file runs its
`test_triton_*` tests in a child pytest started with TRITON_INTERPRET=1
(kernel_helpers.run_interpreted, called by the file's `test_kernels_in_interpreter`); in the
worker itself they are deselected (run one by hand
with `TRITON_INTERPRET=1 pytest tests/kernels/test_x.py -k triton`). The other tests (dispatch,
opcheck, torch.compile, shapes) run in the worker as usual. The interpreter tests need triton
>= 3.7 (3.6's interpreter cannot run loops with run-time bounds under numpy >= 2.4).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kernel_helpers import interpreted


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside the interpreter process, deselect the tests that need it (they run in the child
    that test_kernels_in_interpreter starts), rather than listing each as skipped."""
    if interpreted():
        return
    here = Path(__file__).parent
    keep, drop = [], []
    for item in items:
        inside = Path(str(item.path)).parent == here
        (drop if inside and "interpret" in getattr(item, "fixturenames", ()) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def interpret():
    """The Triton kernels run in Triton's CPU interpreter: only inside the child process."""
    if not interpreted():
        pytest.skip("runs in the TRITON_INTERPRET=1 child process (test_kernels_in_interpreter)")
    from osora.kernels import _triton

    if not _triton.available():
        pytest.fail("TRITON_INTERPRET=1 is set but triton does not import")
    if not _triton.interpreter_ready():
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set in this process")


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch):
    """Tiles of 32 elements, so tiny tensors still take several programs and the persistent
    backward grids loop (the interpreter runs at most 2 programs per persistent grid)."""
    from osora.kernels import _triton

    monkeypatch.setattr(_triton, "TILE_ELEMENTS", 32)


@pytest.fixture
def no_interpret(monkeypatch: pytest.MonkeyPatch):
    """TRITON_INTERPRET unset for this test: on CPU the ops take the torch reference."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
