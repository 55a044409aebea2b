"""Training state with torch.distributed.checkpoint: resume equals an uninterrupted run, a
checkpoint saved sharded on 2 gloo ranks loads into one unsharded process, half-written
checkpoints are never picked, and loading refuses anything but plain data."""

from __future__ import annotations

import fractions
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from free_port import free_port
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

from osora.models.dcae import DCAE, DCAE_TINY, DownBlock, EfficientViTBlock, ResBlock, UpBlock
from osora.train import checkpoint
from osora.train.checkpoint import ModelOptimState, ValueState
from osora.train.parallel import close_distributed, init_distributed, shard_model

UNITS = (ResBlock, EfficientViTBlock, DownBlock, UpBlock)


def tiny_model(seed: int) -> DCAE:
    torch.manual_seed(seed)
    return DCAE(DCAE_TINY)


def batch(step: int, n: int = 1) -> torch.Tensor:
    """The batch of a step, (n, 3, 4, 32, 32) in [-1, 1]: a function of the step, as in the
    training loop, so a resumed run sees the same batches."""
    g = torch.Generator().manual_seed(100 + step)
    return torch.rand(n, 3, 4, 32, 32, generator=g) * 2 - 1


def adamw(params, lr: float = 1e-3) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-15)


def two_optimizers(model: DCAE) -> dict[str, torch.optim.Optimizer]:
    """Two named optimizers over parts of one model (as a run with several would have)."""
    return {
        "encoder": adamw(model.encoder.parameters(), lr=1e-3),
        "decoder": adamw(model.decoder.parameters(), lr=5e-4),
    }


def train_step(model: nn.Module, opts: dict[str, torch.optim.Optimizer], x: torch.Tensor) -> None:
    for opt in opts.values():
        opt.zero_grad(set_to_none=True)
    (model(x) - x).abs().mean().backward()  # L1 reconstruction
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for opt in opts.values():
        opt.step()


def assert_same_training_state(a: nn.Module, opts_a: dict, b: nn.Module, opts_b: dict) -> None:
    """Parameters and AdamW state (step, exp_avg, exp_avg_sq) bitwise equal."""
    state_a = {p: s for opt in opts_a.values() for p, s in opt.state.items()}
    state_b = {p: s for opt in opts_b.values() for p, s in opt.state.items()}
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), f"parameter {name} differs"
        assert state_a[p].keys() == state_b[q].keys()
        for key in state_a[p]:
            assert torch.equal(state_a[p][key], state_b[q][key]), f"{key} of {name} differs"


# --------------------------------------------------------------------------------------------
# Single process


def test_resume_equals_uninterrupted(tmp_path: Path):
    straight = tiny_model(seed=0)
    straight_opts = two_optimizers(straight)
    for step in range(3):
        train_step(straight, straight_opts, batch(step))

    first = tiny_model(seed=0)
    first_opts = two_optimizers(first)
    train_step(first, first_opts, batch(0))
    state = {"ae": ModelOptimState(first, first_opts), "extra": ValueState({"epoch": 7})}
    saved = checkpoint.save(tmp_path, 1, state)
    assert saved == tmp_path / "step_00000001"

    resumed = tiny_model(seed=1)  # other weights, no optimizer state: all must come from disk
    resumed_opts = two_optimizers(resumed)
    extra = ValueState({"epoch": 0})
    found = checkpoint.latest(tmp_path)
    assert found == saved
    start = checkpoint.load(found, {"ae": ModelOptimState(resumed, resumed_opts), "extra": extra})
    assert start == 1 and extra["epoch"] == 7
    assert_same_training_state(first, first_opts, resumed, resumed_opts)
    for step in range(start, 3):
        train_step(resumed, resumed_opts, batch(step))

    assert_same_training_state(straight, straight_opts, resumed, resumed_opts)


def test_value_state_round_trips_plain_values(tmp_path: Path):
    rng = torch.get_rng_state()
    values = {
        "rng": rng.clone(),
        "shadow": {"w": torch.arange(6.0).reshape(2, 3)},  # e.g. EMA weights: loaded in place
        "count": 12,
        "lr": 3e-4,
        "name": "stage1",
        "py_rng": (3, (1, 2, 3), None),
    }
    checkpoint.save(tmp_path, 5, {"values": ValueState(values)})
    shadow = torch.zeros(2, 3)
    into = ValueState(
        {"rng": torch.zeros_like(rng), "shadow": {"w": shadow}, "count": 0, "lr": 0.0,
         "name": "", "py_rng": ()}
    )  # fmt: skip
    assert checkpoint.load(tmp_path / "step_00000005", {"values": into}) == 5
    assert torch.equal(into["rng"], rng)
    assert torch.equal(shadow, values["shadow"]["w"])  # the caller's tensor was filled
    assert (into["count"], into["lr"], into["name"]) == (12, 3e-4, "stage1")
    assert into["py_rng"] == (3, (1, 2, 3), None)


def test_a_checkpoint_of_older_code_names_the_folder_to_move(tmp_path: Path):
    """A run whose state gained a key since the checkpoint was written (e.g. a new loop
    counter) cannot resume from it: the error says which folder to move aside."""
    checkpoint.save(tmp_path / "run", 3, {"values": ValueState({"count": 1})})
    newer = {"values": ValueState({"count": 0}), "_loop": ValueState({"skipped": ()})}
    with pytest.raises(RuntimeError, match=f"move {tmp_path / 'run'} aside"):
        checkpoint.load(tmp_path / "run" / "step_00000003", newer)


