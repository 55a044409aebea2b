"""The one training loop: updates in order, clipping, EMA, NaN guard, logging, and a resumed run
that equals the uninterrupted one."""

import io
import math
import re
from functools import partial

import pytest
import torch
from regression_objective import Regression
from torch import nn

from osora.progress import Progress, progress_bar
from osora.train.ema import EMA
from osora.train.loop import LoopSettings, NonFiniteLoss, train
from osora.train.recovery import RecoverySettings


def settings(steps: int, **kw) -> LoopSettings:
    return LoopSettings(steps=steps, grad_clip=kw.pop("grad_clip", 1.0), log_every=2,
                        checkpoint_every=kw.pop("checkpoint_every", 3), **kw)


def test_training_reduces_the_loss_and_logs_every_n_steps():
    run, logged = Regression(), []
    result = train(run, Regression.batch, settings(40),
                   log=lambda m, s: logged.append((s, m)))
    assert [s for s, _ in logged] == list(range(2, 41, 2))
    assert logged[-1][1]["reg/loss"] < 0.1 * logged[0][1]["reg/loss"]
    assert {"reg/loss", "reg/grad_norm", "mse", "step_time_s"} <= set(logged[0][1])
    assert result.steps_run == 40 and result.resumed_from is None


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path):
    straight = Regression(ema=0.9)
    train(straight, Regression.batch, settings(7))

    first = Regression(ema=0.9)
    train(first, Regression.batch, settings(3), checkpoint_dir=tmp_path)  # "crashes" after 3
    second = Regression(seed=1, ema=0.9)  # a fresh process: other init, state from disk
    result = train(second, Regression.batch, settings(7), checkpoint_dir=tmp_path)
    assert result.resumed_from == 3 and second.seen == [3, 4, 5, 6]
    for a, b in zip(straight.model.parameters(), second.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(straight.ema.shadow, second.ema.shadow):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000006", "step_00000007"]


def test_clipping_bounds_the_update_gradient():
    run = Regression(lr=0.0)  # no movement: the logged norm is the raw norm before clipping
    logged = []
    train(run, Regression.batch, settings(2, grad_clip=1e-3), log=lambda m, s: logged.append(m))
    raw = logged[0]["reg/grad_norm"]
    assert raw > 1e-3
    clipped = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in run.model.parameters()))
    assert clipped == pytest.approx(1e-3, rel=1e-4)


def test_a_nan_loss_stops_the_run_naming_the_step():
    with pytest.raises(NonFiniteLoss, match="reg loss is nan at step 5"):
        train(Regression(poison_at=5), Regression.batch, settings(10))


def test_ema_matches_a_float64_reference():
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    ema = EMA(model, 0.9)
    reference = [p.detach().double().clone() for p in model.parameters()]
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        reference = [0.9 * r + 0.1 * p.detach().double()
                     for r, p in zip(reference, model.parameters())]
    for s, r in zip(ema.shadow, reference):
        torch.testing.assert_close(s.double(), r, rtol=1e-6, atol=1e-6)
    raw = [p.detach().clone() for p in model.parameters()]
    with ema.swapped_in():
        for p, s in zip(model.parameters(), ema.shadow):
            assert torch.equal(p, s)
    for p, r in zip(model.parameters(), raw):
        assert torch.equal(p, r)


def test_warmup_then_cosine_reaches_zero_and_applies_to_every_update():
    from osora.train.loop import lr_factor

    s = settings(10, warmup_steps=4, schedule="cosine")
    factors = [lr_factor(step, s) for step in range(10)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[-1] == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 5 / 6)))
    run = Regression(lr=0.1)
    train(run, Regression.batch, settings(3, warmup_steps=4))
    assert run.opt.param_groups[0]["lr"] == pytest.approx(0.075)
    assert run.opt.param_groups[0]["initial_lr"] == 0.1


def test_piecewise_drops_as_open_sora_5e5_then_3e5():
    from osora.train.loop import lr_factor

    s = settings(10, warmup_steps=2, lr_drops=((6, 0.6), (3, 0.8)))
    assert [lr_factor(step, s) for step in range(8)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.8, 0.8, 0.8, 0.6, 0.6])


def test_gc_is_off_during_the_loop_and_back_on_after(tmp_path):
    import gc

    seen = []

    class Watching(Regression):
        def updates(self, batch, step):
            seen.append(gc.isenabled())
            yield from super().updates(batch, step)

    train(Watching(), Regression.batch,
          LoopSettings(steps=4, grad_clip=1.0, log_every=2, checkpoint_every=10, gc_every=2))
    assert seen == [False] * 4 and gc.isenabled()


class Recorder(Progress):
    """What the loop shows: the position after each update and the loss given with it."""

    opened: list["Recorder"] = []

    def __init__(self, total: int, initial: int):
        self.total, self.n = total, initial
        self.positions, self.losses, self.closed = [], [], False
        Recorder.opened.append(self)

    def update(self, n=1, **postfix):
        self.n += n
        self.positions.append(self.n)
        self.losses.append(postfix.get("loss"))

    def close(self):
        self.closed = True


@pytest.fixture
def recorder():
    Recorder.opened = []
    return Recorder


def test_every_step_advances_the_progress_and_logging_steps_show_the_loss_on_rank_0(recorder):
    logged = []
    train(Regression(), Regression.batch, settings(4), log=lambda m, s: logged.append(m),
          progress=recorder)
    (bar,) = recorder.opened
    assert bar.total == 4 and bar.positions == [1, 2, 3, 4] and bar.closed
    # a loss is read on the host at logging steps only: the logged one, the window's mean
    assert bar.losses == [None, logged[0]["reg/loss"], None, logged[1]["reg/loss"]]
    train(Regression(), Regression.batch, settings(4), rank=1, progress=recorder)
    assert len(recorder.opened) == 1  # other ranks show nothing


def test_a_recovered_step_moves_the_progress_back(tmp_path, recorder):
    train(Regression(poison_at=7), Regression.batch,
          settings(10, recovery=RecoverySettings(max_recoveries=1)), checkpoint_dir=tmp_path,
          progress=recorder)
    (bar,) = recorder.opened
    # step 7's NaN is read before the log after it: back to step 6, 7 skipped
    assert bar.positions == [*range(1, 8), 6, 7, 8, 9, 10]
    shown = [i for i, loss in enumerate(bar.losses) if loss is not None]
    assert shown == [1, 3, 5, 9, 11]  # the logging steps 2, 4, 6, 8, 10
    assert all(math.isfinite(bar.losses[i]) for i in shown)  # the NaN step's loss is gone


def test_a_resumed_run_shows_progress_from_its_resumed_step(tmp_path):
    train(Regression(), Regression.batch, settings(3), checkpoint_dir=tmp_path)
    out = io.StringIO()
    train(Regression(), Regression.batch, settings(7), checkpoint_dir=tmp_path,
          progress=partial(progress_bar, desc="reg_train", stream=out))
    first, last = out.getvalue().splitlines()  # well under 30 s: no line in between
    assert first == "reg_train: resuming at step 3/7"
    assert re.fullmatch(r"reg_train: step 7/7 \(100%\) loss [0-9.e-]+ · [0-9.]+ step/s · took 0s",
                        last), last
