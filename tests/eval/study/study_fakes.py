"""Tiny fake models for the study tests: real H.264 samples written by the sampler's own writer
(real ffmpeg), each model one flat colour, so a frame tells which model made a video."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from osora.sample.outputs import write_sample

PROMPTS = ("a red square moves right", "a blue circle moves up", "a green star spins")
COLOURS = {"sekritalpha": (230, 40, 40), "hiddenbeta": (40, 40, 230)}  # RGB per model
ANSWER = {"visual_quality": "left", "prompt_adherence": "same", "motion_quality": "right"}


def write_model(folder: Path, colour: tuple[int, int, int], prompts=PROMPTS,
                frames: int = 4) -> Path:
    """Index-0 samples of `prompts` (32×32, a few frames), plus an index-1 sample of the first
    prompt that a study must never use."""
    video = np.broadcast_to(np.array(colour, np.uint8), (frames, 32, 32, 3))
    for prompt in prompts:
        write_sample(folder, prompt, 0, video, 8, {"seed": 0})
    write_sample(folder, prompts[0], 1, 255 - video, 8, {"seed": 1})
    return folder
