"""FSDP2 data parallelism on 2 real gloo processes: sharded training equals one process.

Each rank trains on half of a global batch; FSDP2 reduce-scatters the mean of the ranks'
gradients, which is the gradient of the whole batch's mean loss. Two single-process references:

- `whole`: one forward/backward of the whole batch. Its gradients differ from the sharded ones
  by float32 rounding only (the batch-of-2 convs sum in another order): RTOL_GRAD / ATOL_GRAD.
- `reference`: the whole batch as two micro-batches of one sample, gradients accumulated then
  halved: the same arithmetic as the ranks (batch-1 convs, one add, one exact division by 2), so
  gradients, clipped norms and parameters after 2 AdamW steps must be bitwise equal.

Why both: with eps = 1e-15 AdamW normalises each gradient element by its own magnitude, so an
element whose gradient is at rounding-noise level takes a ±lr step of random sign; against
`whole`, a few weights in 10⁵ then differ by up to ~lr after 2 steps (observed at 8×64×64:
1 of ~400k by 8.4e-4 with lr 1e-3), so parameters are compared against `reference` instead.
And Adam is invariant to the gradient's scale (the clip at 1.0 is inactive at this model's
gradient norm, ~3e-3), so a reduction that averages twice would leave the parameters equal:
the gradients themselves are compared, and a deliberately doubled divide factor is checked to
be caught.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from free_port import free_port
from torch import nn

from osora.models.dcae import DCAE, DCAE_TINY
from osora.train.ae_setup import DCAE_SHARD_UNITS as UNITS
from osora.train.parallel import (
    Dist,
    close_distributed,
    init_distributed,
    mean_over_ranks,
    shard_model,
)

WORLD = 2
LR = 1e-3
RTOL_GRAD, ATOL_GRAD = 1e-4, 1e-8  # sharded vs `whole`: float32 rounding of the batch sum
EXACT = {"rtol": 0.0, "atol": 0.0}  # sharded vs `reference`: the same arithmetic


def tiny_model(seed: int) -> DCAE:
    torch.manual_seed(seed)
    return DCAE(DCAE_TINY)


def global_batch() -> torch.Tensor:
    # 4×64×64: the deepest stage still attends over 1×2×2 positions (at 4×32×32 it has one
    # position, the q/k gradients are pure rounding noise and AdamW amplifies them)
    g = torch.Generator().manual_seed(1)
    return torch.rand(WORLD, 3, 4, 64, 64, generator=g) * 2 - 1  # (B, 3, T, H, W) in [-1, 1]


def adamw(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-15)


def backward(model: nn.Module, x: torch.Tensor) -> None:
    loss = (model(x) - x).abs().mean()  # L1 reconstruction, mean over the batch given
    loss.backward()


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value on every rank; a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def assert_grads(sharded: nn.Module, expected: nn.Module, what: str, **tol: float) -> None:
    grads = {n: p.grad for n, p in expected.named_parameters()}
    for name, p in sharded.named_parameters():
        torch.testing.assert_close(
            full(p.grad), grads[name], **tol, msg=lambda m, n=name: f"{what} grad {n}: {m}"
        )


def _worker(rank: int, port: int) -> None:
    """One rank: shard, train 2 steps on its half, compare with the single-process runs."""
    torch.set_num_threads(1)  # 2 ranks on 2 cores; and the same kernels as the references
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    where = init_distributed(None)  # no backend given: gloo, since there is no GPU
    try:
        assert where == Dist(rank, WORLD, rank)
        assert torch.distributed.get_backend() == "gloo"
        x = global_batch()  # (2, 3, 4, 64, 64): the same on every rank
        mine = x[rank : rank + 1]  # (1, 3, 4, 64, 64): this rank's half

        whole, reference = tiny_model(seed=0), tiny_model(seed=0)
        sharded = shard_model(tiny_model(seed=0), UNITS)
        assert all(hasattr(p, "full_tensor") for p in sharded.parameters())  # DTensors
        ref_opt, opt = adamw(reference), adamw(sharded)

        backward(whole, x)
        for step in range(2):
            ref_opt.zero_grad(set_to_none=True)
            opt.zero_grad(set_to_none=True)
            for i in range(WORLD):  # the whole batch as micro-batches of one sample
                backward(reference, x[i : i + 1])
            for p in reference.parameters():
                p.grad.div_(WORLD)
            backward(sharded, mine)
            if step == 0:
                assert_grads(sharded, whole, "whole batch", rtol=RTOL_GRAD, atol=ATOL_GRAD)
            assert_grads(sharded, reference, f"step {step}", **EXACT)
            ref_norm = nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
            norm = nn.utils.clip_grad_norm_(sharded.parameters(), 1.0)  # a DTensor norm
            torch.testing.assert_close(full(norm), ref_norm, rtol=1e-6, atol=0.0)
            ref_opt.step()
            opt.step()

        ref_params = dict(reference.named_parameters())
        for name, p in sharded.named_parameters():
            torch.testing.assert_close(
                full(p.detach()), ref_params[name].detach(), **EXACT,
                msg=lambda m, n=name: f"param {n}: {m}",
            )  # fmt: skip

        # Clipping that bites scales DTensor gradients like plain ones.
        nn.utils.clip_grad_norm_(sharded.parameters(), float(full(norm)) / 4)
        nn.utils.clip_grad_norm_(reference.parameters(), float(ref_norm) / 4)
        assert_grads(sharded, reference, "clipped", rtol=1e-5, atol=1e-10)

        # A wrong reduction is caught: dividing by 2× the world size (gradients averaged
        # twice) gives exactly half the reference gradient. (Without force-sum reduction this
        # custom factor makes FSDP2 reduce with PREMUL_SUM, which gloo rejects: it fails too.)
        for module in sharded.modules():
            if hasattr(module, "set_gradient_divide_factor"):
                module.set_gradient_divide_factor(2.0 * WORLD)
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        backward(sharded, mine)
        for i in range(WORLD):
            backward(reference, x[i : i + 1])
        for p in reference.parameters():
            p.grad.div_(2 * WORLD)  # what the doubled factor computes: half the mean
        assert_grads(sharded, reference, "doubled divide factor", **EXACT)
        mean = 2 * reference.decoder.conv_out.weight.grad
        halved = full(sharded.decoder.conv_out.weight.grad)
        assert not torch.allclose(halved, mean, rtol=RTOL_GRAD, atol=ATOL_GRAD)

        means = mean_over_ranks({"loss": float(rank), "one": 1.0})
        assert means == {"loss": 0.5, "one": 1.0}
    finally:
        close_distributed()


def test_sharded_training_equals_single_process():
    mp.spawn(_worker, args=(free_port(),), nprocs=WORLD, join=True)


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed(None) == Dist(0, 1, 0)
    assert not torch.distributed.is_initialized()
    model = tiny_model(seed=0)
    assert shard_model(model, UNITS) is model
    assert not any(hasattr(p, "full_tensor") for p in model.parameters())
    assert mean_over_ranks({"loss": 2.0}) == {"loss": 2.0}


def test_incomplete_torchrun_environment_is_an_error(monkeypatch: pytest.MonkeyPatch):
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="incomplete"):
        init_distributed(None)
