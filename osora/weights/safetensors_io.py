"""Exported weights as safetensors: an atomic, bit-exact save and a checked load.

safetensors refuses tensors that share memory (tied weights, views into one buffer) and
non-contiguous tensors. `save_weights` therefore writes every tensor as its own contiguous copy
and records in the header what was shared:

- `osora.aliases`: JSON {name: first_name} for exact aliases (same memory, shape, strides and
  dtype, e.g. tied input/output embeddings); `load_weights` ties them again in the state dict
  it returns, and loading into a model fills both names with the same values.
- `osora.copied_views`: JSON [name, ...] for tensors that overlapped the memory of an earlier
  tensor without being an exact alias (e.g. slices of one fused buffer); each was saved as an
  independent copy and loads as one.

The header also carries `format: pt` (what transformers/diffusers expect) and the caller's
metadata, which must be str → str. Keys starting with `osora.` are reserved.

`read_safetensors_checkpoint` reads released checkpoints for the importers (flux.py,
opensora_v2.py): one file, or shards listed by a `*.safetensors.index.json`.

safetensors is imported where it is used, so `osora.weights` imports with torch alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

ALIASES_KEY = "osora.aliases"
COPIED_VIEWS_KEY = "osora.copied_views"
_RESERVED_PREFIX = "osora."


def _safetensors_torch():
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - safetensors is installed with the pipeline extra
        raise ImportError(
            "osora.weights needs the `safetensors` package: pip install safetensors"
        ) from None
    return safetensors.torch


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    """Where a tensor's memory lives; None for tensors without memory (empty or meta)."""
    if t.device.type == "meta" or t.numel() == 0:
        return None
    return (str(t.device), t.untyped_storage().data_ptr())


def _exact_key(t: torch.Tensor) -> tuple:
    return (str(t.device), t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


def _to_state_dict(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]):
    if isinstance(model_or_state_dict, nn.Module):
        return model_or_state_dict.state_dict()
    if isinstance(model_or_state_dict, Mapping):
        for name, value in model_or_state_dict.items():
            if not isinstance(name, str):
                raise ValueError(f"state dict keys must be str, got {name!r}")
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"state dict entry {name!r} is a {type(value).__name__}, not a tensor"
                )
        return model_or_state_dict
    raise ValueError(
        f"save_weights takes an nn.Module or a dict of tensors, got "
        f"{type(model_or_state_dict).__name__}"
    )


def prepare_for_safetensors(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Contiguous CPU tensors that share no memory, plus what was shared.

    Returns (tensors, aliases {name: first_name}, copied_views [name, ...]).
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    copied_views: list[str] = []
    first_by_exact: dict[tuple, str] = {}
    seen_storage: set[tuple[str, int]] = set()
    for name, t in state_dict.items():
        t = t.detach()
        if t.device.type == "meta":
            raise ValueError(f"cannot save {name!r}: it is on the meta device (no data)")
        storage = _storage_key(t)
        if storage is not None and storage in seen_storage:
            first = first_by_exact.get(_exact_key(t))
            if first is not None:
                aliases[name] = first
                tensors[name] = tensors[first].clone()
            else:
                copied_views.append(name)
                first_by_exact.setdefault(_exact_key(t), name)
                tensors[name] = t.to("cpu", copy=True).contiguous()
            continue
        if storage is not None:
            seen_storage.add(storage)
            first_by_exact[_exact_key(t)] = name
        tensors[name] = t.cpu().contiguous()
    return tensors, aliases, copied_views


def save_weights(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a model's (or a state dict's) tensors to `path` as safetensors, atomically.

    The file is written beside `path` under a temporary name, fsynced, then renamed over it: a
    crash leaves the old file or the new one. Values are stored bit for bit in their own dtype.
    Returns the path written.
    """
    path = Path(path)
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(
                f"safetensors metadata must map str to str; got {key!r}: {type(value).__name__}"
            )
        if key.startswith(_RESERVED_PREFIX):
            raise ValueError(f"metadata key {key!r} uses the reserved prefix {_RESERVED_PREFIX!r}")
    tensors, aliases, copied_views = prepare_for_safetensors(_to_state_dict(model_or_state_dict))
    header = {"format": "pt", **metadata}
    if aliases:
        header[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    if copied_views:
        header[COPIED_VIEWS_KEY] = json.dumps(copied_views)

    st = _safetensors_torch()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        st.save_file(tensors, tmp, metadata=header)
        _sort_header_metadata(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _sort_header_metadata(path: str | os.PathLike) -> None:
    """Rewrite the header's metadata in sorted key order, in place: safetensors' writer orders
    it by a hash map, differently on every save, so equal weights would give different bytes
    (and different DVC hashes). The rewritten header has the same length: the same JSON, only
    reordered; the padding up to the tensors stays spaces."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            raise RuntimeError(f"{path}: the sorted safetensors header is longer than the "
                               f"written one ({len(text)} > {size} bytes)")
        f.seek(8)
        f.write(text.ljust(size))


