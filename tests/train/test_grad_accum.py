"""Gradient accumulation: N micro-batches make the update of one N× batch.

In float64 a tiny MMDiT (conditions and text masks present) trained through the one loop with
N = 2 and N = 4 micro-batches has, at every step, the loss, gradient norm and gradients of the
same run with N = 1 on the whole batch (the same samples and draws), and the same parameters
and EMA after it; a resumed accumulating run repeats the uninterrupted one; the data side builds
the whole step's batch exactly as a batch size N× as large; and on 2 gloo ranks under FSDP2
(gradients reduced in the last micro-batch's backward only) N = 2 trains as one process on the
ranks' whole batch.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.multiprocessing as mp
from free_port import free_port, join_gloo
from mmdit_cases import (
    SEED,
    STEPS,
    TOL,
    WORLD,
    B,
    adamw,
    rank_batch,
    settings,
    step_batch,
    tiny_mmdit,
)
from test_dit_batches import RULES, TABLE, encoder, rows, write  # noqa: F401 (a fixture)
from torch import nn
from torch.distributed.fsdp import FSDPModule

from osora.config import load_settings
from osora.models.mmdit import MMDIT_TINY
from osora.store import Store
from osora.titan.data import _check_osora_loop_only
from osora.train.dit_batches import LatentBatches
from osora.train.dit_setup import MMDIT_SHARD_UNITS
from osora.train.ema import EMA
from osora.train.flow_objective import FlowObjective, LatentBatch
from osora.train.latent_table import LatentTable
from osora.train.loop import Update, train
from osora.train.parallel import close_distributed, shard_model
from osora.train.text_source import OnlineText


@dataclasses.dataclass
class Run:
    model: nn.Module
    objective: FlowObjective
    logged: dict[int, dict[str, float]]
    forwards: list[int]  # the batch size of every forward


def run(micro_batches: int, steps: int = STEPS, init_seed: int | None = None, **kw) -> Run:
    model = tiny_mmdit().double()
    if init_seed is not None:  # another start: a resumed run must take its state from disk
        torch.manual_seed(init_seed)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.05)
    objective = FlowObjective(model, adamw(model), patch_size=MMDIT_TINY.patch_size,
                              sigma_min=1e-5, ema=EMA(model, 0.9), micro_batches=micro_batches)
    out = Run(model, objective, {}, [])
    model.register_forward_pre_hook(lambda _, args: out.forwards.append(args[0].shape[0]))
    train(objective, step_batch, settings(steps, **kw.pop("loop", {})),
          log=lambda m, s: out.logged.__setitem__(s, m), **kw)
    return out


@pytest.fixture(scope="module")
def whole() -> Run:
    """The reference: each step's B samples as one batch (N = 1)."""
    return run(1)


