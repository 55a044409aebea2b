"""Where a DiT batch's text embeddings come from, one batch at a time (never all captions'), as
a stage's params choose (`train.stages.<stage>.text_source`):
- `OnlineText` encodes the batch's captions with the text encoder when the batch is made (in
  the prefetch thread, on the encoder's device), as the reference trainer does;
- `TableText` looks them up in the `text_embeds` table the text_embed stage wrote
  (osora.data.text_embeds), by (encoder identity, text): no encoder is loaded at all.
Both give `null`, the empty prompt's embedding (a batch of one) that text dropout substitutes,
and `identity`, the encoder's, which the checkpoint and the exported weights record."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from osora.data.text_embeds import NULL_TEXT, read_embedding, text_key
from osora.models.text import TextEmbedding, TextEncoder
from osora.store import Store


class OnlineText:
    """texts → their embedding (seq (B, L, D_seq), mask (B, L), pooled (B, D_vec))."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        self.identity = encoder.identity
        self.origin = "online"  # where the embeddings come from, for the run's identity
        self.null = encoder.encode([NULL_TEXT])

    def __call__(self, texts: Sequence[str]) -> TextEmbedding:
        return self.encoder.encode(texts)


class TableText:
    """texts → their stored embedding, from a pinned version of the `text_embeds` table; a text
    with no row under `identity` is an error naming it and the table version."""

    def __init__(self, store: Store, table: str, version: int, identity: str):
        self.store, self.table, self.version = store, table, version
        self.identity = identity
        self.origin = self.name = f"{table}@{version}"
        self.null = self([NULL_TEXT])

    def __call__(self, texts: Sequence[str]) -> TextEmbedding:
        keys = [text_key(self.identity, t) for t in texts]
        rows = {r["id"]: r for r in
                self.store.lookup(self.table, "id", keys, self.version).to_pylist()}
        missing = [t for t, k in zip(texts, keys) if k not in rows]
        if missing:
            raise ValueError(
                f"{self.name} has no embedding of {len(missing)} texts under the text encoder "
                f"{self.identity}, e.g. {missing[0]!r}: the captions or params/dit.yaml:text "
                "changed since the text_embed stage ran; run `dvc repro text_embed`")
        seq, mask, pooled = zip(*(read_embedding(rows[k], self.name) for k in keys))
        return TextEmbedding(torch.stack(seq), torch.stack(mask), torch.stack(pooled))


def build_text_source(params, stage: str, store: Store, version: int | None,
                      device: str | torch.device = "cpu") -> OnlineText | TableText:
    """The text source `params` (osora.config.dit.DiTParams) choose for `stage`: the encoder on
    `device`, or the `text_embeds` table at `version` (the text_embed stage's receipt pins it)."""
    from osora.data.text_embeds import TABLE
    from osora.models.text import build_text_encoder, text_encoder_identity

    if params.train.stages[stage].text_source == "online":
        return OnlineText(build_text_encoder(params.text, device))
    if version is None:
        raise ValueError(f"stage {stage} reads its text embeddings from the {TABLE} table "
                         "(text_source: table): give the text_embed stage's receipt")
    return TableText(store, TABLE, version, text_encoder_identity(params.text))
