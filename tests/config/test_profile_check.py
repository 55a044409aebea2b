"""The rules across params files (osora.config.check, `osora config check`): each rule breaks on
a params copy changed in one place and names its file, key and fix; the tiny profile passes
whole, the paper profile for structure; a training stage stops before training on a broken
rule."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from osora.cli import main as osora
from osora.config import load_settings
from osora.config.check import check_profile, require_valid

REPO = Path(__file__).resolve().parents[2]
PAPER_WEIGHTS = ("weights/t5-v1_1-xxl", "weights/clip-vit-large-patch14")


def project(tmp_path: Path, edit: Callable[[dict[str, dict]], None] | None = None) -> Path:
    """A project folder (params/ and dvc.yaml) in tmp_path whose params/<section>.yaml files
    are `edit`ed first: edit gets {section: content} and changes it in place."""
    shutil.copytree(REPO / "params", tmp_path / "params")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    if edit is not None:
        files = {p.stem: p for p in (tmp_path / "params").glob("*.yaml")}
        sections = {name: yaml.safe_load(p.read_text()) for name, p in files.items()}
        edit(sections)
        for name, content in sections.items():
            files[name].write_text(yaml.safe_dump(content, sort_keys=False))
    return tmp_path


def violations(root: Path, stage: str | None = None, profile: str = "tiny"):
    return check_profile(load_settings(profile, params_dir=root / "params"), stage, root)


def described(root: Path, stage: str | None = None, profile: str = "tiny") -> list[str]:
    return [v.describe(profile, root / "params") for v in violations(root, stage, profile)]


def test_the_tiny_profile_passes_whole(tmp_path):
    assert described(project(tmp_path)) == []


def test_a_frame_count_without_a_batch_size_stops_the_stage_that_trains_on_it(tmp_path):
    def drop_16(s):
        del s["buckets"]["stages"]["stage1"][16]

    root = project(tmp_path, drop_16)
    (line,) = described(root)
    assert line.startswith(f"{root / 'params' / 'buckets.yaml'}: stages.stage1: no batch size "
                           "for frame counts [16] of latent set 'low' (params/ae.yaml "
                           "latents.sets.low.frames)")
    assert "fix: add `<frames>: {batch_size: N, keep: 1.0}`" in line
    (only,) = violations(root)
    assert only.stages == ("dit_stage1",)
    assert violations(root, "dit_stage2") == []  # stage 2's own buckets are whole


def test_the_paper_buckets_give_every_latent_frame_count_a_batch_size(tmp_path):
    """The 32 frame counts 5, 9, …, 129 of the paper's latent sets each have a batch size,
    the same within each range of Table 5 / 6 and never larger for more frames."""
    settings = load_settings("paper")
    for name, stage in settings.dit.train.stages.items():
        frames = settings.ae.latents.sets[stage.latents].frames
        assert frames == list(range(5, 130, 4))
        sizes = [settings.buckets.stages[name][f].batch_size for f in frames]
        assert sizes == sorted(sizes, reverse=True)
        assert len(set(sizes)) == 4  # one per range: 5–33, 37–65, 69–97, 101–129
    assert [settings.buckets.stages["stage1"][f].batch_size for f in (33, 65, 97, 129)] == \
        [12, 6, 4, 3]
    assert [settings.buckets.stages["stage3"][f].batch_size for f in (33, 65, 97, 129)] == \
        [6, 4, 3, 2]
    assert not [v for v in check_profile(settings, root=tmp_path) if "buckets" in v.section]


def _context_parallel(degree: int, ranks: int, attention: str = "ulysses"):
    def edit(s):
        s["dit"]["train"]["stages"]["stage1"]["context_parallel"] = degree
        s["dit"]["train"]["cp_attention"] = attention
        s["launch"]["nproc_per_node"] = ranks
    return edit


def test_a_context_parallel_degree_must_divide_the_launched_ranks(tmp_path):
    root = project(tmp_path, _context_parallel(2, 3, "ring"))
    (line,) = described(root, "dit_stage1")
    assert "dit.yaml: train.stages.stage1.context_parallel: degree 2 does not divide the 3 " \
           "ranks params/launch.yaml starts" in line


def test_ulysses_needs_heads_divisible_by_the_degree_ring_does_not(tmp_path):
    ulysses = described(project(tmp_path / "u", _context_parallel(3, 3)), "dit_stage1")
    assert [line for line in ulysses if "Ulysses" in line] == [
        f"{tmp_path / 'u' / 'params' / 'dit.yaml'}: train.stages.stage1.context_parallel: "
        "Ulysses attention splits the model's 4 heads (model.num_heads) over the 3 ranks of a "
        "group; fix: a degree dividing 4, or train.cp_attention: ring"]
    ring = described(project(tmp_path / "r", _context_parallel(3, 3, "ring")), "dit_stage1")
    assert not [line for line in ring if "Ulysses" in line]


def test_torch_context_parallelism_needs_cuda(tmp_path):
    lines = described(project(tmp_path, _context_parallel(2, 2, "torch")), "dit_stage1")
    assert [line for line in lines if "CUDA only" in line]


def test_torch_context_parallelism_needs_tokens_that_split_into_equal_shares(tmp_path):
    """The paper's stage 3 (CP 4) with torch's attention, which takes equal shares only.
    768px, 2.39:1 → 496×1184 px → 62×148 latents → 31×74 patches a latent frame; 9 frames →
    3 latent frames: 6882 video + 512 text = 7394 tokens, not a multiple of 4. Some of the
    other buckets have an odd count: no degree but 1 splits them all. Ulysses and ring take
    unequal shares: the paper profile's Ulysses passes (the test below)."""
    root = project(tmp_path, lambda s: s["dit"]["train"].update(cp_attention="torch"))
    (token_rule,) = [v for v in violations(root, "dit_stage3", "paper") if "tokens" in v.problem]
    assert "torch's context parallelism takes equal shares" in token_rule.problem
    assert "2.39:1 × 9 frames: 7394" in token_rule.problem
    assert "192 of the 480 buckets of latent set '768px'" in token_rule.problem
    assert token_rule.fix == ("train.cp_attention: ulysses or ring (they take unequal shares), "
                              "drop those aspect ratios or frame counts (params/ae.yaml "
                              "latents.sets.768px), or train without context parallelism "
                              "(degree 1)")


