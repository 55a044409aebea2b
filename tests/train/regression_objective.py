"""A tiny objective for loop tests: least squares on fixed random data, batches a function of
the step, with faults to inject (a NaN loss, a loss spike, a skipped step)."""

import torch
from torch import nn

from osora.train.checkpoint import ModelOptimState
from osora.train.ema import EMA
from osora.train.loop import Update


class Regression:
    """y = W x + b on fixed random data; batches are a function of the step."""

    def __init__(self, seed: int = 0, lr: float = 0.2, ema: float | None = None,
                 poison_at: int | None = None, spike_at: int | None = None,
                 skip: tuple[int, ...] = ()):
        torch.manual_seed(seed)
        self.model = nn.Linear(4, 2)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, eps=1e-15, weight_decay=0)
        self.ema = EMA(self.model, ema) if ema is not None else None
        self.poison_at, self.spike_at, self.skip = poison_at, spike_at, skip
        self.seen: list[int] = []

    @staticmethod
    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(8, 4, generator=g)
        return x, x @ torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 1.0, -1.0]]).T + 0.25

    def updates(self, batch, step):
        self.seen.append(step)
        if step in self.skip:  # the reference of a recovered run: this step never applied
            return
        x, y = batch
        if step == self.spike_at:
            y = y * 1000.0

        def loss():
            err = ((self.model(x) - y) ** 2).mean()
            if step == self.poison_at:
                err = err * float("nan")
            return err, {"mse": err.detach()}

        yield Update("reg", self.opt, list(self.model.parameters()), loss, ema=self.ema)

    def state(self):
        state = {"model": ModelOptimState(self.model, {"reg": self.opt})}
        if self.ema is not None:
            state["ema"] = self.ema
        return state
