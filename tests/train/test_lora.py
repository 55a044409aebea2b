"""LoRA training of the MMDiT (osora.models.lora through osora.train.dit_setup, params/dit.yaml's
`finetune` stage): only the adapters train and the optimizer holds only them; a pattern that
names no linear layer is refused; activation checkpointing leaves the gradients as they were
(float64, with adapter dropout); FSDP2 over 2 gloo ranks, with and without CPU offload,
equals one process; a killed and resumed run, and a NaN step restored from its checkpoint,
behave as for stages 1–3."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from free_port import free_port, join_gloo

from osora.config import load_settings
from osora.models.lora import add_lora, lora_config, trainable_parameters
from osora.models.mmdit import MMDiT
from osora.train.activation_checkpoint import apply_checkpointing
from osora.train.checkpoint import full_state_dict
from osora.train.dit_setup import (
    MMDIT_SHARD_UNITS,
    build_objective,
    initial_model,
    loop_settings,
    stage_weights,
)
from osora.train.flow_objective import LatentBatch
from osora.train.loop import train
from osora.train.parallel import close_distributed, shard_model
from osora.train.recovery import RecoverySettings
from osora.weights.mmdit import save_mmdit

REPO = Path(__file__).resolve().parents[2]
DIT = load_settings(params_dir=REPO / "params").dit
STAGE = "finetune"
LORA = DIT.train.stages[STAGE].lora
BATCH = 4  # a multiple of the stage's grad_accum (2)
WORLD = 2


def random_base(seed: int = 0) -> MMDiT:
    """The tiny profile's MMDiT with every weight non-zero (a trained-looking base: with the
    adaLN-zero init every block would be the identity and its adapters get no gradient)."""
    torch.manual_seed(seed)
    model = MMDiT(DIT.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.train()


def batch_at(step: int, size: int = BATCH, dtype=torch.float32) -> LatentBatch:
    """Fixed latents and text features of step `step` ((B, 16, 2, 4, 4) latents: 16 tokens)."""
    g = torch.Generator().manual_seed(1000 + step)
    m = DIT.model
    return LatentBatch(torch.randn(size, m.in_channels, 2, 4, 4, generator=g, dtype=dtype),
                       torch.randn(size, 6, m.text_dim, generator=g, dtype=dtype),
                       torch.randn(size, m.vec_dim, generator=g, dtype=dtype))


def settings(steps: int, **kw):
    """The finetune stage's loop settings, shortened, synchronous checkpoints every 2 steps."""
    return dataclasses.replace(loop_settings(DIT, STAGE, "cpu"), **{
        "steps": steps, "log_every": 1, "checkpoint_every": 2, "async_checkpoint": False,
        "gc_every": 0, "recovery": RecoverySettings(), **kw})


def base_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


def test_only_the_adapters_train_and_the_optimizer_holds_only_them():
    model = random_base()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    objective = build_objective(DIT, model, STAGE, world_size=1)
    adapters = trainable_parameters(model)
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n, _ in adapters)
    held = {id(p) for group in objective.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for _, p in adapters}

    start = {n: p.detach().clone() for n, p in adapters}
    train(objective, batch_at, settings(3))
    for name, p in model.named_parameters():
        if ".lora_" in name:
            assert not torch.equal(p, start[name]), f"adapter {name} did not train"
        else:
            assert torch.equal(p, before[base_name(name)]), f"base tensor {name} changed"
    assert set(map(base_name, (n for n, _ in model.named_parameters() if ".lora_" not in n))) \
        == set(before)


def test_the_adapters_start_from_the_stage_seed_whatever_drew_before():
    # every rank and every run of the stage starts from the same adapters (the rank's RNG
    # state before them depends on what ran first)
    starts = []
    for drawn_before in (0, 5):
        model = random_base()  # seeds the global RNG itself
        torch.rand(drawn_before)  # what else ran before the adapters
        build_objective(DIT, model, STAGE, world_size=1)
        starts.append({n: p.detach().clone() for n, p in trainable_parameters(model)})
    assert starts[0].keys() == starts[1].keys()
    assert all(torch.equal(starts[0][n], starts[1][n]) for n in starts[0])
    assert any(p.abs().sum() > 0 for p in starts[0].values())  # lora_A is drawn, not zero


def test_a_pattern_naming_no_linear_layer_is_refused():
    lora = LORA.model_copy(update={"target_modules": r".*attn\.q"})  # qkv is one layer
    stage = DIT.train.stages[STAGE].model_copy(update={"lora": lora})
    bad = DIT.model_copy(update={"train": DIT.train.model_copy(
        update={"stages": {**DIT.train.stages, STAGE: stage}})})
    with pytest.raises(ValueError, match=r"train\.stages\.finetune\.lora\.target_modules: "
                       r"'\.\*attn\\\.q' matches no linear layer of the MMDiT .* its linear "
                       r"layers: img_in, .* double_blocks\.<i>\.img_attn\.qkv, "):
        build_objective(bad, random_base(), STAGE, world_size=1)


@pytest.mark.parametrize("offload", [False, True])
def test_checkpointed_blocks_give_the_same_gradients(offload):
    """float64, adapter dropout 0.2 (the recompute must draw the same masks), B random so A
    gets a gradient too; offload moves the saved inputs through CPU copies."""
    torch.manual_seed(3)
    plain = add_lora(random_base().double(),
                     lora_config(LORA.rank, LORA.alpha, 0.2, LORA.target_modules))
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.1)
    checkpointed = copy.deepcopy(plain)
    wrapped = apply_checkpointing(checkpointed, -1, -1, offload=offload, copy_cpu=offload)
    assert len(wrapped) == DIT.model.depth_double + DIT.model.depth_single

    b = batch_at(0, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, BATCH, dtype=torch.float64)
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(7)  # the dropout masks
        model(b.latent, t, b.text, b.pooled).square().mean().backward()
        grads.append({n: p.grad for n, p in trainable_parameters(model)})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert g is not None and g.abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], g, rtol=1e-12, atol=1e-15, msg=name)


