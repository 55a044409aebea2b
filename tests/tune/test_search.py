"""The per-bucket search (osora.tune.search, osora.tune.run) against an exhaustive scan, with a
deterministic cost model standing in for the probes (memory and time linear in batch × tokens),
through real Optuna studies in sqlite: the same batch sizes, about 2·log2 probes each, OOM and
over-time trials marked infeasible by Optuna's constraint API, and a search SIGKILLed midway
resumes from its storage without probing a batch twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from osora.config import load_settings
from osora.tune.probe import ProbeResult
from osora.tune.run import tune_buckets
from osora.tune.search import (
    Limits,
    expected_probes,
    next_batch,
    open_study,
    search_bucket,
)
from osora.tune.shapes import bucket_shapes

REPO = Path(__file__).resolve().parents[2]


class CostModel:
    """memory = 100 + b·tokens/10 (fits ≤ budget), seconds = b·tokens·1e-4 (forward 40%)."""

    def __init__(self, budget: float):
        self.budget, self.calls = budget, []

    def __call__(self, tokens: int, batch: int) -> ProbeResult:
        self.calls.append((tokens, batch))
        if 100 + batch * tokens / 10 > self.budget:
            return ProbeResult(batch, False, reason="out of memory: model")
        step = batch * tokens * 1e-4
        return ProbeResult(batch, True, step, 0.4 * step, 0.6 * step, peak_mb=0.0)


def exhaustive(tokens: int, model: CostModel, limits: Limits, max_batch: int) -> int:
    return max((b for b in range(1, max_batch + 1) if limits.feasible(model(tokens, b))),
               default=0)


def test_next_batch_doubles_then_bisects():
    verdicts, seen = {}, []
    while (b := next_batch(verdicts, 64)) is not None:
        seen.append(b)
        verdicts[b] = b <= 11
    assert seen == [1, 2, 4, 8, 16, 12, 10, 11]
    assert next_batch({1: False}, 64) is None  # nothing fits
    assert next_batch({64: True, 32: True}, 64) is None  # the ceiling fits


@pytest.mark.parametrize("budget", [150, 900, 2600, 10**6])
def test_one_bucket_equals_the_exhaustive_scan_in_log2_probes(tmp_path, budget):
    model, limits, max_batch = CostModel(budget), Limits(), 64
    want = exhaustive(1000, model, limits, max_batch)
    study = open_study("b", f"sqlite:///{tmp_path / 's.db'}")
    found = search_bucket(study, lambda b: model(1000, b), limits, max_batch)
    assert (found.best.batch if found.best else 0) == want
    assert found.probes == expected_probes(want, max_batch) <= 2 * 6 + 1  # log2(64) = 6
    # every trial carries its constraints; the infeasible ones are > 0
    trials = study.get_trials()
    assert len(trials) == found.probes
    for trial in trials:
        constraints = [v for k, v in trial.system_attrs.items() if k.startswith("constraints:")]
        assert len(constraints) == 4  # memory, step, forward, backward
        assert (max(constraints) <= 0) == limits.feasible(found.results[trial.params[
            "batch_size"]])
    assert any(max(v for k, v in t.system_attrs.items() if k.startswith("constraints:")) > 0
               for t in trials) == (want < max_batch)  # an OOM probe is marked infeasible


def test_the_three_steps_equal_an_exhaustive_scan_of_every_bucket(tmp_path):
    """The tiny stage-1 buckets: the reference (most tokens) by memory alone, the others by
    memory and by step/forward/backward time against the reference batch."""
    settings = load_settings(params_dir=REPO / "params")
    settings = settings.model_copy(update={"tune": settings.tune.model_copy(
        update={"storage": f"sqlite:///{tmp_path / 't.db'}", "time_tolerance": 1.0})})
    model = CostModel(budget=2500)
    result = tune_buckets(settings, tmp_path, prober=lambda shape, b: model(shape.tokens, b),
                          say=lambda _: None)
    ref = result.reference
    ref_batch = exhaustive(ref.tokens, model, Limits(), settings.tune.max_batch)
    assert result.batches[ref.frames] == ref_batch
    limits = Limits(model(ref.tokens, ref_batch), 1.0)
    shapes = {s.frames: s for s in bucket_shapes(settings, settings.tune.stage)}
    for frames, batch in result.batches.items():
        rule = Limits() if frames == ref.frames else limits
        assert batch == exhaustive(shapes[frames].tokens, model, rule, settings.tune.max_batch)
    assert len(set(result.batches.values())) > 1  # the buckets differ
    # a second run resumes every study: no probe at all
    again = tune_buckets(settings, tmp_path, prober=lambda s, b: pytest.fail("probed again"),
                         say=lambda _: None)
    assert again.batches == result.batches and again.probes == 0


CHILD = textwrap.dedent("""
    import sys, time
    from osora.tune.probe import ProbeResult
    from osora.tune.search import Limits, open_study, search_bucket

    def probe(b):
        time.sleep(0.4)
        return ProbeResult(b, b <= 23, 1.0, 0.4, 0.6) if b <= 23 else ProbeResult(b, False)

    search_bucket(open_study("killed", sys.argv[1]), probe, Limits(), 64)
