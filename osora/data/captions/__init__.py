"""Captions for clips (docs/recipe.md §1, paper §2.2): one interface, three backends.

- sidecar: the caption that came with the source video (tiny default; no model);
- openai: a VLM behind an OpenAI-compatible endpoint (vLLM, a hosted Qwen);
- local: a transformers VLM loaded from a local folder.

`CaptionOperator` maps a backend over clips into the `captions` table. Backends import their
heavy dependencies (requests, transformers, torch) only when built.
"""

from osora.data.captions.base import (
    Captioner,
    CaptionerConfigError,
    CaptionError,
    CaptionerUnavailable,
)
from osora.data.captions.operator import INPUT_COLUMNS, CaptionOperator, build_captioner
from osora.data.captions.prompt import PROMPT, PROMPT_VERSION, prompt_text

__all__ = [
    "INPUT_COLUMNS",
    "PROMPT",
    "PROMPT_VERSION",
    "CaptionError",
    "CaptionerUnavailable",
    "CaptionOperator",
    "Captioner",
    "CaptionerConfigError",
    "build_captioner",
    "prompt_text",
]
