"""The sidecar "captioner": the caption that came with the source video.

Ingest fills `videos.caption` from a `<stem>.txt` beside the video (or a manifest column); the
operator passes it as the hint. This is the tiny default, because the synthetic set ships exact
captions and no VLM is needed. A sidecar describes the whole source video, so every clip cut
from one video gets the same text, which is exact for single-shot videos only.
"""

from __future__ import annotations

import numpy as np

from osora.data.captions.base import Captioner, CaptionError, clean_caption


class SidecarCaptioner(Captioner):
    name = "sidecar"
    num_frames = 0  # looks at no pixels
    prompt_version = None  # nobody was prompted

    def caption(self, frames: np.ndarray, hint: str | None) -> str:
        if hint is None or not hint.strip():
            raise CaptionError(
                "no sidecar caption for its source video; put a <video stem>.txt beside the "
                "video (or a caption column in the manifest) and ingest again, or configure the "
                "openai or local captioner (captions.backend in params/data.yaml)"
            )
        return clean_caption(hint, "the sidecar")
