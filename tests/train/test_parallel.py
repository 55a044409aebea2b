"""FSDP2 data parallelism on 2 real gloo processes: sharded training equals one process, for
the Video DC-AE (sharded over its blocks) and the MMDiT (over its double and single blocks,
the joint text+video attention inside a unit; flow-matching MSE on fixed inputs).

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
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.multiprocessing as mp
from free_port import free_port
from mmdit_cases import tiny_mmdit
from torch import nn

from osora.diffusion.conditioning import build_cond, condition_mask
from osora.models.dcae import DCAE, DCAE_TINY
from osora.models.mmdit import MMDIT_TINY
from osora.train.ae_setup import DCAE_SHARD_UNITS as UNITS
from osora.train.dit_setup import MMDIT_SHARD_UNITS
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


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]  # the model, the same on every call
    units: tuple  # its FSDP2 units
    batch: Callable[[], tuple[torch.Tensor, ...]]  # the global batch: tensors of batch WORLD
    loss: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]  # mean over the batch
    probe: str  # a parameter whose gradient the doubled-divide check compares
    # vs `reference`: exact for the DC-AE; the MMDiT's shared conditioning vector takes its
    # gradient from every block, summed in an order FSDP2's hooks change: rounding apart
    grad_tol: dict = field(default_factory=lambda: EXACT)
    param_tol: dict = field(default_factory=lambda: EXACT)  # after 2 AdamW steps


def tiny_model(seed: int = 0) -> DCAE:
    torch.manual_seed(seed)
    return DCAE(DCAE_TINY)


def dcae_batch() -> tuple[torch.Tensor]:
    # 4×64×64: the deepest stage still attends over 1×2×2 positions (at 4×32×32 it has one
    # position, the q/k gradients are pure rounding noise and AdamW amplifies them)
    g = torch.Generator().manual_seed(1)
    return (torch.rand(WORLD, 3, 4, 64, 64, generator=g) * 2 - 1,)  # (B, 3, T, H, W)


def dcae_loss(model: nn.Module, batch: tuple[torch.Tensor]) -> torch.Tensor:
    (x,) = batch
    return (model(x) - x).abs().mean()  # L1 reconstruction


def mmdit_batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(2)
    cfg = MMDIT_TINY
    x = torch.randn(WORLD, cfg.in_channels, 3, 4, 6, generator=g)  # (B, C, T, H, W)
    cond = build_cond(torch.randn(x.shape, generator=g), condition_mask("i2v_head", 3))
    text = torch.randn(WORLD, 5, cfg.text_dim, generator=g)  # (B, L, D)
    mask = torch.rand(WORLD, 5, generator=g) > 0.3  # (B, L)
    mask[:, 0] = True
    return (x, torch.rand(WORLD, generator=g), text, torch.randn(WORLD, cfg.vec_dim, generator=g),
            mask, cond, torch.randn(x.shape, generator=g))


def mmdit_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, t, text, pooled, mask, cond, target = batch
    return ((model(x, t, text, pooled, text_mask=mask, cond=cond) - target) ** 2).mean()


CASES = {
    "dcae": Case(tiny_model, UNITS, dcae_batch, dcae_loss, "decoder.conv_out.weight"),
    "mmdit": Case(tiny_mmdit, MMDIT_SHARD_UNITS, mmdit_batch, mmdit_loss,
                  "final_layer.linear.weight", {"rtol": 1e-4, "atol": 1e-8},
                  {"rtol": 1e-4, "atol": 1e-5}),
}


def adamw(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-15)


def backward(case: Case, model: nn.Module, batch: tuple[torch.Tensor, ...], i: slice) -> None:
    case.loss(model, tuple(x[i] for x in batch)).backward()


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value on every rank; a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def assert_grads(sharded: nn.Module, expected: nn.Module, what: str, **tol: float) -> None:
    grads = {n: p.grad for n, p in expected.named_parameters()}
    for name, p in sharded.named_parameters():
        torch.testing.assert_close(
            full(p.grad), grads[name], **tol, msg=lambda m, n=name: f"{what} grad {n}: {m}"
        )


def _worker(rank: int, port: int, name: str) -> None:
    """One rank: shard, train 2 steps on its half, compare with the single-process runs."""
    case = CASES[name]
    torch.set_num_threads(1)  # 2 ranks on 2 cores; and the same kernels as the references
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    where = init_distributed(None)  # no backend given: gloo, since there is no GPU
    try:
        assert where == Dist(rank, WORLD, rank)
        assert torch.distributed.get_backend() == "gloo"
        x = case.batch()  # batch WORLD: the same on every rank
        mine, every = slice(rank, rank + 1), slice(None)  # this rank's half; the whole batch

        whole, reference = case.build(), case.build()
        sharded = shard_model(case.build(), case.units)
        assert all(hasattr(p, "full_tensor") for p in sharded.parameters())  # DTensors
        ref_opt, opt = adamw(reference), adamw(sharded)

        backward(case, whole, x, every)
        for step in range(2):
            ref_opt.zero_grad(set_to_none=True)
            opt.zero_grad(set_to_none=True)
            for i in range(WORLD):  # the whole batch as micro-batches of one sample
                backward(case, reference, x, slice(i, i + 1))
            for p in reference.parameters():
                p.grad.div_(WORLD)
            backward(case, sharded, x, mine)
            if step == 0:
                assert_grads(sharded, whole, "whole batch", rtol=RTOL_GRAD, atol=ATOL_GRAD)
            assert_grads(sharded, reference, f"step {step}", **case.grad_tol)
            ref_norm = nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
            norm = nn.utils.clip_grad_norm_(sharded.parameters(), 1.0)  # a DTensor norm
            torch.testing.assert_close(full(norm), ref_norm, rtol=1e-6, atol=0.0)
            ref_opt.step()
            opt.step()

        ref_params = dict(reference.named_parameters())
        for name, p in sharded.named_parameters():
            torch.testing.assert_close(
                full(p.detach()), ref_params[name].detach(), **case.param_tol,
                msg=lambda m, n=name: f"param {n}: {m}",
            )  # fmt: skip

        # Clipping that bites scales DTensor gradients like plain ones.
        nn.utils.clip_grad_norm_(sharded.parameters(), float(full(norm)) / 4)
        nn.utils.clip_grad_norm_(reference.parameters(), float(ref_norm) / 4)
        assert_grads(sharded, reference, "clipped", rtol=max(1e-5, case.grad_tol["rtol"]),
                     atol=max(1e-10, case.grad_tol["atol"]))

        # A wrong reduction is caught: dividing by 2× the world size (gradients averaged
        # twice) gives exactly half the reference gradient. (Without force-sum reduction this
        # custom factor makes FSDP2 reduce with PREMUL_SUM, which gloo rejects: it fails too.)
        for module in sharded.modules():
            if hasattr(module, "set_gradient_divide_factor"):
                module.set_gradient_divide_factor(2.0 * WORLD)
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        backward(case, sharded, x, mine)
        for i in range(WORLD):
            backward(case, reference, x, slice(i, i + 1))
        for p in reference.parameters():
            p.grad.div_(2 * WORLD)  # what the doubled factor computes: half the mean
        assert_grads(sharded, reference, "doubled divide factor", **case.grad_tol)
        mean = 2 * reference.get_parameter(case.probe).grad
        halved = full(sharded.get_parameter(case.probe).grad)
        assert not torch.allclose(halved, mean, rtol=RTOL_GRAD, atol=ATOL_GRAD)

        means = mean_over_ranks(torch.tensor([float(rank), 1.0], dtype=torch.float64))
        assert means.tolist() == [0.5, 1.0]
    finally:
        close_distributed()


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_training_equals_single_process(name):
    mp.spawn(_worker, args=(free_port(), name), nprocs=WORLD, join=True)


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed(None) == Dist(0, 1, 0)
    assert not torch.distributed.is_initialized()
    model = tiny_model()
    assert shard_model(model, UNITS) is model
    assert not any(hasattr(p, "full_tensor") for p in model.parameters())
    assert mean_over_ranks(torch.tensor([2.0])).tolist() == [2.0]


def test_incomplete_torchrun_environment_is_an_error(monkeypatch: pytest.MonkeyPatch):
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="incomplete"):
        init_distributed(None)
