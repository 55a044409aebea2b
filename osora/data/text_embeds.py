"""Text embeddings computed once, for DiT training to read per step: the `text_embed` stage.

DiT training conditions on each caption's text-encoder outputs. A stage whose params say
`text_source: table` reads them from the table `text_embeds` (schema in osora.schemas) that
this module's `TextEmbedder` fills, instead of running the encoders itself (`online`, the
reference trainer's way, osora.train.text_source). A row is keyed by `text_key(encoder
identity, text)`: a caption shared by many clips is stored once, and a lookup under another
encoder (other weights, max_length, masking or dtype) finds nothing rather than a wrong
embedding. The empty text is always stored: text dropout substitutes its embedding.

The stage runs through the data runner like the latents stage (osora.data.runner: worker
processes, each with its own encoder, results committed in batches, a killed run resumes where
its work log stops). Tensors are stored as raw bytes of `storage_dtype`
(osora.data.tensor_bytes), every one of the L positions kept: the reference runs T5 unmasked,
so the DiT reads the padding's states too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from osora.data.operator import Operator, Row, code_fingerprint
from osora.data.tensor_bytes import check_storage_dtype, tensor_from_bytes, tensor_to_bytes

if TYPE_CHECKING:
    import torch

    from osora.config.dit import TextParams
    from osora.models.text import TextEncoder

TABLE = "text_embeds"
NULL_TEXT = ""  # the empty prompt: what text dropout puts in a caption's place


def text_key(identity: str, text: str) -> str:
    """The row id of `text` embedded by the encoder of `identity`."""
    return hashlib.sha256(f"{identity}\0{text}".encode()).hexdigest()[:32]


def text_inputs(texts: Iterable[str | None], identity: str) -> pa.Table:
    """The runner's input: one row {id, text} per distinct text (and the empty one), by id."""
    distinct = sorted({NULL_TEXT, *(t for t in texts if t is not None)})
    keys = [text_key(identity, t) for t in distinct]
    return pa.table({"id": keys, "text": distinct}).sort_by("id")


def embedding_row(key: str, text: str, identity: str, seq: torch.Tensor, mask: torch.Tensor,
                  pooled: torch.Tensor, storage_dtype: str) -> Row:
    """The `text_embeds` row of one text: seq (L, D_seq), mask (L,) bool, pooled (D_vec)."""
    return {"id": key, "text": text, "encoder": identity, "dtype": storage_dtype,
            "seq": tensor_to_bytes(seq, storage_dtype),
            "seq_shape": [int(s) for s in seq.shape],
            "mask": mask.cpu().tolist(),
            "pooled": tensor_to_bytes(pooled, storage_dtype)}


def read_embedding(row: Row, table: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(seq (L, D_seq), mask (L,) bool, pooled (D_vec)) of a `text_embeds` row, in its stored
    dtype; ValueError naming the row and `table` (e.g. "text_embeds@4") when it is corrupt."""
    import torch

    what = f"{table}: row {row.get('id')} (text {row.get('text')!r})"
    fix = "the row is corrupt: rerun the text_embed stage (dvc repro -f text_embed)"
    shape = tuple(row.get("seq_shape") or ())
    if len(shape) != 2 or len(row.get("mask") or ()) != shape[0]:
        raise ValueError(f"{what}: seq shape {shape} and {len(row.get('mask') or ())} mask "
                         f"values do not make an (L, D) sequence with its (L,) mask; {fix}")
    seq = tensor_from_bytes(row["seq"], row["dtype"], shape, what=what, fix=fix)
    pooled_dim = len(row["pooled"]) // max(seq.dtype.itemsize, 1)
    pooled = tensor_from_bytes(row["pooled"], row["dtype"], (pooled_dim,), what=what, fix=fix)
    return seq, torch.tensor(row["mask"], dtype=torch.bool), pooled


class TextEmbedder(Operator):
    """{id, text} → its `text_embeds` row, by the encoder params/dit.yaml:text chooses.

    `identity` is the encoder's (osora.models.text.text_encoder_identity, computed in the
    parent without loading it); each worker loads its own encoder and refuses to run when the
    loaded one's identity differs (a key would then name the wrong encoder)."""

    output_table = TABLE

    def __init__(self, params: TextParams, identity: str, storage_dtype: str, device: str):
        check_storage_dtype(storage_dtype)
        self.params = params
        self.identity = identity
        self.storage_dtype = storage_dtype
        self.device = device
        self._encoder: TextEncoder | None = None

    def describe(self) -> dict[str, Any]:
        """The encoder (its identity covers weights and settings), the storage dtype and the
        code that computes the embedding; not the device it runs on."""
        return {"encoder": self.identity, "storage_dtype": self.storage_dtype,
                "code": code_fingerprint("osora.models.text", "osora.data.tensor_bytes")}

    def __getstate__(self) -> dict[str, Any]:
        """Workers get the settings, never a loaded encoder (each loads its own in setup)."""
        return {**vars(self), "_encoder": None}

    def setup(self) -> None:
        if self._encoder is not None:
            return
        from osora.models.text import build_text_encoder

        encoder = build_text_encoder(self.params, self.device)
        if encoder.identity != self.identity:
            raise RuntimeError(f"text_embed: the loaded encoder is {encoder.identity}, the "
                               f"parent computed {self.identity}: fix "
                               "osora.models.text.text_encoder_identity")
        self._encoder = encoder

    def process(self, row: Row) -> list[Row]:
        self.setup()
        emb = self._encoder.encode([row["text"]])  # a batch of one
        return [embedding_row(row["id"], row["text"], self.identity, emb.seq[0], emb.mask[0],
                              emb.pooled[0], self.storage_dtype)]
