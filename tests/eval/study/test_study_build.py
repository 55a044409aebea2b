"""Building a study: one index-0 sample per prompt per model, the same prompts for all, blinded
served files, and answers never overwritten."""

import json
import shutil
from pathlib import Path

import pytest
from study_fakes import ANSWER, COLOURS, PROMPTS, write_model

from osora.eval.study.answers import AnswerStore
from osora.eval.study.build import build_study


def test_items_pair_every_model_pair_on_every_prompt_with_index_0_samples(fake_models, tmp_path):
    study = build_study(fake_models, tmp_path / "study", seed=5)
    items = json.loads((study / "items.json").read_text())["items"]
    key = json.loads((study / "key.json").read_text())
    assert sorted(i["prompt"] for i in items) == sorted(PROMPTS)  # one pair × 3 prompts
    assert {frozenset((e["left"], e["right"])) for e in key["items"].values()} == {
        frozenset(COLOURS)}
    for model in key["models"]:
        for prompt, entry in model["samples"].items():
            assert entry["sidecar"] == f"{prompt}-0.json"
            sidecar = json.loads((Path(model["folder"]) / entry["sidecar"]).read_text())
            assert (sidecar["prompt"], sidecar["index"]) == (prompt, 0)
    # the media are copies of the index-0 videos
    name = key["items"][items[0]["id"]]["left"]
    folder = fake_models[name]
    original = (folder / f"{items[0]['prompt']}-0.mp4").read_bytes()
    assert (study / "media" / items[0]["left"]).read_bytes() == original


def test_same_seed_same_study(fake_models, tmp_path):
    a = build_study(fake_models, tmp_path / "a", seed=5)
    b = build_study(fake_models, tmp_path / "b", seed=5)
    c = build_study(fake_models, tmp_path / "c", seed=6)
    assert (a / "items.json").read_text() == (b / "items.json").read_text()
    assert (a / "items.json").read_text() != (c / "items.json").read_text()


def test_nothing_served_names_a_model(fake_models, tmp_path):
    study = build_study(fake_models, tmp_path / "study", seed=5)
    served = (study / "items.json").read_text() + " ".join(
        p.name for p in (study / "media").iterdir())
    for name in COLOURS:
        assert name not in served
    for item in json.loads((study / "items.json").read_text())["items"]:
        for side in ("left", "right"):
            assert len(item[side]) == len("0123456789abcdef.mp4")
            int(item[side].removesuffix(".mp4"), 16)


def test_a_prompt_missing_from_a_model_is_an_error_naming_model_folder_prompt(tmp_path):
    full = write_model(tmp_path / "full", (200, 0, 0))
    short = write_model(tmp_path / "short", (0, 0, 200), prompts=PROMPTS[:2])
    with pytest.raises(ValueError) as err:
        build_study({"full": full, "short": short}, tmp_path / "study", seed=0)
    message = str(err.value)
    assert "'short'" in message and str(short) in message and repr(PROMPTS[2]) in message
    assert "osora sample" in message


def test_needs_two_models_and_existing_folders(fake_models, tmp_path):
    with pytest.raises(ValueError, match="at least two models"):
        build_study({"sekritalpha": fake_models["sekritalpha"]}, tmp_path / "s", seed=0)
    with pytest.raises(FileNotFoundError, match="'nope': sample folder"):
        build_study({**fake_models, "nope": tmp_path / "nope"}, tmp_path / "s", seed=0)


def test_refuses_to_overwrite_a_study_with_answers(fake_models, tmp_path):
    study = build_study(fake_models, tmp_path / "study", seed=5)
    build_study(fake_models, study, seed=6)  # no answers yet: rebuilt in place
    assert len(list((study / "media").iterdir())) == 2 * len(PROMPTS)  # stale media gone
    AnswerStore(study).record("r1", "item-0000", ANSWER)
    before = (study / "key.json").read_text()
    with pytest.raises(ValueError, match="is a study with answers"):
        build_study(fake_models, study, seed=7)
    assert (study / "key.json").read_text() == before


def test_refuses_a_non_empty_folder_that_is_not_a_study(fake_models, tmp_path):
    shutil.copytree(fake_models["sekritalpha"], tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="holds files of no study"):
        build_study(fake_models, tmp_path / "elsewhere", seed=0)


def test_cli_errors_name_the_input_and_exit_2(fake_models, tmp_path, capsys):
    from osora.cli import main

    assert main(["eval", "study", "--model", "no-equals-sign", "--model",
                 f"b={fake_models['hiddenbeta']}", "--out", str(tmp_path / "s")]) == 2
    assert "write it as NAME=DIR" in capsys.readouterr().err
    assert main(["eval", "analyze", str(tmp_path / "nothing")]) == 2
    assert "not a study folder" in capsys.readouterr().err
