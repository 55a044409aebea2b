"""The one caption + fps + motion-score format, and its inverse."""

import pytest

from osora.prompts import conditioned_text, split_conditioned_text


@pytest.mark.parametrize("caption,fps,motion", [
    ("A cat sits. The camera pans.", 30.0, 4.4),  # fps capped at 24, motion rounded
    ("A dog runs", 12.0, None),
    ("Numbers 1 2 3 FPS, in the caption.", 24.0, -2.0),
])
def test_split_inverts_conditioned_text(caption, fps, motion):
    text = conditioned_text(caption, fps, motion)
    assert split_conditioned_text(text) == (caption, round(min(fps, 24)),
                                            None if motion is None else round(motion))


def test_conditioned_text_is_the_training_form():
    assert conditioned_text(" A cat. ", 29.97, 3.6) == "A cat. 24 FPS, 4 motion score."


def test_an_image_text_is_its_caption_alone():
    # no fps and no motion score (Open-Sora v2's TextDataset adds neither for NaN values)
    assert conditioned_text(" A cat on a mat. ", None, None) == "A cat on a mat."


def test_split_names_a_text_that_is_not_conditioned():
    with pytest.raises(ValueError, match="not a conditioned text.*'A cat.'"):
        split_conditioned_text("A cat.")
