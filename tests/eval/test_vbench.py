"""The VBench stage's parts: the prompt suite, the weights cache VBench reads, the external
tool driver (against a stand-in with VBench's command line and result files: real VBench
needs CUDA and its own environment) and the report. With OSORA_VBENCH_EXECUTABLE set to a real
VBench install, osora's temporal flickering is also checked against VBench's own."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from dvc_project import REPO, edit_yaml

from osora.config import load_settings
from osora.config.eval import VBenchParams
from osora.eval.flicker import temporal_flickering
from osora.eval.vbench import evaluate, flat_metrics, video_names
from osora.eval.vbench_score import DIMENSIONS, summarize
from osora.eval.vbench_suite import SuitePrompt, load_suite, restricted_suite, select_prompts
from osora.eval.vbench_tool import VBenchError, weights_cache
from osora.eval.vbench_weights import CACHE_PATHS, NEEDS
from osora.media.frames import read_video
from osora.sample.outputs import write_sample

STANDIN = Path(__file__).with_name("vbench_standin.py")
SUITE = [
    {"prompt_en": "In a still frame, a stop sign", "dimension": ["temporal_flickering"]},
    {"prompt_en": "a toilet, frozen in time", "dimension": ["temporal_flickering"]},
    {"prompt_en": "alley", "dimension": ["scene", "background_consistency"],
     "auxiliary_info": {"scene": {"scene": {"scene": "alley"}}}},
    {"prompt_en": "a red bicycle", "dimension": ["color"],
     "auxiliary_info": {"color": {"color": "red"}}},
    {"prompt_en": "alley", "dimension": ["temporal_flickering"]},  # a prompt listed twice
]


def _params(**changes) -> VBenchParams:
    base = load_settings().eval.vbench.model_dump()
    return VBenchParams.model_validate({**base, **changes})


def _standin(tmp_path: Path) -> str:
    exe = tmp_path / "venv" / "bin" / "vbench"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    exe.chmod(0o755)
    return str(exe)


def _weights(tmp_path: Path, names) -> dict[str, str | None]:
    weights = dict.fromkeys(CACHE_PATHS)
    for name in names:
        path = tmp_path / "downloads" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "dino_repo":
            path.mkdir()
        else:
            path.write_bytes(b"weights")
        weights[name] = str(path)
    return weights


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two VBench-named videos per prompt of SUITE: a square drifting over noise, 12 frames."""
    out = tmp_path_factory.mktemp("vbench_videos")
    rng = np.random.default_rng(0)
    for prompt in dict.fromkeys(e["prompt_en"] for e in SUITE):
        for index in range(2):
            frames = np.clip(rng.normal(120, 20, (12, 32, 48, 3)), 0, 255).astype(np.uint8)
            for t in range(12):
                frames[t, 10:20, 2 + 2 * t : 12 + 2 * t] = (220, 40, 40)
            write_sample(out, prompt, index, frames, 8, {"seed": index})
    return out


def _suite_prompts(dimensions):
    return select_prompts(SUITE, dimensions)


# ---------------------------------------------------------------------------------------------
# The suite.


