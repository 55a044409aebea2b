"""Throughput and MFU under torchtitan's names: the MMDiT's FLOP count against a count over a
real model's weights, and the loop's logged numbers against each other."""

import dataclasses

import pytest
import torch

from osora.models.mmdit import MMDIT_11B, MMDIT_TINY, MMDiT, train_step_flops
from osora.train.flow_objective import FlowObjective, LatentBatch
from osora.train.loop import LoopSettings, train
from osora.train.throughput import window_metrics


def test_flops_count_the_block_weights_and_attention():
    model = MMDiT(MMDIT_TINY)
    block = sum(p.numel() for n, p in model.named_parameters() if "blocks." in n)
    b, video, text = 3, 40, 7
    seq = video + text
    expected = 6 * block * b * seq + 12 * 2 * b * seq * seq * MMDIT_TINY.hidden_size
    assert train_step_flops(MMDIT_TINY, b, video, text) == expected
    # the paper model: 6·N per token dominates at 256px (33 × 16 × 16 latent tokens, patch 2)
    big = train_step_flops(MMDIT_11B, 1, 33 * 8 * 8, 512)
    assert 6 * 11.0e9 * (33 * 64 + 512) < big < 6 * 12.5e9 * (33 * 64 + 512) * 1.5


def test_mfu_is_achieved_over_peak():
    m = window_metrics(seconds=2.0, steps=4, data_seconds=0.5, tokens=1000, flops=4e12,
                       peak=1.0)
    assert m["throughput(tps)"] == 500 and m["tflops"] == 2.0 and m["mfu(%)"] == 200.0
    assert m["time_metrics/end_to_end(s)"] == 0.5 and m["time_metrics/data_loading(%)"] == 25
    assert "mfu(%)" not in window_metrics(seconds=1, steps=1, data_seconds=0, tokens=1,
                                          flops=1, peak=None)


def test_the_loop_logs_torchtitans_names_consistently():
    torch.manual_seed(0)
    cfg = dataclasses.replace(MMDIT_TINY, cond_channels=0)
    model = MMDiT(cfg)
    objective = FlowObjective(model, torch.optim.AdamW(model.parameters(), lr=1e-3),
                              patch_size=1)

    def batch_for(step):
        g = torch.Generator().manual_seed(step)
        return LatentBatch(torch.randn(2, 16, 2, 4, 4, generator=g),
                           torch.randn(2, 5, cfg.text_dim, generator=g),
                           torch.randn(2, cfg.vec_dim, generator=g))

    logged = []
    train(objective, batch_for, LoopSettings(steps=4, grad_clip=1.0, log_every=2,
                                             checkpoint_every=10),
          log=lambda m, s: logged.append(m))
    m = logged[-1]
    tokens, flops = objective.work(batch_for(0))
    assert tokens == 2 * (2 * 4 * 4 + 5)
    assert m["throughput(tps)"] * m["time_metrics/end_to_end(s)"] * 2 == pytest.approx(2 * tokens)
    assert m["tflops"] * 1e12 / m["throughput(tps)"] == pytest.approx(flops / tokens)
    assert m["loss_metrics/global_avg_loss"] == m["dit/loss"]
    assert m["loss_metrics/global_max_loss"] == m["dit/loss"]  # one rank
    assert m["grad_norm"] == m["dit/grad_norm"]
    assert "mfu(%)" not in m and not any(k.startswith("memory/") for k in m)  # a CPU
