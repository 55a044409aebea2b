"""The analysis maps left/right back to models through the key and counts by hand-checked rules."""

import pytest

from osora.eval.study.analysis import analyze, analyze_study
from osora.eval.study.answers import AnswerStore
from osora.eval.study.build import build_study

# i1, i3 show A on the left; i2, i4 show B on the left
KEY = {
    "seed": 0,
    "models": [{"name": "A"}, {"name": "B"}],
    "items": {"i1": {"left": "A", "right": "B", "prompt": "p1"},
              "i2": {"left": "B", "right": "A", "prompt": "p2"},
              "i3": {"left": "A", "right": "B", "prompt": "p3"},
              "i4": {"left": "B", "right": "A", "prompt": "p4"}},
}


def _answer(visual: str, motion: str) -> dict:
    # prompt adherence always "same"; motion below is always "left", a side bias, not a model's
    return {"visual_quality": visual, "prompt_adherence": "same", "motion_quality": motion}


ANSWERS = {
    "r1": {"i1": _answer("left", "left"), "i2": _answer("left", "left"),
           "i3": _answer("same", "left"), "i4": _answer("right", "left")},
    "r2": {"i1": _answer("left", "left"), "i2": _answer("right", "left"),
           "i3": _answer("left", "left"), "i4": _answer("same", "left")},
    "r3": {"i1": _answer("right", "left"), "i2": _answer("right", "left")},
}


def test_win_tie_loss_rates_from_hand_counted_answers():
    result = analyze(KEY, ANSWERS, n_boot=200)
    (pair,) = result["pairs"]
    assert (pair["model"], pair["rival"], pair["n_items"]) == ("A", "B", 4)
    visual = pair["aspects"]["visual_quality"]
    # A's visual outcomes: r1 i1 win, i2 loss (left=B), i3 tie, i4 win (right=A);
    # r2 win, win, win, tie; r3 loss (right=B), win (right=A) → 6 wins, 2 ties, 2 losses of 10
    assert visual["counts"] == {"win": 6, "tie": 2, "loss": 2}
    assert visual["rates"] == pytest.approx({"win": 0.6, "tie": 0.2, "loss": 0.2})
    assert (visual["n_ratings"], visual["n_items_rated"]) == (10, 4)
    # "same" everywhere: 10 ties of 10
    assert pair["aspects"]["prompt_adherence"]["rates"] == pytest.approx(
        {"win": 0.0, "tie": 1.0, "loss": 0.0})
    # "left" everywhere: A wins on i1, i3 and loses on i2, i4: r1 2+2, r2 2+2, r3 1+1 → 5 / 5
    assert pair["aspects"]["motion_quality"]["counts"] == {"win": 5, "tie": 0, "loss": 5}
    for row in pair["aspects"].values():
        for outcome, (low, high) in row["ci"].items():
            assert low <= row["rates"][outcome] <= high


def test_kappa_per_aspect_over_items_with_two_or_more_raters():
    kappa = analyze(KEY, ANSWERS, n_boot=10)["kappa"]
    # visual (win, tie, loss) per item: i1 [2,0,1], i2 [2,0,1], i3 [1,1,0], i4 [1,1,0]:
    # P̄ = (1/3 + 1/3 + 0 + 0)/4 = 1/6; p = (0.6, 0.2, 0.2), P_e = 0.44 → κ = −41/84
    assert kappa["visual_quality"]["kappa"] == pytest.approx(-41 / 84)
    assert kappa["visual_quality"]["n_items"] == 4
    assert kappa["prompt_adherence"]["kappa"] is None  # all ties: P_e = 1, undefined


def test_reference_turns_the_pair_around():
    visual = analyze(KEY, ANSWERS, reference="B", n_boot=10)["pairs"][0]["aspects"][
        "visual_quality"]
    assert visual["counts"] == {"win": 2, "tie": 2, "loss": 6}
    with pytest.raises(ValueError, match="reference model 'C' is not in the study"):
        analyze(KEY, ANSWERS, reference="C")


def test_analysis_is_deterministic_for_a_seed():
    assert analyze(KEY, ANSWERS, n_boot=300, seed=3) == analyze(KEY, ANSWERS, n_boot=300, seed=3)


def test_analyze_study_writes_json_markdown_and_figure(fake_models, tmp_path):
    study = build_study(fake_models, tmp_path / "study", seed=1)
    store = AnswerStore(study)
    for item in ("item-0000", "item-0001", "item-0002"):
        store.record("r1", item, _answer("left", "same"))
    result = analyze_study(study, n_boot=50)
    assert result["n_answers"] == 3
    assert "| sekritalpha vs hiddenbeta | visual quality |" in (study / "analysis.md").read_text()
    assert (study / "analysis.json").is_file()
    assert (study / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flat_metrics_are_valid_mlflow_names_and_skip_undefined():
    from osora.eval.study.analysis import flat_metrics

    stats = {"rates": {"win": 0.5, "tie": None, "loss": 0.5},
             "ci": {"win": [0.2, 0.8], "tie": [None, None], "loss": [0.2, 0.8]}}
    result = {"n_answers": 4, "pairs": [{"model": "osora v2+", "rival": "sora(1)",
                                         "aspects": {"visual_quality": stats}}],
              "kappa": {"visual_quality": {"kappa": None}, "motion_quality": {"kappa": 0.25}}}
    assert flat_metrics(result) == {
        "study/answers": 4,
        "study/osora v2__vs_sora_1_/visual_quality/win": 0.5,
        "study/osora v2__vs_sora_1_/visual_quality/win_low": 0.2,
        "study/osora v2__vs_sora_1_/visual_quality/win_high": 0.8,
        "study/osora v2__vs_sora_1_/visual_quality/loss": 0.5,
        "study/osora v2__vs_sora_1_/visual_quality/loss_low": 0.2,
        "study/osora v2__vs_sora_1_/visual_quality/loss_high": 0.8,
        "study/kappa/motion_quality": 0.25,
    }