@pytest.mark.parametrize("n", [2, 4])
def test_micro_batches_train_as_the_whole_batch_in_float64(whole, n):
    acc = run(n)
    assert whole.forwards == [B] * STEPS and acc.forwards == [B // n] * (n * STEPS)
    for step in range(1, STEPS + 1):
        for key in ("dit/loss", "dit/grad_norm", "shift"):
            assert acc.logged[step][key] == pytest.approx(whole.logged[step][key], rel=1e-12), \
                (step, key)
        # t is drawn in float32 (any model dtype): the means of halves differ by its rounding
        assert acc.logged[step]["t_mean"] == pytest.approx(whole.logged[step]["t_mean"],
                                                           rel=1e-6)
    params = dict(whole.model.named_parameters())
    for name, p in acc.model.named_parameters():  # the last step's (clipped) gradients too
        torch.testing.assert_close(p.grad, params[name].grad, **TOL, msg=f"grad {name}")
        torch.testing.assert_close(p.detach(), params[name].detach(), **TOL, msg=name)
    for a, b in zip(acc.objective.ema.shadow, whole.objective.ema.shadow):
        torch.testing.assert_close(a, b, **TOL)
    assert acc.logged[1]["dit/loss"] != acc.logged[2]["dit/loss"]  # steps see their own batch
    # throughput and MFU count the step's work: every micro-batch's
    tokens, flops = acc.objective.work(step_batch(0))
    parts = [acc.objective.work(part) for part in step_batch(0).split(n)]
    assert tokens == sum(t for t, _ in parts) and flops == pytest.approx(sum(f for _, f in parts))


def test_a_resumed_accumulating_run_equals_the_uninterrupted_one(tmp_path):
    straight = run(2, steps=4)
    run(2, steps=2, checkpoint_dir=tmp_path, loop={"checkpoint_every": 2})  # "crashes" at 2
    resumed = run(2, steps=4, init_seed=7, checkpoint_dir=tmp_path,
                  loop={"checkpoint_every": 2})
    assert resumed.forwards == [B // 2] * 4  # steps 2 and 3, two micro-batches each
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(straight.objective.ema.shadow, resumed.objective.ema.shadow):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.logged[4]["dit/loss"] == straight.logged[4]["dit/loss"]


def test_a_batch_that_does_not_split_names_grad_accum():
    with pytest.raises(ValueError, match="does not split into 3 micro-batches.*grad_accum"):
        step_batch(0).split(3)
    model = tiny_mmdit()
    with pytest.raises(ValueError, match="micro_batches must be ≥ 1"):
        FlowObjective(model, adamw(model), patch_size=1, micro_batches=0)
    with pytest.raises(ValueError, match="either loss or micro"):
        Update("dit", adamw(model), list(model.parameters()), None)


def test_the_step_batch_is_that_of_an_n_times_batch_size(encoder, tmp_path):  # noqa: F811
    """micro_batches=2 reads the samples and makes the draws (conditions, dropouts) of the
    bucket batch sizes doubled, on every rank, across an epoch boundary."""
    store = Store(str(tmp_path / "store"))
    table = LatentTable(store, TABLE, write(store, rows(32)))
    doubled = {frames: dataclasses.replace(rule, batch_size=2 * rule.batch_size)
               for frames, rule in RULES.items()}
    kw = dict(world=2, seed=3, condition_weights={"t2v": 1.0, "i2v_head": 1.0},
              text_dropout=0.3, image_dropout=0.3)
    for rank in range(2):
        acc = LatentBatches(table, OnlineText(encoder), RULES, rank=rank, micro_batches=2, **kw)
        big = LatentBatches(table, OnlineText(encoder), doubled, rank=rank, **kw)
        for step in range(4):  # 2 steps per epoch
            assert acc.step_batch(step).items == big.step_batch(step).items
            a, b = acc(step), big(step)
            assert a.latent.shape[0] == 2 * RULES[acc.step_batch(step).bucket[0]].batch_size
            for f in dataclasses.fields(LatentBatch):
                torch.testing.assert_close(getattr(a, f.name), getattr(b, f.name), rtol=0,
                                           atol=0, msg=f.name)
        # and not those of N = 1: twice the items
        one = LatentBatches(table, OnlineText(encoder), RULES, rank=rank, **kw)
        assert len(one.step_batch(0).items) * 2 == len(acc.step_batch(0).items)


def test_torchtitan_refuses_what_only_osoras_loop_does():
    stage = load_settings("tiny").dit.train.stages["stage1"]
    _check_osora_loop_only(stage, "stage1")  # the defaults pass
    with pytest.raises(ValueError, match=r"train.stages.stage1.grad_accum is 2.*osora's loop"):
        _check_osora_loop_only(stage.model_copy(update={"grad_accum": 2}), "stage1")
    with pytest.raises(ValueError, match=r"train.stages.stage1.fsdp_offload is on"):
        _check_osora_loop_only(stage.model_copy(update={"fsdp_offload": True}), "stage1")
    lora = load_settings("tiny").dit.train.stages["finetune"].lora
    with pytest.raises(ValueError, match=r"train.stages.stage1.lora is set"):
        _check_osora_loop_only(stage.model_copy(update={"lora": lora}), "stage1")


# ---- 2 ranks under FSDP2 --------------------------------------------------------------------



class RanksInOneProcess:
    """The reference of the ranks' run, in one process without FSDP2 or micro-batches: one
    update whose loss is the mean of each rank's flow loss on its samples with the draws that
    rank makes (its step's RNG seeded from (seed, rank, step), as the loop seeds it): the loss
    of the ranks' whole batch, backpropagated at once."""

    def __init__(self, model: nn.Module):
        self.inner = FlowObjective(model, adamw(model), patch_size=MMDIT_TINY.patch_size,
                                   sigma_min=1e-5)

    def updates(self, batch: None, step: int):
        losses = []
        for rank in range(WORLD):
            torch.manual_seed(hash((SEED, rank, step)) % 2**63)  # as the loop's _take
            (update,) = self.inner.updates(rank_batch(step, rank), step)  # draws t and noise
            losses.append(update.loss)

        def loss():
            return sum(fn()[0] for fn in losses) / WORLD, {}

        yield Update("dit", self.inner.optimizer, self.inner.params, loss)

    def state(self):
        return self.inner.state()


def _ranks_worker(rank: int, port: int) -> None:
    join_gloo(rank, WORLD, port)
    try:
        sharded = shard_model(tiny_mmdit().double(), MMDIT_SHARD_UNITS)
        objective = FlowObjective(sharded, adamw(sharded), patch_size=MMDIT_TINY.patch_size,
                                  sigma_min=1e-5, micro_batches=2)
        logged = {}
        train(objective, lambda step: rank_batch(step, rank), settings(STEPS), rank=rank,
              log=lambda m, s: logged.__setitem__(s, m))
        groups = [g for m in sharded.modules() if isinstance(m, FSDPModule)
                  for g in m._get_fsdp_state()._fsdp_param_groups]
        assert groups and all(g.reduce_grads for g in groups)  # the sync is on after a step

        reference = tiny_mmdit().double()
        expected = {}
        # every rank runs it (the loop's metrics are averaged over ranks: equal values)
        train(RanksInOneProcess(reference), lambda step: None, settings(STEPS),
              rank=rank, log=lambda m, s: expected.__setitem__(s, m))
        params = dict(reference.named_parameters())
        for name, p in sharded.named_parameters():
            torch.testing.assert_close(p.full_tensor().detach(), params[name].detach(), **TOL,
                                       msg=f"rank {rank} {name}")
            torch.testing.assert_close(p.grad.full_tensor(), params[name].grad, **TOL,
                                       msg=f"rank {rank} grad {name}")
        if rank == 0:
            for step in range(1, STEPS + 1):
                for key in ("dit/loss", "dit/grad_norm"):
                    assert logged[step][key] == pytest.approx(expected[step][key], rel=1e-12)
    finally:
        close_distributed()


def test_two_fsdp2_ranks_accumulating_train_as_one_process_on_their_whole_batch():
    mp.spawn(_ranks_worker, args=(free_port(),), nprocs=WORLD, join=True)
