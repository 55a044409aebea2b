"""Where a DiT batch's text embeddings come from, one batch at a time (never all captions'), as
a stage's params choose (`train.stages.<stage>.text_source`):
- `OnlineText` encodes the batch's captions with the text encoder when the batch is made (in
  the prefetch thread, on the encoder's device), as the reference trainer does;
- `TableText` reads them from the `text_embeds` table the text_embed stage wrote
  (osora.data.text_embeds), by (encoder identity, text): no encoder is loaded at all.
Both give `null`, the empty prompt's embedding (a batch of one) that text dropout substitutes,
and `identity`, the encoder's, which the checkpoint and the exported weights record."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
    with no row under `identity` is an error naming it and the table version.

    At start-up only the key column is read, into a sorted array of each key's first 64 bits
    (8 bytes a row: 100k captions take 0.8 MB) that maps a key to its row position; a batch's
    embeddings are then one `take` by position, the latents' fast path, rather than a filtered
    scan. A taken row's full key is checked, so a 64-bit clash cannot serve a wrong row."""

    def __init__(self, store: Store, table: str, version: int, identity: str):
        self.store, self.table, self.version = store, table, version
        self.identity = identity
        self.origin = self.name = f"{table}@{version}"
        ids = store.read(table, version, columns=["id"]).column("id").combine_chunks()
        prefixes = _prefixes(ids)
        self._order = np.argsort(prefixes, kind="stable")  # sorted index → row position
        self._sorted = prefixes[self._order]
        self.null = self([NULL_TEXT])

    def positions(self, keys: Sequence[str]) -> list[int | None]:
        """Each key's row position in the pinned version, None where it has no row."""
        if not len(self._sorted):
            return [None] * len(keys)
        wanted = _prefixes(keys)
        at = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
        found = self._sorted[at] == wanted
        return [int(self._order[i]) if ok else None for i, ok in zip(at, found)]

    def __call__(self, texts: Sequence[str]) -> TextEmbedding:
        keys = [text_key(self.identity, t) for t in texts]
        positions = self.positions(keys)
        missing = [t for t, p in zip(texts, positions) if p is None]
        if missing:
            raise ValueError(
                f"{self.name} has no embedding of {len(missing)} texts under the text encoder "
                f"{self.identity}, e.g. {missing[0]!r}: the captions or params/dit.yaml:text "
                "changed since the text_embed stage ran; run `dvc repro text_embed`")
        rows = self.store.take(self.table, positions, self.version).to_pylist()
        for key, text, row in zip(keys, texts, rows):
            if row["id"] != key:  # two keys share their first 64 bits
                raise ValueError(f"{self.name}: the row found for {text!r} is {row['id']}, not "
                                 f"{key}: a 64-bit key clash; report it")
        seq, mask, pooled = zip(*(read_embedding(row, self.name) for row in rows))
        return TextEmbedding(torch.stack(seq), torch.stack(mask), torch.stack(pooled))


def _prefixes(keys: Sequence[str] | pa.StringArray) -> np.ndarray:
    """The first 64 bits of each hex key, (N,) uint64; computed on arrays (no Python object per
    key), so a table's start-up holds little beyond its key column."""
    heads = pc.utf8_slice_codeunits(pa.array(keys, pa.string()), 0, 16)  # (N,) 16 hex digits
    if len(heads) and pc.any(pc.not_equal(pc.utf8_length(heads), 16)).as_py():
        raise ValueError("a text_embeds key is shorter than 16 hex digits: the table is corrupt; "
                         "rerun the text_embed stage (dvc repro -f text_embed)")
    digits = heads.buffers()[2].to_pybytes()[:16 * len(heads)]  # the keys' heads, back to back
    return np.frombuffer(bytes.fromhex(digits.decode()), ">u8").astype(np.uint64)


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
