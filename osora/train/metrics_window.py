"""The training loop's logging window: each step's metrics are kept where they were made (the
losses and gradient norms as device tensors, times and work on the host) and read only at the
logging step: averaged over the window's steps, then over ranks with one all-reduce on the
compute device, then brought to the host with one copy. No step waits for its own loss.
"""

from __future__ import annotations

import time

import torch

from osora.train.parallel import max_over_ranks, mean_over_ranks
from osora.train.throughput import memory_metrics, peak_tflops, window_metrics

Metric = torch.Tensor | float
WORK = ("_data_s", "_tokens", "_flops")  # host values summed over the window, not averaged


def main_loss(metrics: dict) -> str | None:
    """The key of the run's loss: the first update's (the AE's, not its critic's)."""
    return next((k for k in metrics if k.endswith("/loss")), None)


class MetricsWindow:
    """The steps since the last logging step, on the compute `device`."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.entries: list[tuple[int, dict[str, Metric]]] = []
        self.iterations = 0  # steps taken or skipped, as the time per step counts them
        self.started = time.perf_counter()

    def add(self, step: int, metrics: dict[str, Metric]) -> None:
        """Step `step`'s metrics ({} for a skipped step, which counts in the time per step)."""
        self.iterations += 1
        if metrics:
            self.entries.append((step, {k: _kept(v, self.device) for k, v in metrics.items()}))

    def discard_from(self, step: int) -> None:
        """Forget the metrics of `step` and later: a restored checkpoint undid those steps."""
        self.entries = [(s, m) for s, m in self.entries if s < step]

    def means(self) -> dict[str, Metric]:
        """Each metric's mean over the steps that have it (WORK keys: their sum), summed in step
        order as Python sums floats, in the order the metrics first appear."""
        sums: dict[str, Metric] = {}
        counts: dict[str, int] = {}
        for _, metrics in self.entries:
            for key, value in metrics.items():
                sums[key] = sums[key] + value if key in sums else value
                counts[key] = counts.get(key, 0) + 1
        return {k: v if k in WORK else v / counts[k] for k, v in sums.items()}

    def reduced(self) -> tuple[dict[str, int], torch.Tensor]:
        """Every logged metric averaged over ranks on the device, unread: each key's position in
        a float64 tensor (K,), or (K + 1,) with a loss, whose largest window value over the
        ranks comes last. Adds the time, throughput and memory metrics under torchtitan's
        names."""
        seconds = time.perf_counter() - self.started
        means = self.means()
        work = {k: float(means.pop(k, 0.0)) for k in WORK}
        means["step_time_s"] = seconds / max(1, self.iterations)
        means.update(window_metrics(seconds=seconds, steps=self.iterations,
                                    data_seconds=work["_data_s"], tokens=int(work["_tokens"]),
                                    flops=work["_flops"], peak=peak_tflops(self.device)))
        means.update(memory_metrics(self.device))
        loss = main_loss(means)
        if loss:
            means["loss_metrics/global_avg_loss"] = means[loss]
            means["grad_norm"] = means[loss.replace("/loss", "/grad_norm")]
        order, values = _stacked(means, self.device)  # (K,)
        parts = [mean_over_ranks(values)]
        if loss:
            parts.append(max_over_ranks(values[order[loss]].reshape(1).clone()))  # (1,)
        return order, torch.cat(parts)

    def report(self) -> dict[str, float]:
        """The window's metrics averaged over ranks (`reduced`), read on the host, plus
        loss_metrics/global_max_loss when there is a loss."""
        order, values = self.reduced()
        numbers = values.tolist()  # the one host read of the window
        out = {key: numbers[at] for key, at in order.items()}
        if main_loss(out):
            out["loss_metrics/global_max_loss"] = numbers[-1]
        return out


def _kept(value: Metric, device: torch.device) -> Metric:
    """A tensor metric as a float64 scalar on the device (exactly the float a host read gives,
    so sums match Python's); a host number as it is."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float64).reshape(())
    return value


def _stacked(values: dict[str, Metric], device: torch.device
             ) -> tuple[dict[str, int], torch.Tensor]:
    """The values as one (K,) float64 tensor on the device, device values first (stacked where
    they lie), host values after (one copy); and each key's position in it, in `values`'
    order."""
    on_device = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    on_host = [k for k, v in values.items() if not isinstance(v, torch.Tensor)]
    parts = [torch.stack([values[k] for k in on_device])] if on_device else []
    parts.append(torch.tensor([float(values[k]) for k in on_host], dtype=torch.float64,
                              device=device))
    position = {k: i for i, k in enumerate(on_device + on_host)}
    return {k: position[k] for k in values}, torch.cat(parts)