""")


def test_a_killed_search_resumes_without_probing_a_batch_twice(tmp_path):
    storage = f"sqlite:///{tmp_path / 'k.db'}"
    child = subprocess.Popen([sys.executable, "-c", CHILD, storage], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        done = []
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                trials = optuna.load_study(study_name="killed", storage=storage).get_trials()
            except KeyError:  # not created yet
                continue
            done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            if len(done) >= 3:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert len(done) >= 3, "the child never got going"
    done_batches = {t.params["batch_size"] for t in
                    optuna.load_study(study_name="killed", storage=storage).get_trials()
                    if t.state == optuna.trial.TrialState.COMPLETE}
    probed = []

    def probe(b):
        probed.append(b)
        return ProbeResult(b, b <= 23, 1.0, 0.4, 0.6) if b <= 23 else ProbeResult(b, False)

    found = search_bucket(open_study("killed", storage), probe, Limits(), 64)
    assert found.best.batch == 23
    assert not set(probed) & done_batches  # nothing completed is probed again
    assert len(done_batches) + len(probed) == expected_probes(23, 64)
    states = [t.state for t in optuna.load_study(study_name="killed",
                                                 storage=storage).get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states  # the killed trial was closed


def test_a_bucket_whose_batch_1_is_too_slow_trains_at_1_and_one_that_cannot_fit_stops(
        tmp_path):
    settings = load_settings(params_dir=REPO / "params")
    settings = settings.model_copy(update={"tune": settings.tune.model_copy(
        update={"storage": f"sqlite:///{tmp_path / 't.db'}", "time_tolerance": 1.0})})
    shapes = bucket_shapes(settings, settings.tune.stage)
    slow = shapes[-1].frames  # the fewest tokens, made slow on purpose

    def prober(shape, b):
        seconds = 99.0 if shape.frames == slow else b * 1e-3
        return ProbeResult(b, b <= 4, seconds, 0.4 * seconds, 0.6 * seconds)

    said = []
    result = tune_buckets(settings, tmp_path, prober=prober, say=said.append)
    assert result.batches[slow] == 1 and any("slower than the reference" in s for s in said)

    def no_fit(shape, b):
        return ProbeResult(b, shape.frames != slow, 1e-3, 4e-4, 6e-4, reason="out of memory: x")

    settings = settings.model_copy(update={"tune": settings.tune.model_copy(
        update={"storage": f"sqlite:///{tmp_path / 'u.db'}"})})
    with pytest.raises(RuntimeError, match=f"not even batch 1 of the {slow}-frame bucket"):
        tune_buckets(settings, tmp_path, prober=no_fit, say=lambda _: None)
