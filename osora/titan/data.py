"""torchtitan's dataloader for the MMDiT: osora `LatentBatch`es as (input_dict, labels).

A batch source is a function of the step, `batch_for(i) -> LatentBatch`, as in osora's own
loop (deterministic per (seed, rank, i), so a resumed run repeats the same batches). Two:
- "synthetic" (`SyntheticLatents`): Gaussian latents of the [osora] bucket shape with Gaussian
  text features and no condition. Not data: for throughput/MFU runs and CPU tests.
- "latents": osora.train.dit_batches.LatentBatches over the latents table of params' stage —
  osora's own bucket schedule, text source (params' text_source: the text_embeds table or the
  encoder), conditions and dropouts. As in osora's pipelines/dit_train.py, each step reads only
  its rank's rows from the store and their texts' embeddings; it needs the `pipeline` extra
  and the store of params/store.yaml (the versions the receipts pin, else the latest). Its
  batch size per rank is each bucket's (params/buckets.yaml), not training.local_batch_size.

`StepBatches` turns a source into torchtitan's ParallelAwareDataloader dataset (already
batched: batch_size=None), stateful by its step counter so torchtitan's checkpoints resume it.

torchtitan items: input_dict = {"latent" (B, C, T, H, W), "text" (B, L, D_text), "pooled"
(B, D_vec), and when present "text_mask" (B, L) bool, "cond" (B, C + 1, T, H, W)}; labels =
the key mask (B, L + N) bool of the [text; video] sequence, one element per token: torchtitan
counts labels' elements as tokens (throughput, MFU, the loss normaliser), and the flow target
itself is drawn inside the step (noise − latent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch.distributed.checkpoint.stateful import Stateful
from torch.utils.data import IterableDataset
from torchtitan.components.dataloader import ParallelAwareDataloader

from osora.config.dit import DiTStageParams
from osora.models.mmdit import MMDiTConfig
from osora.titan.job_config import Osora, osora_options
from osora.train.flow_objective import LatentBatch

BatchFor = Callable[[int], LatentBatch]
_INPUT_KEYS = ("latent", "text", "pooled", "text_mask", "cond")


def to_titan(batch: LatentBatch, patch_size: int) -> tuple[dict[str, torch.Tensor],
                                                          torch.Tensor]:
    """A LatentBatch as torchtitan's (input_dict, labels) (module doc)."""
    b, _, t, h, w = batch.latent.shape
    video = t * (h // patch_size) * (w // patch_size)
    text_mask = (batch.text_mask if batch.text_mask is not None
                 else torch.ones(batch.text.shape[:2], dtype=torch.bool))  # (B, L)
    labels = torch.cat([text_mask.cpu(), torch.ones(b, video, dtype=torch.bool)], 1)  # (B, L+N)
    inputs = {k: getattr(batch, k) for k in _INPUT_KEYS if getattr(batch, k) is not None}
    return inputs, labels


def from_titan(input_dict: dict[str, torch.Tensor]) -> LatentBatch:
    """The LatentBatch of a torchtitan input_dict (on whatever device it was moved to)."""
    return LatentBatch(**{k: input_dict.get(k) for k in _INPUT_KEYS})


class SyntheticLatents:
    """batch_for(i): Gaussian latents (B, C, T, H, W), text (B, L, text_dim) and pooled
    (B, vec_dim) features, all from a generator seeded by (seed, rank, i); no mask, no
    condition (a conditioned model sees a zero condition, as for t2v)."""

    def __init__(self, config: MMDiTConfig, opts: Osora, batch_size: int, *, seed: int,
                 rank: int):
        self.config, self.batch_size, self.seed, self.rank = config, batch_size, seed, rank
        self.shape = (opts.latent_frames, opts.latent_height, opts.latent_width)
        self.text_tokens = opts.text_tokens

    def __call__(self, step: int) -> LatentBatch:
        # the trailing 1 keeps these draws apart from the step's own RNG, seeded by
        # (seed, rank, step) in OsoraTrainer.train_step as in osora's loop
        g = torch.Generator().manual_seed(hash((self.seed, self.rank, step, 1)) % 2**63)
        cfg, b = self.config, self.batch_size
        latent = torch.randn(b, cfg.in_channels, *self.shape, generator=g)  # (B, C, T, H, W)
        text = torch.randn(b, self.text_tokens, cfg.text_dim, generator=g)  # (B, L, D_text)
        pooled = torch.randn(b, cfg.vec_dim, generator=g)  # (B, D_vec)
        return LatentBatch(latent, text, pooled)


def latent_table_batches(config: MMDiTConfig, opts: Osora, *, world: int, rank: int,
                         seed: int, device: str | torch.device = "cpu"):
    """osora's LatentBatches over params' latents table for [osora] profile / stage (module
    doc). `device` runs the text encoder of an online text source (each batch's texts, as the
    batch is made)."""
    from osora.config import load_settings
    from osora.data.text_embeds import TABLE as TEXT_TABLE
    from osora.lineage import read_receipt
    from osora.store import Store
    from osora.train.dit_batches import LatentBatches
    from osora.train.dit_setup import bucket_rules
    from osora.train.latent_table import LatentTable
    from osora.train.text_source import build_text_source

    settings = load_settings(opts.profile)
    params = settings.dit
    if opts.stage not in params.train.stages:
        raise ValueError(f"[osora] stage {opts.stage!r} is not in params/dit.yaml "
                         f"train.stages ({', '.join(params.train.stages)})")
    _check_matches_params(config, params.model, opts.profile)
    stage = params.train.stages[opts.stage]
    _check_osora_loop_only(stage, opts.stage)
    if stage.conditioned and config.cond_channels == 0:
        raise ValueError(f"stage {opts.stage} is conditioned but the flavour has no condition "
                         "input (cond_channels 0)")
    table = f"latents_{stage.latents}"
    store = Store.from_settings(settings.store)
    version = (read_receipt(Path(opts.latents_receipt))[table].version
               if opts.latents_receipt else store.version(table))
    text_version = None
    if stage.text_source == "table":
        text_version = (read_receipt(Path(opts.texts_receipt))[TEXT_TABLE].version
                        if opts.texts_receipt else store.version(TEXT_TABLE))
    cond = params.conditioning
    return LatentBatches(
        LatentTable(store, table, version),
        build_text_source(params, opts.stage, store, text_version, device),
        bucket_rules(settings.buckets, opts.stage), world=world, rank=rank, seed=seed,
        condition_weights=cond.weights if stage.conditioned else None,
        v2v_frames=cond.v2v_frames, text_dropout=cond.text_dropout,
        image_dropout=cond.image_dropout)


def _check_osora_loop_only(stage: DiTStageParams, name: str) -> None:
    """Refuse the stage settings only osora's own loop applies (pipelines/dit_train.py)."""
    key = f"params/dit.yaml train.stages.{name}"
    if stage.grad_accum > 1:
        raise ValueError(f"{key}.grad_accum is {stage.grad_accum}: torchtitan accumulates "
                         "through its own training.global_batch_size; set grad_accum: 1 for "
                         "torchtitan, or train the stage with osora's loop (dvc repro "
                         f"dit_{name})")
    if stage.lora is not None:
        raise ValueError(f"{key}.lora is set, which the osora_mmdit adapter does not support; "
                         f"train the stage with osora's loop (dvc repro dit_{name})")
    if stage.fsdp_offload:
        raise ValueError(f"{key}.fsdp_offload is on, which the osora_mmdit adapter does not "
                         "support; set it false for torchtitan, or train the stage with "
                         f"osora's loop (dvc repro dit_{name})")


def _check_matches_params(config: MMDiTConfig, params_config: MMDiTConfig, profile: str
                          ) -> None:
    """The flavour must read what the profile's latents and text encoder produce (its depth
    and width may differ: paper_d4 trains on the paper's data)."""
    fields = ("in_channels", "patch_size", "text_dim", "vec_dim")
    wrong = [f"{f} {getattr(config, f)} vs {getattr(params_config, f)}" for f in fields
             if getattr(config, f) != getattr(params_config, f)]
    if wrong:
        raise ValueError(f"the model flavour does not fit profile {profile!r}'s latents / text "
                         f"encoder: {'; '.join(wrong)}; pick the flavour of that profile")


class StepBatches(IterableDataset, Stateful):
    """batch_for(0), batch_for(1), … as torchtitan items, forever (the trainer stops at
    training.steps); its state is the next index."""

    def __init__(self, batch_for: BatchFor, patch_size: int):
        super().__init__()
        self.batch_for, self.patch_size, self.next_index = batch_for, patch_size, 0

    def __iter__(self):
        while True:
            batch = self.batch_for(self.next_index)
            self.next_index += 1
            yield to_titan(batch, self.patch_size)

    def state_dict(self) -> dict[str, int]:
        return {"next_index": self.next_index}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.next_index = int(state_dict["next_index"])


def build_osora_dataloader(dp_world_size: int, dp_rank: int, tokenizer, job_config,
                           **kwargs) -> ParallelAwareDataloader:
    """torchtitan's `build_dataloader_fn`: the [osora] source for this data-parallel rank
    (`tokenizer` is unused: text features come precomputed or from osora's encoder)."""
    from torchtitan.protocols.train_spec import get_train_spec

    opts = osora_options(job_config)
    config = get_train_spec(job_config.model.name).model_args[job_config.model.flavor].mmdit
    seed = job_config.debug.seed or 0
    if opts.source == "synthetic":
        batch_for = SyntheticLatents(config, opts, job_config.training.local_batch_size,
                                     seed=seed, rank=dp_rank)
    elif opts.source == "latents":
        device = "cuda" if torch.cuda.is_available() else "cpu"  # the rank's current GPU
        batch_for = latent_table_batches(config, opts, world=dp_world_size, rank=dp_rank,
                                         seed=seed, device=device)
    else:
        raise ValueError(f"[osora] source {opts.source!r}: use 'synthetic' or 'latents'")
    settings = {**asdict(job_config.training.dataloader), "batch_size": None}  # pre-batched
    return ParallelAwareDataloader(StepBatches(batch_for, config.patch_size), dp_rank=dp_rank,
                                   dp_world_size=dp_world_size, **settings)
