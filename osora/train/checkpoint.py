"""Training state on disk with torch.distributed.checkpoint (DCP): save, find the newest, load.

A checkpoint is a folder `step_{step:08d}` holding DCP's files: every rank writes its own shards
in parallel, and a load may use another world size (DCP reshards: save on 2 ranks, resume on 1 or
8). The same calls work in a single process with no process group.

Crash safety: DCP writes into a hidden sibling `.step_{step:08d}.partial`, which is renamed to
its final name only once every rank has finished, so `latest` never picks a half-written
checkpoint. Older checkpoints beyond `keep` are pruned after each save.

Nothing is unpickled unchecked. DCP stores its index (`.metadata`) as a pickle and every
non-tensor value (optimizer hyper-parameters, python ints) through `torch.save`, and reads both
back with a full unpickle; here the index is first read by an unpickler that accepts only DCP's
own metadata classes, and every non-tensor value must pass `torch.load(weights_only=True)`
before DCP reads it. Tensor data DCP already reads with weights_only=True.

State values are torch `Stateful`s: `ModelOptimState` for a model and its optimizers (plain or
FSDP2-sharded alike), `ValueState` for plain values (counters, RNG states, EMA shadows).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

_NAME = re.compile(r"step_(\d{8})")
_STEP_KEY = "_checkpoint_step"  # reserved: the step, stored inside the checkpoint itself
_METADATA = ".metadata"  # DCP's index file, written last by the coordinator rank

# Without a process group DCP warns on every save and load (also from the background thread of
# an asynchronous save) that it assumes a single process: here that is the intended mode.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or "
                        "uninitialized, assuming the intent is to")


# --------------------------------------------------------------------------------------------
# Stateful wrappers


class ModelOptimState(Stateful):
    """One model and its named optimizers (e.g. {"ae": ..., "disc": ...}) as one DCP value.

    Uses torch's distributed state-dict API, which keys optimizer state by parameter name (not
    by position) and gives DTensor shards for an FSDP2 model: a checkpoint saved sharded on N
    ranks loads into M ranks or into an unsharded model. Every optimizer must step parameters
    of `model` (give a discriminator its own ModelOptimState). A fresh optimizer is given zero
    state by the API before loading (a step with lr 0), so loading needs no warm-up step.
    """

    def __init__(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]):
        self.model = model
        self.optimizers = dict(optimizers)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": get_model_state_dict(self.model),
            "optim": {
                name: get_optimizer_state_dict(self.model, opt)
                for name, opt in self.optimizers.items()
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state_dict["model"])
        for name, opt in self.optimizers.items():
            set_optimizer_state_dict(self.model, opt, state_dict["optim"][name])


class ValueState(Stateful):
    """Plain values as one DCP value: tensors (loaded in place) and python scalars, strings,
    lists, tuples and dicts of them (anything `torch.load(weights_only=True)` accepts).

    The values must be equal on every rank: DCP stores a non-sharded value once. Give per-rank
    values (a per-rank RNG state) per-rank keys. Loading fills exactly the keys present now,
    so build the ValueState with the same keys (any placeholder values) before loading.
    """

    def __init__(self, values: dict[str, Any] | None = None):
        self.values: dict[str, Any] = dict(values or {})

    def state_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.values.update(state_dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value


# --------------------------------------------------------------------------------------------
# Save, find, load


def save(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Save `state` as `directory/step_{step:08d}` and keep only the newest `keep` checkpoints.

    Collective: every rank calls it with the same `directory` (a filesystem all ranks share).
    Returns the checkpoint's folder. Saving a step that exists replaces it.
    """
    partial, final, payload = _begin(directory, step, state, keep)
    dcp.save(payload, checkpoint_id=str(partial))
    # dcp.save returns on every rank only after the coordinator wrote `.metadata`, which it
    # does after all ranks reported their writes: the checkpoint in `partial` is complete.
    _finish(partial, final, keep)
    return final


class AsyncSaver:
    """Saves that overlap training (docs/recipe.md §6: saves in seconds). `save` blocks only while
    DCP copies the state into CPU staging memory; a background thread then writes it, and the
    `.partial` → final rename happens once the write is complete on every rank: at the next
    `save` (one write in flight at a time) or at `wait`. A crash mid-write leaves a `.partial`
    folder, which is never resumed from and is cleared by the next save.

    Collective like `save`: every rank calls `save` and `wait` in the same order. The background
    write talks to the other ranks over its own gloo group, so it never interleaves with the
    training step's collectives.
    """

    def __init__(self, directory: Path, keep: int = 2):
        self.directory, self.keep = Path(directory), keep
        self._pending: tuple[Any, Path, Path] | None = None
        distributed = dist.is_available() and dist.is_initialized()
        self._group = dist.new_group(backend="gloo") if distributed else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        self.wait()
        partial, final, payload = _begin(self.directory, step, state, self.keep)
        future = dcp.async_save(payload, checkpoint_id=str(partial),
                                process_group=self._group, no_dist=self._group is None)
        self._pending = (future, partial, final)
        return final

    def wait(self) -> Path | None:
        """Block until the write in flight is complete and renamed; its folder (None: none)."""
        if self._pending is None:
            return None
        future, partial, final = self._pending
        self._pending = None
        future.result()  # re-raises a failed write
        _finish(partial, final, self.keep)
        return final


