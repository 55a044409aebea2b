"""The LAION "improved aesthetic predictor" head: an MLP from a CLIP image embedding to a score.

The released head (`sac+logos+ava1-l14-linearMSE`, trained on CLIP ViT-L/14 embeddings,
d = 768) was fitted on L2-normalised embeddings and predicts a 1–10 rating; most video frames
score 4.5–5.5 (docs/recipe.md §1). The layer layout here matches its state dict exactly (`layers.0`,
`layers.2`, `layers.4`, `layers.6`, `layers.7`; the dropouts hold no weights), so the released
weights, converted to safetensors, load with `strict=True`.
"""

from __future__ import annotations

import torch
from torch import nn

# Linear layers of the released head, as their index in `layers`: the state dict's key prefixes.
_LINEAR_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")


class AestheticHead(nn.Module):
    """embedding (B, D), L2-normalised → aesthetic score (B,)."""

    def __init__(self, embed_dim: int = 768):
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"AestheticHead: embed_dim must be ≥ 1, got {embed_dim}")
        self.embed_dim = embed_dim
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        if embeds.ndim != 2 or embeds.shape[1] != self.embed_dim:
            raise ValueError(
                f"AestheticHead expects embeddings (B, {self.embed_dim}), got "
                f"{tuple(embeds.shape)}"
            )
        return self.layers(embeds).squeeze(-1)  # (B, 1) -> (B,)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> AestheticHead:
        """A head with the state dict's weights; the embedding width comes from `layers.0`.

        Raises ValueError naming the missing or unexpected keys when the dict is not an
        aesthetic head (e.g. a CLIP checkpoint given by mistake).
        """
        first = state_dict.get("layers.0.weight")
        if first is None or first.ndim != 2:
            expected = ", ".join(f"{k}.weight/.bias" for k in _LINEAR_KEYS)
            found = ", ".join(sorted(state_dict)[:6]) or "nothing"
            raise ValueError(
                f"not an aesthetic head state dict: expected {expected}; found {found}"
            )
        head = cls(embed_dim=first.shape[1])
        try:
            result = head.load_state_dict(state_dict, strict=False)
        except RuntimeError as err:  # a tensor of the wrong shape
            raise ValueError(f"aesthetic head state dict does not fit the MLP: {err}") from None
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"aesthetic head state dict does not match the MLP: missing "
                f"{result.missing_keys}, unexpected {result.unexpected_keys}"
            )
        return head
