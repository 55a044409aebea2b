"""What every captioning backend offers, and the checks they share.

A backend is built from params in the parent process (cheap and picklable), loads its heavy
state in `setup()` inside each worker, then captions one clip at a time from its sampled frames.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from osora.data.operator import EnvironmentFault, OperatorError


class CaptionError(OperatorError):
    """This clip got no usable caption (no sidecar text, the endpoint kept failing, an empty
    reply). The operator quarantines the clip with the reason; it never invents a caption."""


class CaptionerConfigError(EnvironmentFault):
    """The captioner itself is misconfigured (bad key, unknown model or URL): every clip would
    fail the same way, so the run stops instead of quarantining them all."""


class CaptionerUnavailable(EnvironmentFault):
    """The captioning endpoint did not answer (down, unreachable, overloaded) through every
    retry: the run stops and records nothing for the clip, so a rerun captions it."""


class Captioner(ABC):
    """One way of captioning a clip."""

    #: Recorded with every caption: backend and model, e.g. "openai:Qwen2.5-VL-7B-Instruct".
    name: str
    #: Frames the operator samples for `caption`; 0 when the backend needs none (sidecar).
    num_frames: int
    #: Version of the prompt the captions answer (osora.data.captions.prompt); None when no
    #: prompt was involved.
    prompt_version: str | None

    def setup(self) -> None:  # noqa: B027 (optional hook: most backends need no setup)
        """Load models or open connections; called once per worker before any caption."""

    @abstractmethod
    def caption(self, frames: np.ndarray, hint: str | None) -> str:
        """A caption for a clip from its frames, (N, H, W, 3) uint8 RGB in time order.

        `hint` is the caption that came with the source video (sidecar file or manifest), or
        None. Raise CaptionError when there is no usable caption.
        """


def check_frames(frames: np.ndarray, most: int) -> None:
    """Refuse frames that are not (N, H, W, 3) uint8 with 1 ≤ N ≤ `most` (a clip shorter than
    the frames asked for gives fewer): a wiring bug, not a bad clip."""
    if (
        not isinstance(frames, np.ndarray)
        or frames.dtype != np.uint8
        or frames.ndim != 4
        or not 1 <= frames.shape[0] <= most
        or frames.shape[-1] != 3
    ):
        got = (
            f"{frames.dtype} array of shape {frames.shape}"
            if isinstance(frames, np.ndarray)
            else type(frames).__name__
        )
        raise ValueError(f"expected 1 to {most} RGB frames, a (N, H, W, 3) uint8 array; got {got}")


def clean_caption(text: str, source: str) -> str:
    """The caption as one line of text (whitespace and line breaks collapsed), or CaptionError
    when nothing is left. `source` names where the text came from, for the error."""
    caption = " ".join(text.split())
    if not caption:
        raise CaptionError(f"{source} returned an empty caption")
    return caption