def test_latest_ignores_partial_folders_and_keep_prunes(tmp_path: Path):
    state = {"values": ValueState({"w": torch.ones(3)})}
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, state, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step_00000002", "step_00000003"]

    # A crash mid-save leaves the hidden partial folder; a copied folder without DCP's index
    # is incomplete too: neither is ever picked.
    (tmp_path / ".step_00000009.partial").mkdir()
    (tmp_path / ".step_00000009.partial" / "__0_0.distcp").write_bytes(b"half")
    (tmp_path / "step_00000010").mkdir()
    assert checkpoint.latest(tmp_path) == tmp_path / "step_00000003"

    checkpoint.save(tmp_path, 4, state, keep=2)  # the next save clears the partial leftovers
    assert not (tmp_path / ".step_00000009.partial").exists()
    assert checkpoint.latest(tmp_path) == tmp_path / "step_00000004"
    assert not (tmp_path / "step_00000002").exists()

    checkpoint.save(tmp_path, 4, {"values": ValueState({"w": torch.full((3,), 2.0)})})
    into = ValueState({"w": torch.zeros(3)})
    checkpoint.load(tmp_path / "step_00000004", {"values": into})
    assert torch.equal(into["w"], torch.full((3,), 2.0))  # re-saving a step replaces it

    assert checkpoint.latest(tmp_path / "missing") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.load(tmp_path / "step_00000010", state)
    with pytest.raises(ValueError, match="keep"):
        checkpoint.save(tmp_path, 5, state, keep=0)


def test_load_refuses_objects_that_are_not_plain_data(tmp_path: Path):
    # A value DCP would store with torch.save and read back with a full unpickle.
    checkpoint.save(tmp_path, 1, {"values": ValueState({"x": fractions.Fraction(1, 3)})})
    with pytest.raises(CheckpointException, match="not plain data"):
        checkpoint.load(tmp_path / "step_00000001", {"values": ValueState({"x": None})})

    # A tampered index: the pickle would call os.getcwd (stands in for anything harmful).
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    index = tmp_path / "step_00000001" / ".metadata"
    index.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(pickle.UnpicklingError, match="metadata refers to posix.getcwd"):
        checkpoint.load(tmp_path / "step_00000001", {"values": ValueState({"x": None})})


# --------------------------------------------------------------------------------------------
# Resharding: saved sharded on 2 gloo ranks, loaded unsharded in this process


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value on every rank; a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _save_sharded(rank: int, port: int, directory: str) -> None:
    """One of 2 ranks: train a step sharded, save, reload into a fresh sharded model (2 → 2),
    and leave the whole expected state for the single process to compare with."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    init_distributed("gloo")
    try:
        model = shard_model(tiny_model(seed=0), UNITS)
        opt = adamw(model.parameters())
        train_step(model, {"ae": opt}, batch(rank))  # each rank its own sample
        state = {"ae": ModelOptimState(model, {"ae": opt}), "run": ValueState({"epoch": 3})}
        checkpoint.save(Path(directory) / "ckpt", 1, state)

        # whole values, gathered (collective; with cpu_offload only rank 0 receives them)
        whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(model, options=whole)
        optim_sd = get_optimizer_state_dict(model, opt, options=whole)
        if rank == 0:
            expected = {"model": model_sd, "optim": optim_sd["state"]}
            torch.save(expected, Path(directory) / "expected.pt")

        again = shard_model(tiny_model(seed=1), UNITS)
        again_opt = adamw(again.parameters())
        found = checkpoint.latest(Path(directory) / "ckpt")
        run = ValueState({"epoch": 0})
        assert (
            checkpoint.load(found, {"ae": ModelOptimState(again, {"ae": again_opt}), "run": run})
            == 1
        )
        assert run["epoch"] == 3
        for p, q in zip(model.parameters(), again.parameters()):
            assert torch.equal(p.to_local(), q.to_local())  # this rank's shard
            for key, value in opt.state[p].items():
                assert torch.equal(full(value), full(again_opt.state[q][key]))
    finally:
        close_distributed()


def test_sharded_checkpoint_loads_into_one_unsharded_process(tmp_path: Path):
    mp.spawn(_save_sharded, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)

    model = tiny_model(seed=1)
    opt = adamw(model.parameters())
    run = ValueState({"epoch": 0})
    found = checkpoint.latest(tmp_path / "ckpt")
    assert checkpoint.load(found, {"ae": ModelOptimState(model, {"ae": opt}), "run": run}) == 1
    assert run["epoch"] == 3
    for name, p in model.named_parameters():
        assert not hasattr(p, "full_tensor")
        assert torch.equal(p.detach(), expected["model"][name]), f"parameter {name} differs"
        for key, value in opt.state[p].items():
            assert torch.equal(value, expected["optim"][name][key]), f"{key} of {name} differs"


def test_async_save_keeps_the_step_it_was_given_while_training_goes_on(tmp_path: Path):
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    (tmp_path / ".step_00000001.partial").mkdir(parents=True)  # a crashed write's leftovers
    saver = checkpoint.AsyncSaver(tmp_path, keep=1)
    final = saver.save(2, {"m": ModelOptimState(model, {})})
    with torch.no_grad():  # training goes on while the write is in flight
        model.weight.add_(1.0)
    assert checkpoint.latest(tmp_path) is None or checkpoint.latest(tmp_path) == final
    assert saver.wait() == final and checkpoint.latest(tmp_path) == final
    assert not list(tmp_path.glob(".step_*.partial"))
    fresh = nn.Linear(64, 64)
    assert checkpoint.load(final, {"m": ModelOptimState(fresh, {})}) == 2
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k
    saver.save(3, {"m": ModelOptimState(model, {})})
    saver.wait()
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000003"]  # keep=1 pruned step 2
