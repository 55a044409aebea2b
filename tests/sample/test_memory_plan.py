"""`osora sample --plan` (osora.sample.memory_plan): parameter counts equal the real models',
the live-bytes trace equals hand-counted allocations, the MMDiT formula brackets a traced
forward, and the peaks are ordered none ≥ model ≥ sequential."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from osora.cli import main
from osora.config import load_settings
from osora.models.dcae import DCAE
from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.models.text import build_text_encoder
from osora.sample.memory_plan import (
    GUIDANCE_PASSES,
    mmdit_activation_bytes,
    sampling_plan,
    traced_peak_bytes,
)
from osora.sample.placement import OFFLOAD_MODES

REPO = Path(__file__).resolve().parents[2]
TINY = load_settings(params_dir=REPO / "params")
PAPER = load_settings("paper", params_dir=REPO / "params")
PAPER_11B_PARAMETERS = 11_891_387_456  # tests/models/test_mmdit.py pins the same count


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def paper_plan(size: int, frames: int):
    params = PAPER.dit.sample.model_copy(update={"height": size, "width": size,
                                                 "frames": frames})
    tile = PAPER.dit.sample.decode_tile
    return sampling_plan(PAPER, params, PAPER.dit.model, tile)


def test_trace_counts_what_is_alive():
    x = torch.empty(1000, device="meta")  # float32: 4000 bytes, an input (not counted)

    def work():
        a = x * 2  # 4000 live
        b = a + 1  # 8000 live: the peak
        del a  # 4000
        b.add_(1)  # in place: nothing new
        c = b.view(10, 100)  # a view: nothing new
        d = c.sum(0)  # 400 bytes: 4400 live
        return d

    assert traced_peak_bytes(work) == 8000
    assert traced_peak_bytes(lambda: torch.empty(10, 10, device="meta",
                                                 dtype=torch.bfloat16)) == 200


def test_tiny_plan_counts_the_real_models():
    plan = sampling_plan(TINY, TINY.dit.sample, TINY.dit.model, None)
    by_name = {c.name: c for c in plan.components}
    assert by_name["MMDiT"].parameters == count(MMDiT(TINY.dit.model))
    assert by_name["AE"].parameters == count(DCAE(TINY.ae.dcae))
    assert by_name["MiniLM"].parameters == count(build_text_encoder(TINY.dit.text).model)
    assert by_name["MMDiT"].weight_bytes == 4 * by_name["MMDiT"].parameters  # fp32


def test_paper_plan_is_the_11b_model_on_t5_clip_with_ordered_peaks():
    plan = paper_plan(768, 129)
    by_name = {c.name: c for c in plan.components}
    assert set(by_name) == {"T5", "CLIP", "MMDiT", "AE"}
    mmdit = by_name["MMDiT"]
    assert mmdit.parameters == PAPER_11B_PARAMETERS
    assert mmdit.weight_bytes == 2 * PAPER_11B_PARAMETERS  # bf16
    # T5 v1.1-XXL's encoder ~4.76B, CLIP-L's text tower ~123M
    assert by_name["T5"].parameters == pytest.approx(4.76e9, rel=0.01)
    assert by_name["CLIP"].parameters == pytest.approx(123e6, rel=0.01)
    peaks = [plan.peak_bytes(mode) for mode in OFFLOAD_MODES]
    assert peaks[0] > peaks[1] > peaks[2]
    # none holds every weight; sequential's MMDiT phase holds ~3 of its 57 blocks' worth
    assert peaks[0] > sum(c.weight_bytes for c in plan.components)
    assert mmdit.streamed_weight_bytes < mmdit.weight_bytes / 10
    smaller = paper_plan(256, 33)
    assert all(smaller.peak_bytes(m) < plan.peak_bytes(m) for m in OFFLOAD_MODES)


def test_decode_tiles_bound_the_ae_activations():
    untiled = sampling_plan(PAPER, PAPER.dit.sample.model_copy(
        update={"height": 768, "width": 768, "frames": 129}), PAPER.dit.model,
        None)
    tiled = paper_plan(768, 129)
    ae = {p: next(c for c in p.components if c.name == "AE") for p in (untiled, tiled)}
    assert ae[untiled].activation_bytes > 20 * ae[tiled].activation_bytes


def test_mmdit_formula_brackets_a_traced_forward():
    """The formula against the model's own ops traced on the meta device, for a shape where
    SDPA's math path (which the trace sees) adds little: few heads, short sequences."""
    config = MMDiTConfig(in_channels=16, patch_size=2, cond_channels=17, hidden_size=256,
                         num_heads=2, depth_double=1, depth_single=1, text_dim=64, vec_dim=64,
                         axes_dims=(32, 48, 48))
    with torch.device("meta"):
        model = MMDiT(config).eval()
    rows, latent, text = 6, (2, 8, 8), 16
    x = torch.empty(rows, 16, *latent, device="meta")
    args = (x, torch.empty(rows, device="meta"), torch.empty(rows, text, 64, device="meta"),
            torch.empty(rows, 64, device="meta"))
    traced = traced_peak_bytes(lambda: model(*args, cond=torch.empty(rows, 17, *latent,
                                                                     device="meta")))
    formula = mmdit_activation_bytes(config, latent, text, rows, torch.float32)
    assert 0.6 * formula < traced < 1.2 * formula, (traced, formula)


def test_cli_plan_prints_the_table_without_a_checkpoint(capsys):
    assert main(["sample", "--plan", "--profile", "paper", "--height", "768", "--width", "768",
                 "--frames", "129"]) == 0
    out = capsys.readouterr().out
    assert "768×768, 129 frames, bf16" in out and f"{GUIDANCE_PASSES} guidance passes" in out
    for name in ("T5", "CLIP", "MMDiT", "AE"):
        assert name in out
    assert "11.89 B" in out and "expected peak: none" in out
    assert main(["sample", "--prompt", "x"]) == 2  # sampling itself needs the checkpoint
    assert "--checkpoint" in capsys.readouterr().err
