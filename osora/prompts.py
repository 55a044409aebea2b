"""The one text format that carries fps and motion score into the model (docs/recipe.md §1, §5.3).

Training captions and inference prompts both go through `conditioned_text`, so the model sees
the same format at both ends. (The reference code trains on "<caption> 24 FPS, 4 motion
score." but samples with "<prompt>. 24 FPS. 4 motion score." — osora keeps the training form.)

An image has no frame rate and no motion score, and its text states neither: it is the caption
as is. That is what the reference does (Open-Sora v2 `TextDataset.getitem`: a sample whose fps
is NaN, as an image's is, gets no "FPS" postfix, and a NaN motion score no "motion score"
postfix, so with neither the text is the caption unchanged). Stating an fps or a motion score
for a still would teach the model that those words go with a still picture.
"""

import re

MAX_FPS_IN_TEXT = 24  # the reference caps the stated frame rate at 24


def conditioned_text(caption: str, fps: float | None, motion_score: float | None) -> str:
    """"<caption> 24 FPS, 4 motion score." — fps capped at 24 and motion rounded, as in the
    reference; without a motion score only the fps is stated; without either (an image) the
    caption alone (module docstring)."""
    caption = caption.strip()
    if not caption:
        raise ValueError("an empty caption cannot be conditioned; caption the clip first")
    parts = []
    if fps is not None:
        parts.append(f"{round(min(fps, MAX_FPS_IN_TEXT))} FPS")
    if motion_score is not None:
        parts.append(f"{round(motion_score)} motion score")
    return f"{caption} {', '.join(parts)}." if parts else caption


_CONDITIONED = re.compile(
    r"^(?P<caption>.*\S) (?P<fps>\d+) FPS(?:, (?P<motion>-?\d+) motion score)?\.$", re.DOTALL)


def split_conditioned_text(text: str) -> tuple[str, int, int | None]:
    """The inverse of `conditioned_text` for a video's text: (caption, fps, motion score or
    None), so a training text can be rendered again as a prompt. ValueError naming the text
    when it is not one (an image's text, the caption alone, states no fps: it is not)."""
    m = _CONDITIONED.match(text.strip())
    if m is None:
        raise ValueError(f"not a conditioned text ('<caption> <fps> FPS[, <m> motion score].'): "
                         f"{text[:80]!r}")
    motion = m.group("motion")
    return m.group("caption"), int(m.group("fps")), None if motion is None else int(motion)
