"""Assembling one DiT training stage from params/dit.yaml and params/buckets.yaml: where its
model starts (fresh, an earlier stage's weights, or an imported checkpoint), the optimizer of
docs/recipe.md §4, the flow objective, FSDP2 over the MMDiT's blocks, and the loop's settings."""

from __future__ import annotations

from pathlib import Path

import torch

from osora.models.mmdit import DoubleStreamBlock, MMDiT, SingleStreamBlock
from osora.train.activation_checkpoint import apply_checkpointing
from osora.train.block_compile import compile_blocks
from osora.train.bucket_batches import BucketRule
from osora.train.ema import EMA
from osora.train.flow_objective import FlowObjective
from osora.train.loop import LoopSettings
from osora.train.parallel import ContextLayout
from osora.weights.mmdit import load_mmdit

# The MMDiT's repeating blocks: each one FSDP2 unit (gathered, run, resharded)
MMDIT_SHARD_UNITS = (DoubleStreamBlock, SingleStreamBlock)
WEIGHTS_FILE = "dit.safetensors"


def stage_weights(models_root: Path, stage: str) -> Path:
    """Where stage `stage` writes its weights: models/dit/<stage>/dit.safetensors."""
    return Path(models_root) / stage / WEIGHTS_FILE


def init_weights(params, stage: str, models_root: Path) -> Path | None:
    """The weights file the stage starts from (an earlier stage's or a path); None: fresh."""
    init = params.train.stages[stage].init
    if init is None:
        return None
    return stage_weights(models_root, init) if init in params.train.stages else Path(init)


def initial_model(params, stage: str, models_root: Path) -> MMDiT:
    """The stage's starting MMDiT on the CPU, in float32, in training mode."""
    config = params.model
    init = params.train.stages[stage].init
    path = init_weights(params, stage, models_root)
    if path is None:
        torch.manual_seed(params.train.seed)
        return MMDiT(config).train()
    if not path.is_file():
        raise FileNotFoundError(f"stage {stage} starts from {init}: {path} does not exist; "
                                f"run that stage first (dvc repro dit_{init}) or fix "
                                f"params/dit.yaml:train.stages.{stage}.init")
    model = load_mmdit(path, dtype=torch.float32)
    if model.config != config:
        raise ValueError(f"{path} holds another MMDiT than params/dit.yaml:model "
                         f"({model.config} vs {config}); import it for this config or rerun "
                         "the earlier stage")
    return model.train()


def exported_model(params, weights: dict[str, torch.Tensor], stage: str) -> MMDiT:
    """An MMDiT holding the gathered full weights (`checkpoint.full_state_dict`); for a LoRA
    stage with its adapters, under peft's names (osora.models.lora.merge_into_base merges)."""
    with torch.device("meta"):
        model = MMDiT(params.model)
        lora = params.train.stages[stage].lora
        if lora is not None:
            _with_lora(model, lora, stage)
    model.load_state_dict(weights, strict=True, assign=True)
    return model


def _with_lora(model: MMDiT, lora, stage: str) -> MMDiT:
    """The stage's adapters on `model`, the rest frozen (osora.models.lora)."""
    # peft is a heavy optional import: only stages that configure LoRA load it
    from osora.models.lora import add_lora, lora_config

    return add_lora(model, lora_config(**lora.model_dump()),
                    source=f"params/dit.yaml:train.stages.{stage}.lora.target_modules")


def bucket_rules(buckets, stage: str) -> dict[int, BucketRule]:
    """params/buckets.yaml's rules of a stage, by bucket frame count."""
    if stage not in buckets.stages:
        raise ValueError(f"params/buckets.yaml has no stage {stage}; add its batch sizes")
    return {frames: BucketRule(r.batch_size, r.keep)
            for frames, r in buckets.stages[stage].items()}


def build_objective(params, model: MMDiT, stage: str, world_size: int,
                    context: ContextLayout | None = None) -> FlowObjective:
    """AdamW (docs/recipe.md §4) on the model's trainable parameters, FSDP2-sharded over its blocks
    when world_size > 1; with a context-parallel layout the blocks' attention is swapped for
    attention over each group of ranks (train.cp_attention), which split the sequence. A LoRA
    stage's adapters go in first (before checkpointing, compile and sharding wrap the layers)
    and are all that trains."""
    from osora.train.parallel import shard_model

    t = params.train
    if t.stages[stage].lora is not None:
        # peft draws the adapters' init (lora_A) from the global RNG: seeded from the stage's
        # seed, it is the same in every run and on every rank, whatever drew before
        torch.manual_seed(t.seed)
        _with_lora(model, t.stages[stage].lora, stage)
    cp = 1 if context is None else context.cp
    if cp > 1:
        from osora.train.context_parallel import parallelize_attention

        parallelize_attention(model, context.group, t.cp_attention)
    ckpt = t.stages[stage].checkpointing
    apply_checkpointing(model, ckpt.double, ckpt.single, ckpt.offload)
    if t.compile_blocks:
        compile_blocks(model, MMDIT_SHARD_UNITS)
    if world_size > 1:
        # context parallelism enters through `embed`, not `forward` (context_parallel_forward)
        model = shard_model(model, MMDIT_SHARD_UNITS,
                            forward_methods=("embed",) if cp > 1 else (),
                            gradient_divide_factor=context.dp if cp > 1 else None,
                            offload=t.stages[stage].fsdp_offload)
    trainable = [p for p in model.parameters() if p.requires_grad]  # a LoRA stage: adapters
    optimizer = torch.optim.AdamW(trainable, lr=t.stages[stage].lr, betas=t.betas,
                                  eps=t.eps, weight_decay=t.weight_decay)
    ema = EMA(model, t.ema_decay) if t.ema_decay is not None else None
    return FlowObjective(model, optimizer, patch_size=params.model.patch_size,
                         sigma_min=t.sigma_min, ema=ema, context=context,
                         micro_batches=t.stages[stage].grad_accum,
                         loss_on_conditioned=params.conditioning.loss_on_conditioned)


def loop_settings(params, stage: str, device: str) -> LoopSettings:
    t, s = params.train, params.train.stages[stage]
    drops = () if s.lr_drop is None else ((s.lr_drop[0], s.lr_drop[1] / s.lr),)
    return LoopSettings(steps=s.steps, grad_clip=t.grad_clip, log_every=t.log_every,
                        checkpoint_every=t.checkpoint_every, precision=t.precision,
                        device=device, seed=t.seed, warmup_steps=s.warmup_steps,
                        lr_drops=drops, async_checkpoint=t.async_checkpoint,
                        recovery=t.recovery,
                        gc_every=t.gc_every)
