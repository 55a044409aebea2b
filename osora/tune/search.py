"""The search for one bucket's batch size: an Optuna study whose trials are probes.

Whether a batch is feasible is monotone in the batch size (memory and step time grow with
it), so the candidates are not sampled but enqueued in the order that exploits it: doubling
from 1 until a batch fails, then bisection between the largest feasible and the smallest
infeasible batch — about 2·log2(answer) probes instead of `max_batch`. Each trial records its
probe (with the world size, CP and sharding it ran with) in user attributes and its
constraint values (≤ 0: feasible) through Optuna's constraint API (`Trial.set_constraint`:
memory, step, forward, backward), so the dashboard and any constrained sampler see OOM and
over-time probes as infeasible.

A study is resumable: the candidate sequence is a function of the verdicts so far, so a rerun
replays the completed trials from the storage and probes only what is missing; a trial left
RUNNING by a killed search is marked failed and its batch probed again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from osora.tune.probe import ProbeResult

PARAM = "batch_size"
RESULT_ATTR = "probe"


@dataclass(frozen=True)
class Limits:
    """What a feasible probe may cost, against the reference batch (None: memory alone)."""

    reference: ProbeResult | None = None
    tolerance: float = 1.0

    def constraints(self, result: ProbeResult) -> dict[str, float]:
        """memory, step, forward, backward: each ≤ 0 when within bounds (a time over the
        reference's by x% is x/100)."""
        names = ("step_s", "forward_s", "backward_s")
        if not result.fits:
            return {"memory": 1.0, **{n: 1.0 for n in names}}
        ref = self.reference
        return {"memory": 0.0, **{n: 0.0 if ref is None else
                                  getattr(result, n) / (self.tolerance * getattr(ref, n)) - 1.0
                                  for n in names}}

    def feasible(self, result: ProbeResult) -> bool:
        return all(c <= 0 for c in self.constraints(result).values())


def next_batch(verdicts: dict[int, bool], max_batch: int) -> int | None:
    """The next batch to probe given the verdicts so far (doubling, then bisection); None when
    the largest feasible batch is known (or nothing fits)."""
    good = max((b for b, ok in verdicts.items() if ok), default=0)
    bad = min((b for b, ok in verdicts.items() if not ok), default=None)
    if bad is None:
        return None if good >= max_batch else min(max(1, 2 * good), max_batch)
    if bad <= good + 1:
        return None
    return (good + bad) // 2


def expected_probes(answer: int, max_batch: int) -> int:
    """How many probes the sequence takes to find `answer` (the tests' bound)."""
    verdicts: dict[int, bool] = {}
    while (b := next_batch(verdicts, max_batch)) is not None:
        verdicts[b] = b <= answer
    return len(verdicts)


def open_study(name: str, storage: str) -> optuna.Study:
    """The bucket's study, created or loaded (the objective, the batch size, is maximised)."""
    return optuna.create_study(study_name=name, storage=storage, direction="maximize",
                               load_if_exists=True)


@dataclass
class BucketSearch:
    best: ProbeResult | None  # the largest feasible batch's probe (None: not even 1 fits)
    probes: int  # probes run by this call (resumed ones not counted)
    results: dict[int, ProbeResult]  # every batch's probe, resumed ones included


def search_bucket(study: optuna.Study, probe: Callable[[int], ProbeResult], limits: Limits,
                  max_batch: int) -> BucketSearch:
    """The largest feasible batch ≤ max_batch for one bucket (module doc)."""
    results: dict[int, ProbeResult] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE and RESULT_ATTR in trial.user_attrs:
            results[trial.params[PARAM]] = ProbeResult.from_dict(trial.user_attrs[RESULT_ATTR])
        elif trial.state == TrialState.RUNNING:  # its process was killed: probe again
            study.tell(trial.number, state=TrialState.FAIL)
    probes = 0
    distribution = {PARAM: IntDistribution(1, max_batch)}
    while (batch := next_batch({b: limits.feasible(r) for b, r in results.items()},
                               max_batch)) is not None:
        study.enqueue_trial({PARAM: batch}, skip_if_exists=False)
        trial = study.ask(distribution)
        result = probe(batch)
        trial.set_user_attr(RESULT_ATTR, asdict(result))
        for name, value in limits.constraints(result).items():
            trial.set_constraint(name, value)
        study.tell(trial, float(batch))
        results[batch] = result
        probes += 1
    feasible = [b for b, r in results.items() if limits.feasible(r)]
    return BucketSearch(results[max(feasible)] if feasible else None, probes, results)

