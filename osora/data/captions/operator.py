"""The captions stage: one `captions` row per clip, from the configured backend.

Input rows are `clips` rows joined with their source video's caption:

    id, uri, num_frames        from `clips` (uri: the clip file in the artifact store)
    video_id                   from `clips` (only to name the video in errors)
    source_caption             `videos.caption` of the clip's video: the sidecar <stem>.txt or
                               manifest caption; None when the video came without one

The operator samples `num_frames` evenly spaced frames of the clip (none for the sidecar
backend), asks the backend, and writes {id, caption, captioner, prompt_version}. An image's clip
has one frame, so a VLM gets that one frame (fewer than asked, as for any short clip), and the
sidecar backend passes on its `<stem>.txt` like a video's. A clip without
a caption (no sidecar text, endpoint kept failing, empty reply, unreadable file) is quarantined
with the reason; a misconfigured backend stops the run (CaptionerConfigError).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from osora.config.data import CaptionsParams
from osora.config.store import StoreSettings
from osora.data.captions.base import Captioner, CaptionError
from osora.data.operator import Operator, OperatorError, Row

INPUT_COLUMNS = ("id", "uri", "num_frames", "source_caption")


def build_captioner(params: CaptionsParams) -> Captioner:
    """The backend `params.backend` names, built from its own params section."""
    if params.backend == "sidecar":
        from osora.data.captions.sidecar import SidecarCaptioner

        return SidecarCaptioner()
    if params.backend == "openai":
        from osora.data.captions.openai import OpenAICaptioner

        return OpenAICaptioner(params.openai)
    if params.backend == "local":
        from osora.data.captions.local import LocalCaptioner

        return LocalCaptioner(params.local)
    raise ValueError(f"captions.backend {params.backend!r}: use sidecar, openai or local")


def check_captioner_has_text(params: CaptionsParams, inputs: pa.Table) -> None:
    """Stop before any work when the sidecar backend has nothing to give: clips whose source
    video came without a caption would all be quarantined, and the pyramid would be empty
    without saying why. Nothing is ever captioned with an invented text."""
    if params.backend != "sidecar":
        return
    missing = inputs.filter(pc.is_null(inputs.column("source_caption")))
    if missing.num_rows == 0:
        return
    videos = sorted(set(missing.column("video_id").to_pylist()))
    raise ValueError(
        f"captions: {missing.num_rows} of {inputs.num_rows} clips (from {len(videos)} videos, "
        f"e.g. {videos[0]}) have no caption, and captions.backend is 'sidecar', which only "
        "passes on the caption a video came with. Give captions one of three ways "
        "(params/data.yaml):\n"
        "  1. beside each video a <video stem>.txt, or a 'caption' column in an ingest "
        "manifest (ingest.sources), then rerun ingest;\n"
        "  2. captions.backend: openai with captions.openai.base_url pointing at an "
        "OpenAI-compatible VLM server (vLLM, Ollama, a hosted Qwen2.5-VL);\n"
        "  3. captions.backend: local with captions.local.model_path a local transformers VLM "
        "folder"
    )


class CaptionOperator(Operator):
    output_table = "captions"

    def __init__(self, params: CaptionsParams, store: StoreSettings):
        self.params = params
        self.captioner = build_captioner(params)  # cheap: models load in setup()
        self._store_settings = store
        self._store: Any = None

    @property
    def num_gpus(self) -> float:
        """The GPUs its backend's model needs on each worker: the local VLM's on CUDA; none for
        the sidecar and openai backends, whose work is elsewhere."""
        return float(getattr(self.captioner, "num_gpus", 0.0))

    def setup(self) -> None:
        self.captioner.setup()

    def describe(self) -> dict[str, Any]:
        """Only what changes a caption: backend, model, frames, token budget, prompt version
        (not timeouts or rate limits, so tuning those does not redo finished clips)."""
        out: dict[str, Any] = {
            "captioner": self.captioner.name,
            "prompt_version": self.captioner.prompt_version,
        }
        if self.params.backend == "openai":
            out.update(num_frames=self.params.openai.num_frames,
                       max_tokens=self.params.openai.max_tokens)
        elif self.params.backend == "local":
            out.update(model_path=str(self.params.local.model_path),
                       num_frames=self.params.local.num_frames,
                       max_new_tokens=self.params.local.max_new_tokens,
                       dtype=self.params.local.dtype)
        return out

    def process(self, row: Row) -> list[Row]:
        missing = [c for c in INPUT_COLUMNS if c not in row]
        if missing:
            raise ValueError(
                f"caption input row {row.get('id')!r} lacks columns {missing}: join each clips "
                "row with its video's caption as `source_caption` (osora.data.captions.operator)"
            )
        where = f"clip {row['id']} ({row['uri']})"
        frames = self._frames(row, where)
        try:
            caption = self.captioner.caption(frames, row["source_caption"])
        except CaptionError as err:
            raise OperatorError(f"{where}: {err.reason}") from err
        return [{
            "id": row["id"],
            "caption": caption,
            "captioner": self.captioner.name,
            "prompt_version": self.captioner.prompt_version,
        }]

    def _frames(self, row: Row, where: str) -> np.ndarray:
        """The backend's evenly spaced frames, (N, H, W, 3) uint8 (fewer than asked when the
        clip is shorter); an empty array when it needs none. A clip that cannot be decoded is
        quarantined."""
        import av

        from osora.media.frames import read_frames, spaced_indices
        from osora.store import Store

        count = self.captioner.num_frames
        if count == 0:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        if not row["num_frames"]:
            raise OperatorError(f"{where}: the clips row has no frame count; re-run clips")
        if self._store is None:
            self._store = Store.from_settings(self._store_settings)
        indices = spaced_indices(int(row["num_frames"]), count)
        try:
            with self._store.local_path(row["uri"]) as path:
                return read_frames(path, indices)  # (N, H, W, 3)
        except (OSError, ValueError, av.FFmpegError) as err:  # missing, broken or short file
            raise OperatorError(f"{where}: cannot read frames {indices}: {err}") from err
