"""Pyramid levels: nested sets of clips, from loose to strict (paper §2, Figure 2).

Each level is the previous level's clips that pass its own limits, so levels nest by
construction (a clip in a strict level is in every looser one), whatever the thresholds.

A limit on a score that was never evaluated (its scorer had no weights: every value null) is
off, and said so in the notes; a clip with no value from a scorer that did run (it was
quarantined there) fails that scorer's limits.

Images (clips of one frame: an image's only clip) are judged on their picture alone. Motion and
jitter, which an image has not (their scorers write null for it), and the duration limits
(`min_duration_s`, `max_duration_s`: an image's duration is null, it lasts no time) do not
apply to them; aesthetic, blur, text area, size and caption limits do, as for any clip. So a
null motion or jitter drops a video clip (its scorer failed on it) but never an image. An
image's training text is its caption alone (osora.prompts.conditioned_text: no fps or motion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from osora.config.data import PyramidLevel
from osora.prompts import conditioned_text
from osora.schemas import schema_of

# Score tables and the scalar column each contributes to the joined view.
SCALAR_SCORES = {
    "score_aesthetic": "aesthetic",
    "score_motion": "motion",
    "score_ocr": "text_area",
    "score_jitter": "jitter",
}
# Scores of change between frames: an image (a 1-frame clip) has none, so their limits skip it.
MOTION_COLUMNS = frozenset({"motion", "jitter"})
# Which score column each level limit reads.
LIMITS: dict[str, str] = {
    "min_aesthetic": "aesthetic",
    "min_motion": "motion",
    "max_motion": "motion",
    "min_laplacian_var": "laplacian_var",
    "max_text_area": "text_area",
    "max_jitter": "jitter",
}


@dataclass(frozen=True)
class Levels:
    tables: dict[str, pa.Table]  # level name → rows (schema "pyramid_<level>")
    notes: list[str]  # filters that were off, and why


def joined_view(clips: pa.Table, scores: dict[str, pa.Table], captions: pa.Table) -> pa.Table:
    """One row per clip: its columns, every score (null where missing) and its caption."""
    view = clips.select(
        ["id", "video_id", "uri", "width", "height", "fps", "num_frames", "duration_s"]
    )
    for table, column in SCALAR_SCORES.items():
        view = view.join(scores[table].select(["id", column]), "id", join_type="left outer")
    view = view.join(captions.select(["id", "caption"]), "id", join_type="left outer")
    # List columns cannot ride through a hash join: align the blur lists by id instead.
    blur = scores["score_blur"]
    position = pc.index_in(view.column("id"), value_set=blur.column("id"))
    laplacian = pc.take(blur.column("laplacian_var"), position)
    return view.append_column("laplacian_var", laplacian).sort_by("id")


def is_image(view: pa.Table) -> np.ndarray:
    """(N,) bool: which clips of `view` are images (one frame)."""
    frames = view.column("num_frames").to_numpy(zero_copy_only=False).astype(np.float64)
    return frames == 1


def evaluated(view: pa.Table) -> dict[str, bool]:
    """Whether each score column holds any value, i.e. its scorer ran. Motion and jitter are
    judged on the video clips only (images have none); with no video clip at all they count
    as evaluated, as there is nothing their limits could drop."""
    images = is_image(view)
    ran = {}
    for column in {*SCALAR_SCORES.values(), "laplacian_var"}:
        values = view.column(column)
        if column in MOTION_COLUMNS:
            values = values.filter(pa.array(~images))
            ran[column] = len(values) == 0 or values.null_count < len(values)
        else:
            ran[column] = values.null_count < len(values)
    return ran


def passes(view: pa.Table, level: PyramidLevel, ran: dict[str, bool]) -> np.ndarray:
    """(N,) bool: which clips of `view` meet `level`'s own limits (images: module doc)."""
    ok = np.ones(view.num_rows, dtype=bool)
    images = is_image(view)

    def values(column: str) -> np.ndarray:
        # Missing → NaN, and every comparison with NaN is False: the clip fails.
        return view.column(column).to_numpy(zero_copy_only=False).astype(np.float64)

    for limit, column in LIMITS.items():
        bound = getattr(level, limit)
        if bound is None or not ran[column]:
            continue
        exempt = images if column in MOTION_COLUMNS else False
        if column == "laplacian_var":
            ok &= _mostly_sharp(view.column(column), bound)
        elif limit.startswith("min_"):
            ok &= (values(column) >= bound) | exempt
        else:
            ok &= (values(column) <= bound) | exempt
    if level.min_duration_s is not None:
        ok &= (values("duration_s") >= level.min_duration_s) | images
    if level.max_duration_s is not None:
        ok &= (values("duration_s") <= level.max_duration_s) | images
    if level.min_side is not None:
        ok &= np.minimum(values("width"), values("height")) >= level.min_side
    if level.require_caption:
        ok &= view.column("caption").is_valid().to_numpy(zero_copy_only=False)
    return ok


def _mostly_sharp(laplacian: pa.ChunkedArray, threshold: float) -> np.ndarray:
    """(N,) bool: fewer than half of each clip's frames are blurry (variance < threshold);
    the majority vote of docs/recipe.md §1. A clip without measurements fails."""
    lists = laplacian.combine_chunks()
    counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    counts = np.nan_to_num(counts.astype(np.float64), nan=0.0)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)  # (total frames,)
    owner = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    blurry = np.bincount(owner, weights=flat < threshold, minlength=len(lists))
    return (counts > 0) & (blurry * 2 < counts)


def build_levels(
    clips: pa.Table,
    scores: dict[str, pa.Table],
    captions: pa.Table,
    levels: dict[str, PyramidLevel],
) -> Levels:
    """Every level's rows, loosest first (the order of `levels`)."""
    view = joined_view(clips, scores, captions)
    ran = evaluated(view)
    notes = [
        f"{column}: not evaluated (its scorer had no weights), its limits are off"
        for column, done in sorted(ran.items())
        if not done and any(getattr(lv, k) is not None for lv in levels.values()
                            for k, c in LIMITS.items() if c == column)
    ]
    member = np.ones(view.num_rows, dtype=bool)
    tables = {}
    for name, level in levels.items():
        member &= passes(view, level, ran)
        tables[name] = level_rows(view.filter(pa.array(member)), name)
    return Levels(tables, notes)


def level_rows(view: pa.Table, level: str) -> pa.Table:
    """Rows of table pyramid_<level>, with the training text (caption + fps + motion; an
    image's fps and motion are null, so its text is the caption alone)."""
    rows = view.to_pylist()
    for row in rows:
        caption = row["caption"]
        row["text"] = conditioned_text(caption, row["fps"], row["motion"]) if caption else None
        row.pop("laplacian_var")
    return pa.Table.from_pylist(rows, schema=schema_of(f"pyramid_{level}"))