def test_the_text_widths_must_be_the_encoders(tmp_path):
    def wide(s):
        s["dit"]["model"]["text_dim"] = 128

    (line,) = described(project(tmp_path, wide), "dit_sample")
    assert "dit.yaml: model.text_dim: 128 and model.vec_dim 384 differ from the widths of the " \
           "minilm encoder (text.kind), 384 and 384 (its config.json)" in line


def test_t5_clip_widths_come_from_the_folders_config_when_on_disk(tmp_path):
    """A T5 of d_model 512 and a whole CLIP folder (text_config) of 256, against a model of
    the standard T5-XXL + CLIP-L widths."""
    def t5_clip(s):
        s["dit"]["text"].update(kind="t5_clip", t5="enc/t5", clip="enc/clip")
        s["dit"]["model"].update(text_dim=4096, vec_dim=768)

    root = project(tmp_path, t5_clip)
    assert not [v for v in violations(root) if v.key == "model.text_dim"]  # standard widths
    for folder, config in (("t5", {"d_model": 512}),
                           ("clip", {"text_config": {"hidden_size": 256}})):
        (root / "enc" / folder).mkdir(parents=True)
        (root / "enc" / folder / "config.json").write_text(json.dumps(config))
    (rule,) = [v for v in violations(root) if v.key == "model.text_dim"]
    assert "512 and 256 (the config.json of text.t5 and text.clip)" in rule.problem
    assert rule.fix.startswith("model.text_dim: 512 and model.vec_dim: 256")


def test_weight_files_are_required_where_they_are_read(tmp_path):
    missing = {v.key: v for v in check_profile(load_settings("paper"), root=tmp_path)
               if v.missing_weights}
    assert {"text.t5", "text.clip", "autoencoder.weights", "train.perceptual.trunk",
            "train.stages.stage1.init", "sample.first_frame.checkpoint"} <= set(missing)
    assert "train.stages.stage2.init" not in missing  # an earlier stage's output, not a file
    assert "dit_stage1" in missing["text.t5"].stages
    assert missing["train.perceptual.trunk"].stages == ("ae_train",)
    assert missing["text.t5"].fix.startswith("put the weights there (nothing is downloaded)")
    for path in PAPER_WEIGHTS:
        (tmp_path / path).mkdir(parents=True)
    left = [v.key for v in check_profile(load_settings("paper"), "dit_stage2", tmp_path)]
    assert "text.t5" not in left and "text.clip" not in left


