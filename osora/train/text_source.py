"""Where a DiT batch's text embeddings come from, one batch at a time (never all captions'):
`OnlineText` encodes the batch's captions with the text encoder when the batch is made (in
the prefetch thread, on the encoder's device), as the reference trainer does."""

from __future__ import annotations

from collections.abc import Sequence

from osora.models.text import TextEmbedding, TextEncoder


class OnlineText:
    """texts → their embedding (seq (B, L, D_seq), mask (B, L), pooled (B, D_vec)); `null`
    is the empty prompt's (a batch of one), what text dropout substitutes."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        self.identity = encoder.identity
        self.null = encoder.encode([""])

    def __call__(self, texts: Sequence[str]) -> TextEmbedding:
        return self.encoder.encode(texts)