def test_load_suite_names_the_file_and_entry(tmp_path):
    with pytest.raises(FileNotFoundError, match="vbench.prompts"):
        load_suite(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt_en": "a cat", "dimension": ["cuteness"]}]))
    with pytest.raises(ValueError, match=r"bad.json, entry 0 \('a cat'\): unknown dimensions"):
        load_suite(bad)
    bad.write_text(json.dumps([{"prompt": "a cat"}]))
    with pytest.raises(ValueError, match="entry 0: expected"):
        load_suite(bad)


def test_the_excerpt_in_the_repo_is_a_valid_suite():
    root = Path(__file__).resolve().parents[2]
    entries = load_suite(root / load_settings().eval.vbench.prompts)
    assert len(entries) == 10 and len({d for e in entries for d in e["dimension"]}) == 9


def test_select_prompts_caps_each_dimension_and_takes_each_prompt_once():
    chosen = select_prompts(SUITE, ["temporal_flickering", "scene"], max_per_dimension=2)
    assert chosen == [SuitePrompt("In a still frame, a stop sign", ("temporal_flickering",)),
                      SuitePrompt("a toilet, frozen in time", ("temporal_flickering",)),
                      SuitePrompt("alley", ("scene",))]
    everything = select_prompts(SUITE, list(DIMENSIONS))
    assert [p.text for p in everything] == ["In a still frame, a stop sign",
                                            "a toilet, frozen in time", "alley", "a red bicycle"]
    assert everything[2].dimensions == ("scene", "background_consistency", "temporal_flickering")


def test_restricted_suite_lists_only_what_was_sampled():
    chosen = select_prompts(SUITE, ["scene", "temporal_flickering"])
    suite = restricted_suite(SUITE, chosen)
    alley = next(e for e in suite if e["prompt_en"] == "alley")
    assert alley["dimension"] == ["scene", "temporal_flickering"]  # not background_consistency
    assert alley["auxiliary_info"] == {"scene": {"scene": {"scene": "alley"}}}
    assert [e["prompt_en"] for e in suite].count("alley") == 1
    assert "a red bicycle" not in [e["prompt_en"] for e in suite]


def test_video_names_are_vbench_names_or_an_error():
    assert video_names("a cat", 3) == ["a cat-0.mp4", "a cat-1.mp4", "a cat-2.mp4"]
    with pytest.raises(ValueError, match="too long for a file name"):
        video_names("a very long prompt " * 20, 1)


def test_params_refuse_unknown_dimensions_and_weights():
    with pytest.raises(ValueError, match="cuteness"):
        _params(dimensions=["cuteness"])
    with pytest.raises(ValueError, match="unknown \\['clip_vit_h14'\\]"):
        _params(weights={"clip_vit_h14": "/x"})


# ---------------------------------------------------------------------------------------------
# Evaluation.


def test_without_vbench_only_weightless_dimensions_are_scored(videos, tmp_path):
    params = _params(videos_per_prompt=2)
    prompts = _suite_prompts(params.dimensions)
    report = evaluate(params, SUITE, prompts, videos, tmp_path / "work")
    assert report["scores"].keys() == {"temporal_flickering"}
    assert report["source"] == {"temporal_flickering": "osora"}
    flicker_videos = [n for p in prompts if "temporal_flickering" in p.dimensions
                      for n in video_names(p.text, 2)]
    expected = np.mean([temporal_flickering(read_video(videos / n)) for n in flicker_videos])
    assert len(flicker_videos) == 6 and report["scores"]["temporal_flickering"] == expected
    reasons = report["not_evaluated"]
    assert set(reasons) == set(DIMENSIONS) - {"temporal_flickering"}
    assert "weights not given" in reasons["scene"] and "tag2text" in reasons["scene"]
    assert reasons["subject_consistency"] == "no prompt of the suite reads it"
    assert report["quality"] is None and report["total"] is None  # never filled in
    saved = json.loads((tmp_path / "work" / "report.json").read_text())
    assert saved["scores"] == report["scores"]
    metrics = flat_metrics(report, videos=8, prompts=4)
    assert metrics["evaluated"] == 1 and metrics["not_evaluated"] == 15 and "total" not in metrics


def test_vbench_runs_where_weights_are_given_and_agrees_on_flicker(videos, tmp_path):
    params = _params(videos_per_prompt=2, executable=_standin(tmp_path),
                     weights=_weights(tmp_path, ["clip_vit_b32"]))
    report = evaluate(params, SUITE, _suite_prompts(params.dimensions), videos,
                      tmp_path / "work")
    assert report["source"] == {"temporal_flickering": "vbench",
                                "background_consistency": "vbench"}
    assert "scene" in report["not_evaluated"] and "color" in report["not_evaluated"]
    # VBench's implementation (OpenCV decoding) and osora's (PyAV) on the same six videos.
    check = report["checks"]["temporal_flickering"]
    assert check["abs_diff"] < 1e-5, check  # 6e-9 seen: the decoders agree
    assert len(report["per_video"]["temporal_flickering"]) == 6
    # VBench read its weight through the cache osora linked.
    cache = tmp_path / "work" / "cache" / CACHE_PATHS["clip_vit_b32"]
    assert cache.is_symlink() and cache.resolve() == Path(params.weights["clip_vit_b32"])


def test_with_every_weight_all_sixteen_dimensions_give_the_totals(tmp_path):
    out = tmp_path / "videos"
    suite = [{"prompt_en": f"prompt {d}", "dimension": [d]} for d in DIMENSIONS]
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    for entry in suite:
        write_sample(out, entry["prompt_en"], 0, frames, 8, {})
    params = _params(videos_per_prompt=1, executable=_standin(tmp_path),
                     weights=_weights(tmp_path, CACHE_PATHS))
    report = evaluate(params, suite, select_prompts(suite, list(DIMENSIONS)), out,
                      tmp_path / "work")
    assert report["not_evaluated"] == {}
    assert report["scores"]["temporal_flickering"] == pytest.approx(1.0)  # frozen frames
    expected = summarize(report["scores"])
    assert (report["quality"], report["semantic"], report["total"]) == (
        expected.quality, expected.semantic, expected.total)
    assert report["total"] is not None


def test_a_vbench_run_without_a_result_fails_loudly_after_the_rest(videos, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("STANDIN_NO_RESULT", "1")
    params = _params(videos_per_prompt=2, executable=_standin(tmp_path),
                     dimensions=["temporal_flickering", "scene"])
    with pytest.raises(VBenchError, match=r"temporal_flickering: expected one .* see .*vbench.log"):
        evaluate(params, SUITE, _suite_prompts(params.dimensions), videos, tmp_path / "work")
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert report["not_evaluated"]["temporal_flickering"].startswith("VBench failed")
    assert "weights not given" in report["not_evaluated"]["scene"]


def test_missing_weights_and_unsafe_paths_are_named(videos, tmp_path):
    with pytest.raises(FileNotFoundError, match="vbench.weights.grit"):
        weights_cache({"grit": str(tmp_path / "nope.pth")}, tmp_path / "cache")
    spaced = tmp_path / "with space"
    params = _params(videos_per_prompt=2, executable=_standin(tmp_path),
                     dimensions=["temporal_flickering"])
    with pytest.raises(ValueError, match="unquoted"):
        evaluate(params, SUITE, _suite_prompts(params.dimensions), videos, spaced)


@pytest.mark.skipif(not os.environ.get("OSORA_VBENCH_EXECUTABLE"),
                    reason="real VBench (CUDA, its own environment) is not installed here; set "
                    "OSORA_VBENCH_EXECUTABLE to its vbench script to run this check")
def test_temporal_flickering_equals_real_vbench(videos, tmp_path):
    params = _params(videos_per_prompt=2, executable=os.environ["OSORA_VBENCH_EXECUTABLE"],
                     dimensions=["temporal_flickering"])
    report = evaluate(params, SUITE, _suite_prompts(params.dimensions), videos,
                      tmp_path / "work")
    assert report["checks"]["temporal_flickering"]["abs_diff"] < 2e-3


def test_every_dimension_has_its_weights_listed():
    assert list(NEEDS) == list(DIMENSIONS)
    assert {w for names in NEEDS.values() for w in names} == set(CACHE_PATHS)


def test_cli_scores_a_folder_of_vbench_videos(videos, tmp_path, monkeypatch, capsys):
    from osora.cli import main

    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(SUITE))
    project = _project_with_params(tmp_path / "project")
    eval_yaml = project / "params" / "eval.yaml"
    edit_yaml(eval_yaml, lambda p: p["vbench"].update(prompts=str(suite), videos_per_prompt=2))
    monkeypatch.chdir(project)
    assert main(["eval", "vbench", str(videos), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert f"temporal_flickering: {report['scores']['temporal_flickering']:.4f} (osora)" in out
    assert "total: not evaluated" in out
    edit_yaml(eval_yaml, lambda p: p["vbench"].update(videos_per_prompt=3))  # no index 2
    assert main(["eval", "vbench", str(videos), "--out", str(tmp_path / "again")]) == 2
    assert "4 of the suite's videos are missing" in capsys.readouterr().err


def _project_with_params(dest: Path) -> Path:
    """A folder the CLI takes for the project (params/ and dvc.yaml): params to edit for a test,
    as the environment may not change what the evaluation produces."""
    shutil.copytree(REPO / "params", dest / "params")
    shutil.copy(REPO / "dvc.yaml", dest / "dvc.yaml")
    return dest
