"""OCR: how much of the picture is covered by text (docs/recipe.md §1), with RapidOCR.

RapidOCR runs the PP-OCR detection, orientation and recognition models that ship inside the
rapidocr-onnxruntime wheel (nothing is downloaded). Per frame, the text boxes recognised with
confidence > `min_confidence` are filled into a mask, so overlapping boxes count once, and the
covered fraction of the frame is that frame's text area. PP-OCR's boxes are padded around the
glyphs (its detector's "unclip"), so the area overestimates the ink: thresholds are relative
to this measure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from osora.config.data import OcrParams
from osora.data.operator import Row
from osora.data.scores.base import ClipScorer
from osora.data.scores.frames import sampled_frames


def text_coverage(
    ocr_result: list | None, size: tuple[int, int], min_confidence: float
) -> tuple[float, int]:
    """(covered fraction of the frame, boxes counted) from one RapidOCR result.

    `ocr_result` is RapidOCR's list of [4 corner points, text, confidence] (None: no text);
    `size` the frame's (H, W).
    """
    import cv2

    mask = np.zeros(size, np.uint8)  # (H, W) 1 where a counted box lies
    boxes = [np.asarray(box, np.float64) for box, _text, confidence in ocr_result or []
             if float(confidence) > min_confidence]
    for box in boxes:  # one call per box: fillPoly given several polygons fills by parity,
        # leaving the overlap of two boxes empty
        cv2.fillPoly(mask, [np.rint(box).astype(np.int32)], 1)  # box (4, 2) x, y
    return float(mask.mean()), len(boxes)


class OcrScorer(ClipScorer):
    name = "ocr"
    output_table = "score_ocr"
    score_columns = ("text_area", "text_boxes")
    requires = ("rapidocr_onnxruntime",)
    params: OcrParams

    def load(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        # RapidOCR drops recognitions below its own text_score (0.5 by default) before we
        # see them; lower it when our threshold is lower, so min_confidence alone decides.
        self._engine = RapidOCR(
            text_score=min(0.5, self.params.min_confidence),
            det_limit_side_len=self.params.detect_side,
            intra_op_num_threads=self.params.threads or -1,  # -1: ONNX Runtime's default
        )

    def score(self, path: Path, clip: Row) -> dict[str, Any]:
        frames = sampled_frames(path, clip.get("num_frames"), self.params.num_frames)
        per_frame = [
            text_coverage(self._engine(np.ascontiguousarray(f[..., ::-1]))[0],  # RGB -> BGR
                          f.shape[:2], self.params.min_confidence)
            for f in frames
        ]
        # The clip's text area is its worst frame's: burned-in text, subtitles and logos make
        # every frame they appear on unusable, so text on part of the clip must not be
        # averaged away by the frames without it.
        area, boxes = max(per_frame, key=lambda c: c[0])
        return {"text_area": area, "text_boxes": boxes}
