"""Auto-recovery, each fault injected: a NaN loss and a loss spike are undone from the last
checkpoint and their batch skipped (ending exactly where a run that never took that step ends),
retries are bounded, slow steps ask for a restart, and the watchdog ends a hung process."""

import time

import pytest
import torch
from regression_objective import Regression

from osora.train import checkpoint
from osora.train.loop import LoopSettings, NonFiniteLoss, train
from osora.train.recovery import (
    HANG_EXIT_CODE,
    RecoverySettings,
    RestartRequired,
    Watchdog,
)


def run(objective, tmp_path, steps=10, **recovery):
    events = []
    train(objective, Regression.batch,
          LoopSettings(steps=steps, grad_clip=1.0, log_every=1, checkpoint_every=3,
                       recovery=RecoverySettings(**recovery)),
          checkpoint_dir=tmp_path, on_event=events.append)
    return events


def assert_same_model(a: Regression, b: Regression) -> None:
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("fault", ["nan", "spike"])
def test_a_bad_step_is_undone_and_skipped(tmp_path, fault):
    inject = {"poison_at": 7} if fault == "nan" else {"spike_at": 7}
    faulty = Regression(**inject)
    events = run(faulty, tmp_path / "faulty", max_recoveries=2, spike_sigma=6.0, spike_window=4)
    assert [(e["kind"], e["step"]) for e in events] == [(fault, 7), ("restored", 7)]
    assert "checkpoint of step 6" in events[1]["detail"]
    assert faulty.seen == [*range(8), 6, 8, 9]  # back to step 6, 7 skipped
    never = Regression(skip=(7,))
    assert run(never, tmp_path / "never") == []
    assert_same_model(faulty, never)
    # the skip travels in the checkpoint: a resumed run would not take step 7 either
    progress = checkpoint.ValueState({"skipped": ()})
    checkpoint.load(checkpoint.latest(tmp_path / "faulty"), {"_loop": progress})
    assert tuple(progress["skipped"]) == (7,)


def test_recoveries_are_bounded(tmp_path):
    class TwiceBad(Regression):
        def updates(self, batch, step):
            self.poison_at = step if step in (4, 8) else None
            yield from super().updates(batch, step)

    with pytest.raises(NonFiniteLoss, match="at step 8"):
        run(TwiceBad(), tmp_path, max_recoveries=1)


def test_before_the_first_periodic_checkpoint_the_first_step_is_the_way_back(tmp_path):
    faulty = Regression(poison_at=2)
    events = run(faulty, tmp_path / "faulty", steps=5, max_recoveries=1)
    assert "checkpoint of step 1" in events[1]["detail"]
    never = Regression(skip=(2,))
    run(never, tmp_path / "never", steps=5)
    assert_same_model(faulty, never)
    with pytest.raises(NonFiniteLoss, match="at step 0 \\(no checkpoint yet\\)"):
        run(Regression(poison_at=0), tmp_path / "first", steps=3, max_recoveries=1)


def test_slow_steps_ask_for_a_restart(tmp_path):
    class SlowLater(Regression):
        # 30 ms steps, then 400 ms ones: a busy machine's scheduling jitter (a few ms) is far
        # below 5× the median, so only the slow steps count
        def updates(self, batch, step):
            time.sleep(0.4 if step >= 6 else 0.03)
            yield from super().updates(batch, step)

    events = []
    with pytest.raises(RestartRequired, match="2 slow steps in a row up to step 7"):
        train(SlowLater(), Regression.batch,
              LoopSettings(steps=10, grad_clip=1.0, log_every=1, checkpoint_every=100,
                           recovery=RecoverySettings(slow_factor=5.0, slow_window=3,
                                                     slow_patience=2)),
              on_event=events.append)
    assert [(e["kind"], e["step"]) for e in events] == [("slow", 6), ("slow", 7)]


def test_the_watchdog_ends_a_process_that_stops_stepping():
    events, exits = [], []
    dog = Watchdog(0.3, events.append, exit_process=exits.append)
    dog.beat(4)
    deadline = time.monotonic() + 5
    while not exits and time.monotonic() < deadline:
        time.sleep(0.05)
    dog.close()
    assert exits == [HANG_EXIT_CODE]
    assert events[0]["kind"] == "hang" and events[0]["step"] == 4


def test_a_beating_watchdog_stays_quiet():
    exits = []
    dog = Watchdog(0.5, None, exit_process=exits.append)
    for step in range(8):
        dog.beat(step)
        time.sleep(0.1)
    dog.close()
    assert exits == []


def test_recovery_needs_checkpoints():
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train(Regression(), Regression.batch,
              LoopSettings(steps=2, grad_clip=1.0, log_every=1, checkpoint_every=1,
                           recovery=RecoverySettings(max_recoveries=1)))
