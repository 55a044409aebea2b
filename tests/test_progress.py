"""The progress display: plain lines every interval in logs (clock injected, no sleeping), a
tqdm bar on a terminal, nothing when disabled. The training loop's use is in
tests/train/test_loop.py."""

import io

import pytest

from osora.progress import Progress, duration, progress_bar


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_come_every_interval_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    bar = progress_bar(1100, "ae_train", stream=out, clock=clock)  # a line every 30 s
    for k in range(1, 301):  # 2 steps a second
        clock.t = k / 2
        bar.update(loss=0.0712)
        if k == 59:
            assert out.getvalue() == ""  # 29.5 s: nothing yet
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # at 30, 60, 90, 120 and 150 s
    assert lines[0] == "ae_train: step 60/1100 (5%) loss 0.0712 · 2.0 step/s · ETA 8m40s"
    assert lines[-1] == "ae_train: step 300/1100 (27%) loss 0.0712 · 2.0 step/s · ETA 6m40s"
    bar.close()
    bar.close()  # once only
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    assert lines[-1] == "ae_train: step 300/1100 (27%) loss 0.0712 · 2.0 step/s · took 2m30s"


def test_slow_steps_show_seconds_per_step_and_the_latest_postfix():
    out, clock = io.StringIO(), Clock()
    with progress_bar(10, "dit_stage1", stream=out, clock=clock, interval_s=60) as bar:
        clock.t = 40.0
        bar.update(loss=0.5)
        clock.t = 80.0
        bar.update(loss=0.25)
    assert out.getvalue().splitlines() == [
        "dit_stage1: step 2/10 (20%) loss 0.25 · 40.0 s/step · ETA 5m20s",
        "dit_stage1: step 2/10 (20%) loss 0.25 · 40.0 s/step · took 1m20s",
    ]


def test_a_resumed_display_starts_at_its_step_and_rates_only_its_own_steps():
    out, clock = io.StringIO(), Clock()
    bar = progress_bar(1100, "ae_train", initial=500, stream=out, clock=clock)
    clock.t = 30.0
    bar.update(60)
    assert out.getvalue().splitlines() == [
        "ae_train: resuming at step 500/1100",
        "ae_train: step 560/1100 (50%) · 2.0 step/s · ETA 4m30s",
    ]


def test_rows_and_an_empty_run():
    out = io.StringIO()
    progress_bar(0, "shots", unit="row", stream=out, clock=Clock()).close()
    assert out.getvalue() == "shots: row 0/0 (100%) · took 0s\n"


def test_disabled_shows_nothing():
    out = io.StringIO()
    with progress_bar(10, "x", enabled=False, stream=out) as bar:
        bar.update(3, loss=1.0)
    assert type(bar) is Progress and out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    out = Terminal()
    with progress_bar(10, "ae_train", stream=out) as bar:
        for _ in range(10):
            bar.update(loss=0.5)
    text = out.getvalue()
    assert "\r" in text and "10/10" in text and "step/s" in text and "loss=0.5" in text


@pytest.mark.parametrize(("seconds", "text"), [(45, "45s"), (59.6, "1m00s"), (380, "6m20s"),
                                                (7500, "2h05m")])
def test_durations(seconds, text):
    assert duration(seconds) == text
