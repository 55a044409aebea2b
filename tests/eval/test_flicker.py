"""Temporal flickering against VBench's definition computed independently (cv2.absdiff on float
frames, as vbench/temporal_flickering.py does), on frames decoded from a real ffmpeg encode."""

import cv2
import numpy as np
import pytest

from osora.eval.flicker import temporal_flickering
from osora.media.ffmpeg import encode_frames
from osora.media.frames import read_video


def vbench_reference(frames: np.ndarray) -> float:
    maes = [np.mean(cv2.absdiff(np.array(a, dtype=np.float32), np.array(b, dtype=np.float32)))
            for a, b in zip(frames[:-1], frames[1:])]
    return (255.0 - float(np.mean(maes))) / 255.0


def test_equals_vbench_on_a_decoded_video(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    frames = [np.clip(base.astype(int) + rng.integers(-20, 21, base.shape), 0, 255)
              .astype(np.uint8) for _ in range(12)]  # a static scene with flicker
    decoded = read_video(encode_frames(frames, tmp_path / "f.mp4", 24, crf=18))
    assert temporal_flickering(decoded) == pytest.approx(vbench_reference(decoded), abs=1e-6)


def test_a_frozen_video_scores_one_and_noise_scores_lower():
    still = np.full((5, 8, 8, 3), 100, np.uint8)
    assert temporal_flickering(still) == 1.0
    noise = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    assert temporal_flickering(noise) < 0.75  # E|a − b| = 85 for uniform bytes
    with pytest.raises(ValueError, match="T ≥ 2"):
        temporal_flickering(still[:1])