def _umask() -> int:
    current = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(current)
    return current


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a safetensors file (empty dict when it has none)."""
    path = _existing(path)
    st = _safetensors_torch()
    try:
        with st.safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return path


def _read(path: Path, device: str | torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    st = _safetensors_torch()
    try:
        with st.safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    return tensors, metadata


def state_dict_problems(
    expected: Mapping[str, torch.Tensor],
    got: Mapping[str, torch.Tensor],
    strict: bool = True,
) -> list[str]:
    """What keeps `got` from loading where `expected` is: one line per problem, [] when none.

    Missing and unexpected keys count only when `strict`; a shape mismatch always counts.
    """
    problems = []
    if strict:
        missing = [k for k in expected if k not in got]
        unexpected = [k for k in got if k not in expected]
        if missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    for name, want in expected.items():
        have = got.get(name)
        if have is not None and tuple(have.shape) != tuple(want.shape):
            problems.append(
                f"shape mismatch for {name}: expected {tuple(want.shape)}, got {tuple(have.shape)}"
            )
    return problems


def _model_aliases(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{name: first_name} for the model's tied entries (exact aliases in its state dict)."""
    first: dict[tuple, str] = {}
    aliases = {}
    for name, t in state.items():
        if t.numel() == 0 or t.device.type == "meta":
            continue
        key = _exact_key(t)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def load_weights(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    strict: bool = True,
    device: str | torch.device = "cpu",
):
    """Read a safetensors file; return its state dict, or load it into `model`.

    Without a model: returns {name: tensor} on `device`, with the aliases recorded by
    `save_weights` tied again. With a model: checks the file against `model.state_dict()` and
    loads it, returning torch's (missing_keys, unexpected_keys). A tied entry of the model counts
    as present when the entry it is tied to is in the file (files saved with deduplication).
    Raises ValueError listing every missing/unexpected key (when `strict`) and every shape
    mismatch as (name, expected, got); FileNotFoundError when the file does not exist.
    """
    path = _existing(path)
    tensors, metadata = _read(path, device)
    for name, first in json.loads(metadata.get(ALIASES_KEY, "{}")).items():
        if name in tensors and first in tensors and tensors[name].shape == tensors[first].shape:
            tensors[name] = tensors[first]
    if model is None:
        return tensors

    expected = model.state_dict()
    for name, first in _model_aliases(expected).items():
        if name not in tensors and first in tensors:
            tensors[name] = tensors[first]
        elif first not in tensors and name in tensors:
            tensors[first] = tensors[name]
    problems = state_dict_problems(expected, tensors, strict=strict)
    if problems:
        raise ValueError(f"{path} does not fit {type(model).__name__}:\n  " + "\n  ".join(problems))
    return model.load_state_dict(tensors, strict=strict)


INDEX_SUFFIX = ".safetensors.index.json"


def _index_file(folder: Path) -> Path | None:
    indexes = sorted(folder.glob(f"*{INDEX_SUFFIX}"))
    if len(indexes) > 1:
        raise ValueError(
            f"{folder} holds several shard indexes ({', '.join(p.name for p in indexes)}); "
            "give the path of the one to load"
        )
    return indexes[0] if indexes else None


def read_safetensors_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Tensors of a released checkpoint: one .safetensors file, or a sharded one.

    `path` is a .safetensors file, a `*.safetensors.index.json` (the Hugging Face layout:
    {"weight_map": {tensor name: shard file name}}), or a folder holding exactly one such index
    (or, without an index, exactly one .safetensors file). Returns ({name: tensor}, {name: file
    it came from}), so a caller can name the file of a bad tensor. Raises ValueError for an
    index that names a missing shard, a tensor its shard lacks, or a tensor in two shards;
    FileNotFoundError when nothing is at `path`.
    """
    path = Path(path)
    if path.is_dir():
        index = _index_file(path)
        if index is None:
            files = sorted(path.glob("*.safetensors"))
            if len(files) != 1:
                raise ValueError(
                    f"{path} has no *{INDEX_SUFFIX} and {len(files)} .safetensors files; give "
                    "a folder with a shard index, or the path of one .safetensors file"
                )
            path = files[0]
        else:
            path = index
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.name.endswith(INDEX_SUFFIX):
        tensors, _ = _read(path, device)
        return tensors, dict.fromkeys(tensors, path)

    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a shard index with a weight_map: {err}") from None
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        shards.setdefault(shard, []).append(name)
    for shard in shards:
        if Path(shard).name != shard or not (path.parent / shard).is_file():
            raise ValueError(f"{path} names shard {shard!r}, which is not a file beside it")
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for shard, names in shards.items():
        file = path.parent / shard
        got, _ = _read(file, device)
        absent = [name for name in names if name not in got]
        if absent:
            raise ValueError(
                f"{file} lacks tensors its index {path.name} places there: {', '.join(absent)}"
            )
        for name, tensor in got.items():
            if name in origin:
                raise ValueError(f"tensor {name!r} is in two shards: {origin[name]} and {file}")
            tensors[name], origin[name] = tensor, file
    return tensors, origin
