"""Evaluation runs, their scores, and the training runs whose model they scored.

Stages tag the weights they write and read by content (`weights.output.sha256`,
`weights.input.<role>.sha256`, StageRun.log_weights): an evaluation's checkpoint hash names the
training run that wrote it, whose own input hash names the run it started from, and so on back
to a fresh start — the exact lineage (dit_sample → stage 3 → stage 2 → stage 1).

Runs without those tags (older runs, or weights from outside the pipeline) fall back to an
inference from what every stage run records — its params and the Lance table versions it read
(`lance.input.<table>.version`):

    a training run T is behind an evaluation run E when T finished before E started, T and E
    record at least one common param or input table besides the store every run records, and
    every param and input version both record is equal; of each training stage, the newest.

dit_sample records the dit.text and dit.train params and the latents versions the DiT stages
trained on, so it links to dit_stage1..3 of the same params and data; ae_eval links to ae_train
through the ae.dcae / ae.split params and the pyramid version; vbench records only dit.text of
the training params, so it links to the newest DiT stages of the same text encoder. Two runs of
one stage with equal recorded params (e.g. a dvc experiment that changed only dit.model, which
dit_sample does not record) are told apart by time alone: the newest that finished before the
evaluation started.
"""

from __future__ import annotations

from dataclasses import dataclass

from osora.eval.vbench_score import DIMENSIONS
from osora.report.runs import Run

# The scores plotted against cost: pipelines/dit_sample.py's, ae_eval's and VBench's summaries.
HEADLINE = ("colour_accuracy", "shape_accuracy", "direction_accuracy", "direction_cosine",
            "temporal_flickering", "motion_abs_error", "motion_rank_correlation", "psnr",
            "ssim", "lpips", "vbench/total", "vbench/quality", "vbench/semantic")
DETAIL = tuple(f"vbench/{name}" for name in DIMENSIONS)  # tabled, not plotted
# Recorded by every stage run: agreeing on them says nothing about which model was evaluated;
# the devices a run used (and how many ranks) do not change what it evaluated.
UNIVERSAL = frozenset({"store.uri"})
IGNORED = frozenset({"cost.device_kind", "parallel.world_size", "parallel.nodes"})


def scores(run: Run, names: tuple[str, ...] = HEADLINE + DETAIL) -> dict[str, float]:
    return {k: run.metrics[k] for k in names if k in run.metrics}


def is_evaluation(run: Run) -> bool:
    return not run.is_training and bool(scores(run))


@dataclass(frozen=True)
class Evaluation:
    run: Run
    trained_by: tuple[Run, ...]  # oldest first

    @property
    def scores(self) -> dict[str, float]:
        return scores(self.run)

    @property
    def headline(self) -> dict[str, float]:
        return scores(self.run, HEADLINE)

    @property
    def train_usd(self) -> float:
        return sum(r.metrics.get("cost.usd", 0.0) for r in self.trained_by)

    @property
    def train_gpu_hours(self) -> float:
        return sum(r.metrics.get("cost.gpu_hours", 0.0) for r in self.trained_by)


def recorded(run: Run) -> dict[str, str]:
    """What a run records about its inputs: its params and the table versions it read."""
    out = {k: v for k, v in run.params.items() if k not in IGNORED}
    out.update({k: v for k, v in run.tags.items()
                if k.startswith("lance.input.") and k.endswith(".version")})
    return out


def consistent(training: Run, evaluation: Run) -> bool:
    a, b = recorded(training), recorded(evaluation)
    shared = a.keys() & b.keys()
    return bool(shared - UNIVERSAL) and all(a[k] == b[k] for k in shared)


def _input_hashes(run: Run) -> set[str]:
    return {v for k, v in run.tags.items()
            if k.startswith("weights.input.") and k.endswith(".sha256")}


def by_weights(evaluation: Run, candidates: list[Run]) -> tuple[Run, ...]:
    """The training runs that wrote the evaluated weights and the weights they started from,
    transitively (module doc), oldest first; () when no hash leads to a run."""
    writer = {}  # output hash → the newest finished run that wrote it
    for run in candidates:
        digest = run.tags.get("weights.output.sha256")
        if digest and run.end_ms is not None and (
                digest not in writer or run.end_ms > writer[digest].end_ms):
            writer[digest] = run
    found: dict[str, Run] = {}
    wanted = _input_hashes(evaluation)
    while wanted:
        runs = [writer[d] for d in wanted if d in writer and writer[d].run_id not in found]
        found.update((r.run_id, r) for r in runs)
        wanted = set().union(*(_input_hashes(r) for r in runs)) if runs else set()
    return tuple(sorted(found.values(), key=lambda r: r.end_ms))


def trained_by(evaluation: Run, candidates: list[Run]) -> tuple[Run, ...]:
    """The training runs behind `evaluation` (module doc), oldest first: by weights hashes
    where they lead somewhere, else the newest consistent run of each training stage."""
    exact = by_weights(evaluation, candidates)
    if exact:
        return exact
    newest: dict[str, Run] = {}
    for run in candidates:
        if (run.end_ms is None or run.end_ms > evaluation.start_ms
                or not consistent(run, evaluation)):
            continue
        if run.stage not in newest or run.end_ms > newest[run.stage].end_ms:
            newest[run.stage] = run
    return tuple(sorted(newest.values(), key=lambda r: r.end_ms))