def _lora_sgd(model: MMDiT, batches: list[LatentBatch], t: torch.Tensor) -> None:
    """Two SGD steps on the mean squared velocity of each batch (float64)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for b in batches:
        optimizer.zero_grad()
        model(b.latent, t, b.text, b.pooled).square().mean().backward()
        optimizer.step()


def _adapted_base() -> MMDiT:
    torch.manual_seed(4)
    model = add_lora(random_base().double(), lora_config(LORA.rank, LORA.alpha, 0.0,
                                                         LORA.target_modules))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.1)
    return model


def _fsdp_worker(rank: int, port: int, out: str, offload: bool) -> None:
    join_gloo(rank, WORLD, port)
    try:
        model = shard_model(_adapted_base(), MMDIT_SHARD_UNITS, offload=offload)
        half = BATCH // WORLD
        batches = [batch_at(s, dtype=torch.float64) for s in range(2)]
        mine = [LatentBatch(b.latent[rank * half:(rank + 1) * half],
                            b.text[rank * half:(rank + 1) * half],
                            b.pooled[rank * half:(rank + 1) * half]) for b in batches]
        t = torch.linspace(0.1, 0.9, BATCH, dtype=torch.float64)[rank * half:(rank + 1) * half]
        _lora_sgd(model, mine, t)
        state = full_state_dict(model)  # collective
        if rank == 0:
            torch.save(state, out)
    finally:
        close_distributed()


@pytest.mark.parametrize("offload", [False, True])
def test_fsdp2_over_two_ranks_equals_one_process(tmp_path, offload):
    """Frozen base and trainable adapters in one FSDP2 unit per block: each rank trains on half
    the batch; the gathered weights (peft's names) equal one process on the whole batch. With
    FSDP2's CPU offload (the paper's finetune stage): on CPU ranks it moves nothing but runs
    the offload path with frozen parameters in the units."""
    out = tmp_path / "sharded.pt"
    mp.spawn(_fsdp_worker, args=(free_port(), str(out), offload), nprocs=WORLD, join=True)
    sharded = torch.load(out, weights_only=True)

    reference = _adapted_base()
    start = {n: p.detach().clone() for n, p in reference.named_parameters()}
    _lora_sgd(reference, [batch_at(s, dtype=torch.float64) for s in range(2)],
              torch.linspace(0.1, 0.9, BATCH, dtype=torch.float64))
    want = reference.state_dict()
    assert set(sharded) == set(want)
    for name, tensor in want.items():
        if ".lora_" in name:
            assert not torch.equal(tensor, start[name]), name
            torch.testing.assert_close(sharded[name], tensor, rtol=1e-10, atol=1e-13, msg=name)
        else:
            assert torch.equal(sharded[name], tensor), f"base tensor {name} changed"


def _stage_model(models: Path, seed: int) -> torch.nn.Module:
    """The finetune stage's starting model (stage 3's weights), its adapters drawn with
    `seed`: a fresh process would draw others, which the checkpoint must replace."""
    torch.manual_seed(seed)
    return initial_model(DIT, STAGE, models)


def test_a_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    models = tmp_path / "models"
    save_mmdit(random_base(), stage_weights(models, "stage3"))

    straight = build_objective(DIT, _stage_model(models, 0), STAGE, world_size=1)
    train(straight, batch_at, settings(4))

    first = build_objective(DIT, _stage_model(models, 0), STAGE, world_size=1)
    train(first, batch_at, settings(2), checkpoint_dir=tmp_path / "ckpt")  # "killed" at 2
    second = build_objective(DIT, _stage_model(models, 9), STAGE, world_size=1)
    result = train(second, batch_at, settings(4), checkpoint_dir=tmp_path / "ckpt")
    assert result.resumed_from == 2
    want = straight.model.state_dict()
    for name, tensor in second.model.state_dict().items():
        assert torch.equal(tensor, want[name]), name


def test_a_nan_step_is_restored_from_the_checkpoint(tmp_path):
    """Step 3's latents are NaN once: the run goes back to step 2's checkpoint and goes on, the
    base untouched and the adapters finite."""
    models = tmp_path / "models"
    save_mmdit(random_base(), stage_weights(models, "stage3"))
    objective = build_objective(DIT, _stage_model(models, 0), STAGE, world_size=1)
    base = {n: p.detach().clone() for n, p in objective.model.named_parameters()
            if ".lora_" not in n}
    poisoned = []

    def batch_for(step: int) -> LatentBatch:
        b = batch_at(step)
        if step == 3 and not poisoned:
            poisoned.append(step)
            b.latent[:] = float("nan")
        return b

    events = []
    result = train(objective, batch_for, settings(5, recovery=RecoverySettings(max_recoveries=1)),
                   checkpoint_dir=tmp_path / "ckpt", on_event=events.append)
    assert poisoned == [3] and [e["kind"] for e in events if e["kind"] == "nan"] == ["nan"]
    assert result.steps_run == 5
    for name, p in objective.model.named_parameters():
        if ".lora_" in name:
            assert torch.isfinite(p).all(), name
        else:
            assert torch.equal(p, base[name]), name
