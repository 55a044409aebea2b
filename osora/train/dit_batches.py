"""DiT training batches from a latents table: step → `LatentBatch`.

The schedule comes from the table's small columns (`LatentTable`: items in id order and their
buckets); each step takes its rank's items of that step's bucket from
`bucket_batches.epoch_schedule`, so every rank trains on the same bucket, and reads only
those rows' latents and texts from the store, and their texts' embeddings from `text`
(osora.train.text_source). Nothing holds the whole table or every caption's embedding. Then,
per sample:
- conditioned stages draw a condition kind (`conditioning.sample_condition_kind`, kinds that
  do not fit the clip left out) and build [mask, mask·latent] from the clip's own latent
  frames. (The reference encodes an i2v image separately from the video; with precomputed
  latents the first latent frame stands in for it — exact for a causal AE's first frame, an
  approximation for a non-causal one, whose first latent frame also saw frames 1–3.)
- the condition is dropped with `conditioning.image_dropout`, the text with `text_dropout`
  (T5 and CLIP independently, to the empty prompt's embedding).
All draws come from a generator seeded by (seed, rank, step), so a resumed run repeats the
batches of the uninterrupted one, and a batch can be made ahead of its step (osora.train.prefetch).

Gradient accumulation over N micro-batches (`micro_batches`) makes each step's batch N× the
bucket's batch size: the samples, and draws, of one N× batch. The objective splits it on the
device (osora.train.flow_objective), so a step's batch stays one set of tensors: the
prefetcher's pinned ring, one buffer per tensor shape per step in flight, would be overrun by
N same-shaped micro-batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from osora.diffusion.conditioning import (
    build_cond,
    condition_mask,
    drop_condition,
    drop_text,
    sample_condition_kind,
)
from osora.train.bucket_batches import BucketBatch, BucketRule, epoch_schedule
from osora.train.flow_objective import LatentBatch
from osora.train.latent_table import LatentTable
from osora.train.text_source import OnlineText


class LatentBatches:
    """table: the latents table's pinned version; text: the batches' text embeddings;
    rules: bucket frame count → BucketRule; condition_weights: None for T2V, else kind → weight;
    micro_batches: a step's batch holds that many times each bucket's batch size (module doc).
    """

    def __init__(self, table: LatentTable, text: OnlineText, rules: Mapping[int, BucketRule],
                 *, world: int, rank: int, seed: int,
                 condition_weights: Mapping[str, float] | None = None,
                 v2v_frames: int | None = None, text_dropout: float = 0.0,
                 image_dropout: float = 0.0, micro_batches: int = 1):
        if not len(table):
            raise ValueError(f"no latent rows to train on in {table.name}: run the latents "
                             "stage first (dvc repro latents) and check its level")
        missing = sorted({frames for frames, _, _ in table.buckets} - set(rules))
        if missing:
            raise ValueError(f"no batch size for {missing}-frame buckets: add them to "
                             "params/buckets.yaml for this stage")
        self.table, self.text = table, text
        self.buckets = table.buckets
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be ≥ 1 (the stage's grad_accum), got "
                             f"{micro_batches}")
        self.rules = {b: _times(rules[b[0]], micro_batches) for b in set(self.buckets)}
        self.world, self.rank, self.seed = world, rank, seed
        self.condition_weights = dict(condition_weights) if condition_weights else None
        self.v2v_frames = v2v_frames
        self.text_dropout, self.image_dropout = text_dropout, image_dropout
        self._epochs: list[list[list[BucketBatch]]] = []

    def step_batch(self, step: int) -> BucketBatch:
        """This rank's items at a global step: epochs follow each other, each its own shuffle."""
        done = 0
        for epoch in range(step + 1):  # an epoch has ≥ 1 step, so step lies within step + 1
            if epoch == len(self._epochs):
                self._epochs.append(epoch_schedule(self.buckets, self.rules, world=self.world,
                                                   seed=self.seed, epoch=epoch))
                if not self._epochs[-1]:
                    raise ValueError("an epoch has no full batch: lower the batch sizes in "
                                     "params/buckets.yaml or the stage's grad_accum (each "
                                     "bucket needs ≥ batch_size × grad_accum × world clips)")
            if step < done + len(self._epochs[epoch]):
                return self._epochs[epoch][step - done][self.rank]
            done += len(self._epochs[epoch])
        raise AssertionError("unreachable")

    def __call__(self, step: int) -> LatentBatch:
        items = list(self.step_batch(step).items)
        # its own generator from (seed, rank, step), not the global RNG: a batch may be made
        # ahead of its step, in a prefetch thread (osora.train.prefetch)
        generator = torch.Generator().manual_seed(hash((self.seed, self.rank, step)) % 2**63)
        latent, captions = self.table.read(items)  # (B, C, T, H, W) float32, B texts
        emb, null = self.text(captions), self.text.null
        text, pooled, mask = drop_text(
            emb.seq.float(), emb.pooled.float(), null_text=null.seq.float(),
            null_pooled=null.pooled.float(), p_text=self.text_dropout,
            p_pooled=self.text_dropout, generator=generator, text_mask=emb.mask,
            null_text_mask=null.mask)
        cond = None
        if self.condition_weights is not None:
            t = latent.shape[2]
            masks = torch.stack([condition_mask(
                sample_condition_kind(self.condition_weights, generator, num_latent_frames=t,
                                      v2v_frames=self.v2v_frames), t,
                v2v_frames=self.v2v_frames) for _ in items])  # (B, T)
            cond = drop_condition(build_cond(latent, masks), self.image_dropout, generator)
        return LatentBatch(latent, text, pooled, mask, cond)  # on the CPU (prefetch moves it)


def _times(rule: BucketRule, n: int) -> BucketRule:
    """The rule with n× the batch size (gradient accumulation's whole-step batch)."""
    return dataclasses.replace(rule, batch_size=rule.batch_size * n)
