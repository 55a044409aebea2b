"""`osora cost`: Table 3 (docs/recipe.md §6: stage, data, CP, iterations, devices, GPU-days, USD)
from the DiT stages' MLflow runs, and a forecast of the same table before a recipe is launched.

Report: the newest finished run of each `dit_<stage>` stage gives its clips (`train_clips`),
steps, its stage's context-parallel degree (param `dit.train.stages.<stage>.context_parallel`),
devices (param `parallel.world_size`: one GPU per rank), GPU-hours and USD (`cost.*`, logged
by every stage run). A CPU run's devices are its processes ("2 CPU"); it has no GPU-days, its
USD is that of the CPU core-hours.

Forecast: from measured throughput per bucket — samples per second per GPU at the bucket's
batch size (docs/recipe.md §6, Table 5: 12.7 videos/s on 8 H200s at 5–33 frames = 1.59/GPU) — and
the share of the stage's samples in each bucket, with the batch sizes of params/buckets.yaml:
a step on bucket b takes batch_b / (throughput_b · CP) seconds (batch sizes are per CP group);
buckets come up in proportion to their global batches (`bucket_batches`: share_b / batch_b):

    seconds per step = Σ_b w_b · batch_b / (throughput_b · CP),  w_b = (share_b / batch_b) / Σ
    GPU-days = steps · seconds per step · GPUs / 86400,    USD = GPU-days · 24 · $/GPU-hour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

COLUMNS = ("stage", "data", "CP", "iters", "devices", "GPU-days", "USD")


@dataclass(frozen=True)
class StageCost:
    stage: str
    data: int | None  # clips trained on
    cp: int  # context-parallel degree
    iters: int
    devices: int  # GPUs; a CPU run's processes
    gpu_days: float
    usd: float
    on_cpu: bool = False  # a CPU run: `devices` are its processes


def logged_costs(client, experiment_name: str, stages: list[str]) -> list[StageCost]:
    """One row per stage with a finished `dit_<stage>` run (the newest), in `stages` order."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    rows = []
    for stage in stages:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`osora.stage` = 'dit_{stage}' and attributes.status = "
                          "'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            continue
        m, params = runs[0].data.metrics, runs[0].data.params
        # runs logged before parallel.world_size was: their GPUs, or one CPU process
        devices = params.get("parallel.world_size", m.get("cost.device_count") or 1)
        rows.append(StageCost(
            stage, int(m["train_clips"]) if "train_clips" in m else None,
            int(params.get(f"dit.train.stages.{stage}.context_parallel", 1)),
            int(m.get("steps", 0)), int(devices), m.get("cost.gpu_hours", 0.0) / 24,
            m.get("cost.usd", 0.0), on_cpu=params.get("cost.device_kind") == "cpu"))
    return rows


def forecast_stage(stage: str, steps: int, gpus: int, batch: Mapping[int, int],
                   throughput: Mapping[int, float], share: Mapping[int, float],
                   usd_per_gpu_hour: float, cp: int = 1, data: int | None = None) -> StageCost:
    """The stage's row from per-bucket throughput (samples/s per GPU) and sample shares."""
    buckets = [b for b, s in share.items() if s > 0]
    missing = [b for b in buckets if b not in throughput or b not in batch]
    if missing:
        raise ValueError(f"stage {stage}: buckets {missing} have a data share but no "
                         "throughput or batch size; measure them or set their share to 0")
    if not buckets:
        raise ValueError(f"stage {stage}: no bucket has a positive data share")
    steps_of = {b: share[b] / batch[b] for b in buckets}  # ∝ global batches of the bucket
    total = sum(steps_of.values())
    # with CP the `cp` GPUs of a group share each sample: batch_b per group per step
    seconds = sum(steps_of[b] / total * batch[b] / (throughput[b] * cp) for b in buckets)
    gpu_days = steps * seconds * gpus / 86400
    return StageCost(stage, data, cp, steps, gpus, gpu_days, gpu_days * 24 * usd_per_gpu_hour)


def format_table(rows: list[StageCost]) -> str:
    """Markdown in Table 3's layout, with a total row."""
    def fmt(r: StageCost) -> list[str]:
        devices = f"{r.devices} CPU" if r.on_cpu else str(r.devices)
        return [r.stage, "" if r.data is None else f"{r.data:,}", str(r.cp), f"{r.iters:,}",
                devices, f"{r.gpu_days:,.2f}", f"{r.usd:,.2f}"]

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r)) + " |" for r in rows]
    lines.append(f"| total | | | | | {sum(r.gpu_days for r in rows):,.2f} | "
                 f"{sum(r.usd for r in rows):,.2f} |")
    return "\n".join(lines)
