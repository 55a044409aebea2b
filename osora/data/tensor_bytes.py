"""Tensors as raw bytes in a table cell: the latents and text-embedding tables store a tensor as
its little-endian bytes of one of `STORAGE_DTYPES`, with the dtype and shape in their own
columns. Raw bytes rather than a float list: a list column holds one dtype and Arrow has no
bfloat16; bytes keep whichever dtype the params ask for (bfloat16 halves a table, float32
round-trips exactly) at its exact size, and `torch.frombuffer` reads them without a copy per
element."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch

STORAGE_DTYPES = ("float32", "bfloat16", "float16")


def _check_little_endian() -> None:
    if sys.byteorder != "little":  # x86-64 and aarch64 are little-endian
        raise RuntimeError("stored tensors are little-endian bytes; this host is big-endian")


def check_storage_dtype(name: str) -> torch.dtype:
    """The torch dtype of a storage dtype's name; ValueError naming the choices."""
    if name not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {name!r}: use one of {STORAGE_DTYPES}")
    return getattr(torch, name)


def tensor_to_bytes(t: torch.Tensor, storage_dtype: str) -> bytes:
    """`t`'s values as `storage_dtype`, C-order, little-endian."""
    dtype = check_storage_dtype(storage_dtype)
    _check_little_endian()
    flat = t.detach().to("cpu", dtype).contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes, storage_dtype: str, shape: Sequence[int], *, what: str,
                      fix: str) -> torch.Tensor:
    """The tensor of `shape` that `data` holds as `storage_dtype`; ValueError starting with
    `what` (the row) and ending with `fix` when the bytes do not fit the dtype and shape."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"{what}: unknown dtype {storage_dtype!r} ({STORAGE_DTYPES}); {fix}")
    dtype = getattr(torch, storage_dtype)
    want = math.prod(shape) * dtype.itemsize
    if len(data) != want:
        raise ValueError(f"{what}: {len(data)} bytes do not hold a {storage_dtype} tensor of "
                         f"shape {tuple(shape)} ({want} bytes); {fix}")
    _check_little_endian()
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(tuple(shape))
