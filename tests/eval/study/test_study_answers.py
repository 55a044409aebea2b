"""The answer store: durable lines, torn-line tolerance, last answer wins, safe rater ids."""

import json

import pytest
from study_fakes import ANSWER

from osora.eval.study.answers import AnswerStore


def test_a_torn_last_line_is_ignored_and_cut_before_the_next_answer(tmp_path):
    store = AnswerStore(tmp_path)
    store.record("r1", "item-0000", ANSWER)
    path = tmp_path / "answers" / "r1.jsonl"
    with open(path, "ab") as f:  # a crash mid-write: half a line, no newline
        f.write(b'{"item": "item-0001", "motion_qua')
    assert list(store.answers("r1")) == ["item-0000"]

    store.record("r1", "item-0002", ANSWER)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["item"] for line in lines] == ["item-0000", "item-0002"]


def test_reanswering_an_item_replaces_the_earlier_answer(tmp_path):
    store = AnswerStore(tmp_path)
    store.record("r1", "item-0000", ANSWER)
    store.record("r1", "item-0000", {**ANSWER, "visual_quality": "right"})
    store.record("r2", "item-0000", ANSWER)
    assert store.answers("r1")["item-0000"]["visual_quality"] == "right"
    assert {r: list(a) for r, a in store.all_answers().items()} == {
        "r1": ["item-0000"], "r2": ["item-0000"]}


def test_a_corrupt_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    store = AnswerStore(tmp_path)
    store.record("r1", "item-0000", ANSWER)
    path = tmp_path / "answers" / "r1.jsonl"
    path.write_text("not json\n" + path.read_text())
    with pytest.raises(ValueError, match=r"r1.jsonl: line 1 is not JSON"):
        store.answers("r1")


@pytest.mark.parametrize("rater", ["", "../key", "a b", "-x", "r" * 65, None])
def test_rater_ids_are_checked(tmp_path, rater):
    with pytest.raises(ValueError, match="rater id .* is not valid"):
        AnswerStore(tmp_path).record(rater, "item-0000", ANSWER)


def test_every_aspect_needs_a_valid_choice(tmp_path):
    with pytest.raises(ValueError, match="motion_quality"):
        AnswerStore(tmp_path).record("r1", "item-0000", {**ANSWER, "motion_quality": "A"})
    assert not (tmp_path / "answers" / "r1.jsonl").exists()
