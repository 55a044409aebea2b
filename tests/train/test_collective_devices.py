"""The training loop's collectives run where the caller's tensors lie, the compute device, and
never on one they pick (nccl takes no CPU tensors). Only CPUs run here, so the helpers are
given tensors on the meta device with a recording all_reduce standing in for a 2-rank group:
a helper that made or moved a tensor to the CPU (or a GPU) is caught. The guard the multi-rank
tests use (collective_devices) is shown to catch a tensor off the model's device."""

import pytest
import torch
import torch.distributed as dist
from collective_devices import collectives_on

from osora.train import parallel
from osora.train.loss_checks import agreed_check
from osora.train.metrics_window import MetricsWindow
from osora.train.parallel import max_over_ranks, mean_over_ranks
from osora.train.recovery import LossMonitor, RecoverySettings

META = torch.device("meta")


@pytest.fixture
def all_reduces(monkeypatch):
    """A stand-in 2-rank job whose all_reduce records (device, op) and reduces nothing."""
    seen = []
    monkeypatch.setattr(parallel, "_is_distributed", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=dist.ReduceOp.SUM, group=None,
                        async_op=False: seen.append((tensor.device, op)))
    return seen


def test_the_rank_reductions_run_on_the_tensors_device(all_reduces):
    values = torch.zeros(3, dtype=torch.float64, device=META)
    assert mean_over_ranks(values).device == META
    assert max_over_ranks(values).device == META
    assert all_reduces == [(META, dist.ReduceOp.SUM), (META, dist.ReduceOp.MAX)]


def test_a_loss_check_is_agreed_on_the_losss_device(all_reduces):
    monitor = LossMonitor(RecoverySettings(spike_sigma=3.0, spike_window=4))
    for _ in range(2):  # the second check reads the statistics the first one left
        row = agreed_check(monitor, torch.zeros((), device=META),
                           torch.ones((), dtype=torch.bool, device=META))
        assert row.shape == (7,) and row.device == META
    assert monitor.recent.device == META
    assert all_reduces == [(META, dist.ReduceOp.MAX)] * 2


def test_a_logging_window_is_reduced_on_the_compute_device(all_reduces):
    window = MetricsWindow(META)
    for step in range(2):
        window.add(step, {"_data_s": 0.01, "_tokens": 64, "_flops": 1e6,
                          "dit/loss": torch.ones((), device=META),
                          "dit/grad_norm": torch.ones((), device=META), "shift": 1.5})
    order, values = window.reduced()
    assert values.device == META and values.shape == (len(order) + 1,)  # + the max loss
    assert {"dit/loss", "shift", "step_time_s", "grad_norm"} <= set(order)
    assert all_reduces == [(META, dist.ReduceOp.SUM), (META, dist.ReduceOp.MAX)]


def test_the_guard_catches_a_tensor_off_the_models_device():
    original = dist.all_reduce
    with collectives_on(META) as calls, pytest.raises(
            AssertionError, match="all_reduce got a tensor on cpu; the model is on meta"):
        dist.all_reduce(torch.zeros(2))
    assert not calls and dist.all_reduce is original  # nothing ran, and the original is back
