"""What a study folder holds, in one place:

    items.json          served: item id, prompt, left/right media names (no model names)
    key.json            never served: which model is left/right per item, seed, inputs' hashes
    media/<hex>.mp4     served: the videos under random names
    answers/<rater>.jsonl   the raters' answers, append-only
"""

from __future__ import annotations

import json
from pathlib import Path

ITEMS = "items.json"
KEY = "key.json"
MEDIA = "media"
ANSWERS = "answers"

ASPECTS = ("visual_quality", "prompt_adherence", "motion_quality")  # docs/recipe.md §7
CHOICES = ("left", "same", "right")


def read_study_json(study_dir: Path, name: str) -> dict:
    """items.json or key.json of a study, with an error saying how to make one."""
    path = Path(study_dir) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {study_dir} is not a study folder; build one with "
            f"`osora eval study --model NAME=DIR --model NAME=DIR --out {study_dir}`")
    return json.loads(path.read_text())
