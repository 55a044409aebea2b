"""Aesthetic score: CLIP ViT-L/14 + the LAION aesthetic MLP on the first, middle and last
frame, averaged (docs/recipe.md §1).

No weights ship with osora and none are downloaded: `clip_path` is a local transformers folder
(e.g. openai/clip-vit-large-patch14 saved with `save_pretrained`) and `head_path` a safetensors
file of the head. With neither configured the scorer is off: it writes null scores and
`available()` says so, and the pyramid treats the aesthetic filter as off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from osora.config.data import AestheticParams
from osora.data.operator import Row
from osora.data.scores.base import ClipScorer
from osora.data.scores.frames import sampled_frames

FRAMES = 3  # first, middle, last


class AestheticScorer(ClipScorer):
    name = "aesthetic"
    output_table = "score_aesthetic"
    score_columns = ("aesthetic",)
    requires = ("torch", "transformers", "safetensors")
    params: AestheticParams

    @property
    def num_gpus(self) -> float:
        """One GPU per worker when CLIP runs on CUDA (the Ray backend requests it); none when
        the scorer is off, as it then loads no model."""
        on_cuda = self.params.device.startswith("cuda")
        return 1.0 if on_cuda and self.available() is None else 0.0

    def available(self) -> str | None:
        if self.params.clip_path is None or self.params.head_path is None:
            return (
                "aesthetic: no weights configured (set data.scores.aesthetic.clip_path and "
                "head_path)"
            )
        return super().available()

    def load(self) -> None:
        """Load CLIP's image tower, its preprocessing and the head; check they fit together."""
        import torch
        from safetensors.torch import load_file
        from transformers import CLIPVisionModelWithProjection

        from osora.models.aesthetic import AestheticHead

        clip_path, head_path = Path(self.params.clip_path), Path(self.params.head_path)
        if not clip_path.is_dir():
            raise FileNotFoundError(
                f"data.scores.aesthetic.clip_path: no folder at {clip_path}; give a local "
                "transformers CLIP folder (save_pretrained layout), never a hub id"
            )
        if not head_path.is_file():
            raise FileNotFoundError(
                f"data.scores.aesthetic.head_path: no file at {head_path}; give the aesthetic "
                "head as a safetensors file"
            )
        device = torch.device(self.params.device)
        self._processor = clip_image_processor_class().from_pretrained(
            clip_path, local_files_only=True
        )
        # float32 whatever the files hold: half precision is slow or missing on CPU, and
        # the scores should not depend on how the weights were saved.
        self._clip = CLIPVisionModelWithProjection.from_pretrained(
            clip_path, local_files_only=True, use_safetensors=True
        ).to(device=device, dtype=torch.float32).eval()
        head = AestheticHead.from_state_dict(load_file(head_path))
        self._head = head.to(device=device, dtype=torch.float32).eval()
        width = self._clip.config.projection_dim
        if self._head.embed_dim != width:
            raise ValueError(
                f"aesthetic head {head_path} takes {self._head.embed_dim}-d embeddings but "
                f"the CLIP at {clip_path} gives {width}-d ones; use the head trained for it"
            )
        self._device = device

    def score(self, path: Path, clip: Row) -> dict[str, Any]:
        frames = sampled_frames(path, clip.get("num_frames"), FRAMES)  # (3, H, W, 3) uint8
        return {"aesthetic": float(self.frame_scores(frames).mean())}

    def frame_scores(self, frames: np.ndarray) -> np.ndarray:
        """Aesthetic score of each RGB frame (N, H, W, 3) uint8, as (N,) float64."""
        import torch

        pixels = self._processor(images=list(frames), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            embeds = self._clip(pixel_values=pixels.to(self._device)).image_embeds  # (N, D)
            # The head was trained on unit-length embeddings.
            embeds = embeds / embeds.norm(dim=-1, keepdim=True)  # (N, D)
            scores = self._head(embeds)  # (N,)
        return scores.double().cpu().numpy()


def clip_image_processor_class() -> type:
    """CLIP's preprocessing on PIL (bicubic resize, centre crop, normalise), as the head was
    trained with. transformers 5 names it CLIPImageProcessorPil (its CLIPImageProcessor wants
    torchvision, which osora does not install); in 4.x CLIPImageProcessor is the PIL one."""
    try:
        from transformers import CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor as CLIPImageProcessorPil
    return CLIPImageProcessorPil
