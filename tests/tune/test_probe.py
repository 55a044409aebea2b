"""Real probes, each in its own process, on the tiny MMDiT under a CPU memory budget: a small
batch trains and is timed, a huge one fails with an out-of-memory error inside torch (the
budget is enforced, not estimated), and the search over real probes finds the batch an
exhaustive scan of every batch size finds, in the expected number of probes."""

import dataclasses

import pytest

from osora.config import load_settings
from osora.tune.probe import ProbeRequest, run_probe
from osora.tune.search import Limits, expected_probes, open_study, search_bucket
from osora.weights.mmdit import mmdit_config

MODEL = dataclasses.asdict(mmdit_config(load_settings().dit.model))
LATENT = (16, 4, 7, 10)  # the tiny 16-frame bucket: 280 video tokens
BUDGET_MB, MAX_BATCH = 120, 12


def probe(batch: int, memory_mb: int = BUDGET_MB):
    request = ProbeRequest(MODEL, LATENT, 32, batch, "cpu", "fp32", memory_mb, 1, (0, 0, False))
    return run_probe(request, timeout_s=120)


def test_a_small_batch_is_timed_and_a_huge_one_runs_out_of_memory():
    small = probe(1)
    assert small.fits and 0 < small.forward_s < small.step_s
    assert small.step_s >= small.forward_s + small.backward_s
    huge = probe(4096)
    assert not huge.fits and huge.reason.startswith("out of memory")
    assert "allocate" in huge.reason  # torch's own allocator failed: the budget was enforced


@pytest.mark.slow
def test_the_search_finds_what_an_exhaustive_scan_finds(tmp_path):
    fits = {b: probe(b).fits for b in range(1, MAX_BATCH + 1)}
    want = max(b for b, ok in fits.items() if ok)
    assert want < MAX_BATCH, "the budget should bind within the scan"
    assert all(fits[b] == (b <= want) for b in fits)  # memory is monotone in the batch
    found = search_bucket(open_study("real", f"sqlite:///{tmp_path / 'r.db'}"), probe,
                          Limits(), MAX_BATCH)
    assert found.best.batch == want
    assert found.probes == expected_probes(want, MAX_BATCH)
