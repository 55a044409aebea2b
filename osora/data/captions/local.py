"""Captions from a VLM run in-process with transformers, loaded from a local folder.

The generic classes (AutoProcessor + AutoModelForImageTextToText) load LLaVA(-Video),
Qwen2.5-VL and other image-text-to-text models alike; the frames go in as a multi-image chat
turn followed by the six-aspect prompt, and decoding is greedy, so the same clip always gets
the same caption. Weights are never downloaded: `model_path` must be an existing folder (a
`save_pretrained` layout, or a hub snapshot fetched beforehand).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from osora.config.data import LocalCaptionParams
from osora.data.captions.base import Captioner, check_frames, clean_caption
from osora.data.captions.prompt import PROMPT_VERSION, prompt_text


def model_folder(model_path: str | None) -> Path:
    """The model folder, or ValueError saying how to get one: hub ids and URIs are refused
    because nothing is downloaded at run time."""
    if not model_path:
        raise ValueError(
            "captions.local.model_path is null: give the folder of a transformers VLM"
        )
    folder = Path(model_path).expanduser()
    if "://" in model_path or not folder.is_dir():
        raise ValueError(
            f"captions.local.model_path {model_path!r} is not an existing local folder; the "
            "local captioner never downloads weights: fetch the model beforehand (e.g. `hf "
            "download <repo> --local-dir <folder>`) and give that folder"
        )
    return folder.resolve()


class LocalCaptioner(Captioner):
    prompt_version = PROMPT_VERSION

    def __init__(self, params: LocalCaptionParams):
        self.params = params
        self.folder = model_folder(params.model_path)
        self.name = f"local:{self.folder.name}"
        self.num_frames = params.num_frames
        self._processor: Any = None
        self._model: Any = None

    @property
    def num_gpus(self) -> float:
        """One GPU per worker when the VLM runs on CUDA (CaptionOperator passes it on)."""
        return 1.0 if self.params.device.startswith("cuda") else 0.0

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self._processor = AutoProcessor.from_pretrained(self.folder, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(
            self.folder, local_files_only=True, dtype=getattr(torch, self.params.dtype)
        )
        self._model = model.to(self.params.device).eval()

    def caption(self, frames: np.ndarray, hint: str | None = None) -> str:
        """The model's caption of `frames`. The hint is not shown to the model: a source
        video's caption may describe other shots than this clip's."""
        import torch
        from PIL import Image

        check_frames(frames, self.num_frames)
        if self._model is None:
            self.setup()
        images = [Image.fromarray(frame) for frame in frames]
        inputs = self._processor(
            text=self.chat_text(len(images)), images=images, return_tensors="pt"
        ).to(self._model.device, dtype=self._model.dtype)  # dtype: floating tensors only
        with torch.inference_mode():
            tokens = self._model.generate(
                **inputs, max_new_tokens=self.params.max_new_tokens, do_sample=False
            )  # (1, prompt + new)
        new_tokens = tokens[:, inputs["input_ids"].shape[1]:]  # (1, new)
        text = self._processor.batch_decode(new_tokens, skip_special_tokens=True)[0]
        return clean_caption(text, self.name)

    def chat_text(self, num_images: int) -> str:
        """The model's input text: its chat template around one user turn of images then the
        prompt; without a template, the processor's image token per image then the prompt."""
        prompt = prompt_text(num_images)
        if getattr(self._processor, "chat_template", None):
            content = [*({"type": "image"} for _ in range(num_images)),
                       {"type": "text", "text": prompt}]
            return self._processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        image_token = getattr(self._processor, "image_token", None)
        if not image_token:
            raise ValueError(
                f"{self.folder}: the processor has neither a chat template nor an image token; "
                "save the model's processor with its chat_template"
            )
        return image_token * num_images + "\n" + prompt