def test_the_paper_profile_passes_for_structure_in_the_stages_before_768px(tmp_path):
    settings = load_settings("paper")
    for stage in ("ae_train", "latents", "dit_stage1", "dit_stage2", "dit_sample"):
        assert [v for v in check_profile(settings, stage, tmp_path)
                if not v.missing_weights] == [], stage


def test_the_paper_profile_passes_whole_for_structure(tmp_path):
    """Stage 3's buckets (768px, CP 4) whose tokens 4 does not divide included: Ulysses splits
    them into unequal shares (osora.train.cp_shares)."""
    assert [v for v in check_profile(load_settings("paper"), root=tmp_path)
            if not v.missing_weights] == []


def test_config_check_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project(tmp_path))
    assert osora(["config", "check"]) == 0
    assert "profile 'tiny': buckets, context parallelism, text widths and weight files check " \
           "out" in capsys.readouterr().out

    # the paper's weights are checkpoints users supply: listed, failing only without the flag
    assert osora(["config", "check", "--profile", "paper", "--stage", "dit_stage1"]) == 1
    out = capsys.readouterr().out
    assert "profile 'paper', stage dit_stage1: 3 weight file(s) missing; fix: put the " \
           "weights there (nothing is downloaded)" in out
    assert "params/profiles/paper/dit.yaml: text.t5: weights/t5-v1_1-xxl does not exist\n" in out
    assert "broken rule" not in out
    assert osora(["config", "check", "--profile", "paper", "--stage", "dit_stage1",
                  "--no-weights"]) == 0
    out = capsys.readouterr().out
    assert "3 weight file(s) missing (--no-weights: listed, not failed)" in out
    assert "check out (weight files not required)" in out

    assert osora(["config", "check", "--stage", "dit_stage9"]) == 2
    assert "--stage 'dit_stage9' is no stage of dvc.yaml (synth, ingest" in capsys.readouterr().err


def test_require_valid_exits_listing_the_rules_the_stage_breaks(tmp_path, monkeypatch):
    monkeypatch.chdir(project(tmp_path, _context_parallel(2, 3, "ring")))
    settings = load_settings()
    require_valid(settings, "dit_stage2")  # stage 2 is fine
    with pytest.raises(SystemExit, match=r"dit_stage1: the params break 1 rule\(s\) this stage "
                       r"needs \(`osora config check` lists them all\):\n  - .*dit.yaml: "
                       r"train.stages.stage1.context_parallel: degree 2 does not divide"):
        require_valid(settings, "dit_stage1")


def test_a_training_stage_stops_on_a_broken_rule_before_it_trains(tmp_path):
    """pipelines/dit_train.py in a project whose stage-1 buckets lack the latent set's 16:
    it exits at once naming the rule, before it reads the latents (which do not exist)."""
    def drop_16(s):
        del s["buckets"]["stages"]["stage1"][16]

    root = project(tmp_path, drop_16)
    done = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "dit_train.py"), "--stage", "stage1",
         "--latents", "lineage/latents.json", "--texts", "lineage/text_embeds.json",
         "--models", "models/dit", "--metrics", "m.json",
         "--curve", "c.csv"], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "dit_stage1: the params break 1 rule(s)" in done.stderr
    assert "buckets.yaml: stages.stage1: no batch size for frame counts [16]" in done.stderr
    assert not (root / "mlflow").exists()  # no run was opened


def test_a_one_process_stage_with_offload_is_a_config_error():
    settings = load_settings("tiny")
    assert settings.launch.nodes * settings.launch.nproc_per_node == 1

    def with_offload(s):
        stages = s.dit.train.stages
        stage = stages["stage1"].model_copy(update={"fsdp_offload": True})
        train = s.dit.train.model_copy(update={"stages": {**stages, "stage1": stage}})
        return s.model_copy(update={"dit": s.dit.model_copy(update={"train": train})})

    found = [v for v in check_profile(with_offload(settings), "dit_stage1")
             if v.key == "train.stages.stage1.fsdp_offload"]
    assert len(found) == 1 and "one process" in found[0].problem
    assert found[0].stages == ("dit_stage1",)
    two = settings.model_copy(update={"launch": settings.launch.model_copy(
        update={"nproc_per_node": 2})})
    assert not [v for v in check_profile(with_offload(two), "dit_stage1")
                if v.key.endswith("fsdp_offload")]
