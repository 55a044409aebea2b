"""Auto-recovery, each fault injected: a NaN loss and a loss spike are undone from the last
checkpoint and their batch skipped (ending exactly where a run that never took that step ends),
also when the fault is read a step late and when only one of 2 gloo ranks sees it; retries are
bounded, slow steps ask for a restart, and the watchdog ends a hung process."""

import time

import pytest
import torch
import torch.multiprocessing as mp
from collective_devices import collectives_on
from free_port import free_port, join_gloo
from regression_objective import Regression

from osora.train import checkpoint
from osora.train.loop import LoopSettings, NonFiniteLoss, train
from osora.train.parallel import close_distributed
from osora.train.recovery import (
    HANG_EXIT_CODE,
    LossMonitor,
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


def test_the_loss_monitor_flags_on_the_device_and_keeps_only_accepted_losses():
    import statistics

    monitor = LossMonitor(RecoverySettings(spike_sigma=3.0, spike_window=3))

    def check(loss: float, record: bool = True) -> list[float]:
        """[non-finite, spike, loss, mean, std]"""
        return monitor.check(torch.tensor(loss, dtype=torch.float64),
                             torch.tensor(record)).tolist()

    assert [check(v)[:2] for v in (1.0, 9.0, 0.9)] == [[0, 0]] * 3  # no statistics before 3
    assert check(1.0, record=False)[:2] == [0, 0]  # accepted, not remembered (a fault before)
    nonfinite, spike, loss, mean, std = check(50.0)
    assert (nonfinite, spike, loss) == (0, 1, 50.0)
    assert mean == pytest.approx(statistics.fmean([1.0, 9.0, 0.9]))
    assert std == pytest.approx(statistics.pstdev([1.0, 9.0, 0.9]))
    assert check(float("inf"))[:2] == [1, 1] and check(float("nan"))[:2] == [1, 0]
    assert check(1.1)[:2] == [0, 0]
    assert monitor.recent.tolist() == [9.0, 0.9, 1.1]  # neither faults nor unrecorded ones


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


# Logs and checkpoints every 4 steps: a NaN at step 5 is read after step 6 was queued
LATE = LoopSettings(steps=8, grad_clip=1.0, log_every=4, checkpoint_every=4,
                    recovery=RecoverySettings(max_recoveries=1))


def run_late(objective, folder, **kw) -> list[tuple[int, float]]:
    """Train with LATE; the logged (step, loss) pairs."""
    logged = []
    train(objective, Regression.batch, LATE, checkpoint_dir=folder,
          log=lambda m, step: logged.append((step, m["reg/loss"])), **kw)
    return logged


def test_a_fault_read_a_step_late_is_undone_the_same(tmp_path):
    faulty = Regression(poison_at=5)
    logged = run_late(faulty, tmp_path / "faulty")
    assert faulty.seen == [*range(7), 4, 6, 7]  # step 6 ran on the NaN weights, then undone
    never = Regression(skip=(5,))
    # the log leaves out what was undone (the NaN, step 6's first run) and counts nothing twice
    assert logged == run_late(never, tmp_path / "never")
    assert_same_model(faulty, never)


def _one_rank_faulty(rank: int, world: int, port: int, folder) -> None:
    join_gloo(rank, world, port)
    try:
        faulty, events = Regression(poison_at=5 if rank == 1 else None), []
        with collectives_on(next(faulty.model.parameters()).device) as calls:
            logged = run_late(faulty, folder / "checkpoints", rank=rank, on_event=events.append)
        assert calls["all_reduce"] >= 8  # a check per update, the logs' reductions
        torch.save({"events": events, "logged": logged, "seen": faulty.seen,
                    "weights": faulty.model.state_dict()}, folder / f"rank{rank}.pt")
    finally:
        close_distributed()


def test_a_fault_on_one_rank_is_undone_on_every_rank(tmp_path):
    mp.spawn(_one_rank_faulty, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    never = Regression(skip=(5,))
    never_logged = run_late(never, tmp_path / "never")
    for rank, detail in ((0, "reg on another rank"), (1, "reg loss is nan")):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert [(e["kind"], e["step"]) for e in got["events"]] == [("nan", 5), ("restored", 5)]
        assert got["events"][0]["detail"] == detail
        assert got["seen"] == [*range(7), 4, 6, 7]
        for name, value in never.model.state_dict().items():
            assert torch.equal(got["weights"][name], value), name
    logs = {rank: torch.load(tmp_path / f"rank{rank}.pt")["logged"] for rank in (0, 1)}
    assert logs == {0: never_logged, 1: []}  # rank 0 logs the ranks' mean, rank 1 nothing


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