def _begin(directory: Path, step: int, state: dict[str, Any], keep: int
           ) -> tuple[Path, Path, dict[str, Any]]:
    """Checks, the folder names, stale `.partial` folders cleared; (partial, final, payload)."""
    if keep < 1:
        raise ValueError(f"checkpoint.save: keep must be ≥ 1, got {keep}")
    if step < 0:
        raise ValueError(f"checkpoint.save: step must be ≥ 0, got {step}")
    if _STEP_KEY in state:
        raise ValueError(f"checkpoint.save: the key {_STEP_KEY!r} is reserved; rename it")
    directory = Path(directory)
    final = directory / f"step_{step:08d}"
    partial = directory / f".{final.name}.partial"
    if _is_main():  # leftovers of a crashed save are never resumed from: clear them
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".step_*.partial"):
            shutil.rmtree(stale)
    if _distributed():
        dist.barrier()  # no rank writes into `partial` before rank 0 has cleared it
    return partial, final, {**state, _STEP_KEY: torch.tensor(step, dtype=torch.int64)}


def _finish(partial: Path, final: Path, keep: int) -> None:
    """`partial` (complete on every rank) becomes `final`; older checkpoints are pruned."""
    if _distributed():
        dist.barrier()  # every rank's write has returned
    if _is_main():
        _replace(partial, final)
        for old in _complete(final.parent)[:-keep]:
            shutil.rmtree(old)
    if _distributed():
        dist.barrier()  # every rank returns only once `final` exists


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_main() -> bool:
    return not _distributed() or dist.get_rank() == 0


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint in `directory` (None if there is none)."""
    found = _complete(Path(directory))
    return found[-1] if found else None


def load(path: Path, state: dict[str, Any]) -> int:
    """Load the checkpoint at `path` into `state` in place; returns its step.

    Collective when distributed. `state` needs the same keys as at save time (DCP fills the
    tensors `state` holds now, so a model may be sharded differently than when it was saved).
    """
    path = Path(path)
    if not (path / _METADATA).is_file():
        raise FileNotFoundError(
            f"checkpoint.load: {path} is not a complete checkpoint (no {_METADATA}); pass a "
            f"folder that `checkpoint.latest(directory)` returned"
        )
    if _STEP_KEY in state:
        raise ValueError(f"checkpoint.load: the key {_STEP_KEY!r} is reserved; rename it")
    for index in path.iterdir():  # `.metadata`, or `__{rank}.metadata` per rank
        if index.name.endswith(_METADATA):
            _check_metadata(index)
    step = {_STEP_KEY: torch.tensor(-1, dtype=torch.int64)}
    try:
        dcp.load({**state, **step}, checkpoint_id=str(path), planner=_WeightsOnlyLoadPlanner())
    except (RuntimeError, CheckpointException) as err:  # the latter when DCP wraps rank errors
        if "Missing key in checkpoint" not in str(err):
            raise
        raise RuntimeError(
            f"checkpoint.load: {path} does not hold everything this run saves; it was "
            f"written by another version of the code: move {path.parent} aside to start over"
        ) from err
    return int(step[_STEP_KEY])


def _complete(directory: Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if (m := _NAME.fullmatch(p.name)) and (p / _METADATA).is_file()
    ]
    return [p for _, p in sorted(found)]


def _replace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, replacing an existing `dst` (a re-saved step)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old)
    else:
        src.rename(dst)


# --------------------------------------------------------------------------------------------
# Loading without unpickling arbitrary objects


class _WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, except that a non-tensor value must first load with
    `torch.load(weights_only=True)` (tensors, python primitives and containers): DCP itself reads
    it with a full unpickle. The value is then handed to DCP's own code unchanged."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(
                f"checkpoint value {read_item.dest_index.fqn!r} is not plain data (tensors, "
                f"numbers, strings, containers); refusing to unpickle it: {e}"
            ) from e
        value.seek(0)
        super().load_bytes(read_item, value)


class _MetadataUnpickler(pickle.Unpickler):
    """Reads DCP's `.metadata` pickle allowing only the classes DCP puts there: its metadata
    dataclasses and enums, its file-storage record, torch dtypes, layouts and sizes, paths."""

    _ALLOWED = {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.serialization", "_get_layout"),  # name → torch.layout lookup
        ("torch", "Size"),
        ("collections", "OrderedDict"),
    }
    # the checkpoint id DCP records, when a caller saved with a Path (3.13 moved the classes)
    _PATHS = {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module in ("pathlib", "pathlib._local") and name in self._PATHS:
            return super().find_class(module, name)
        if "." not in name:
            if module == "torch.distributed.checkpoint.metadata":
                found = super().find_class(module, name)
                # the dataclasses and enums defined there, not functions or imported names
                if isinstance(found, type) and found.__module__ == module:
                    return found
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"checkpoint metadata refers to {module}.{name}, which DCP does not write; "
            "refusing to unpickle it (is this a checkpoint from an untrusted source?)"
        )


def _check_metadata(index: Path) -> None:
    with open(index, "rb") as f:
        _MetadataUnpickler(f).load()


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights in CPU memory for export (safetensors): gathered from the
    FSDP2 shards onto rank 0 (other ranks get {} but must call too: it is a collective), or a
    plain model's own."""
    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def run_folder(root: Path, *identity: Any) -> Path:
    """`root/<16 hex>`: one folder per run identity (params, input version, world size…), so a
    rerun of the same run resumes its checkpoints and a changed run starts fresh."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    return Path(root) / digest.hexdigest()[:16]
