"""Camera jitter: PySceneDetect's frame-to-frame content change, averaged over the clip
(docs/recipe.md §1).

PySceneDetect's ContentDetector scores each frame by the mean absolute change of hue,
saturation and value from the previous frame (`content_val`); it cuts shots where that
spikes. Inside one shot a shaking camera moves every pixel on every frame, so the mean
`content_val` is high, while a steady shot with a moving subject changes only where the
subject is. Frames are downscaled to `analysis_width` first: the measure is about whole-frame
change, which a small frame shows as well, and its value then does not depend on resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from osora.config.data import JitterParams
from osora.data.operator import Row
from osora.data.scores.base import ClipScorer
from osora.data.scores.frames import scaled_frames


class JitterScorer(ClipScorer):
    name = "jitter"
    output_table = "score_jitter"
    score_columns = ("jitter",)
    requires = ("scenedetect", "cv2")
    min_frames = 2  # change between frames: an image (one frame) is null, not 0
    params: JitterParams

    def score(self, path: Path, clip: Row) -> dict[str, Any]:
        from scenedetect import ContentDetector, FrameTimecode, StatsManager

        fps = float(clip.get("fps") or 0) or 24.0  # only labels the timecodes
        stats = StatsManager()
        detector = ContentDetector()
        detector.stats_manager = stats  # what SceneManager.add_detector does
        stats.register_metrics(detector.get_metrics())
        count = 0
        for i, frame in enumerate(scaled_frames(path, self.params.analysis_width, "bgr24")):
            detector.process_frame(FrameTimecode(i, fps=fps), frame)  # frame (h, w, 3) BGR
            count += 1
        if count < 2:
            raise ValueError(f"{count} frame(s) decoded; jitter compares consecutive frames")
        # Frame 0 has nothing to compare with; frames 1.. hold the change from the one before.
        key = ContentDetector.FRAME_SCORE_KEY  # "content_val"
        changes = [stats.get_metrics(FrameTimecode(i, fps=fps), [key])[0] for i in range(1, count)]
        return {"jitter": float(sum(changes) / len(changes))}
