"""The next batch is made while the current step runs; any other step is made on the spot."""

import threading

from osora.train.prefetch import Prefetcher


def test_the_next_batch_comes_from_the_background_and_others_on_the_spot():
    made = []

    def batch_for(step):
        made.append((step, threading.current_thread().name.startswith("osora-prefetch")))
        return step * 10

    fetch = Prefetcher(batch_for)
    assert [fetch(s) for s in (0, 1, 2)] == [0, 10, 20]
    assert fetch(7) == 70  # a jump (a resume, a recovery) is made on the spot
    assert fetch(8) == 80
    fetch.close()
    by_step = dict(made)
    assert by_step[0] is False and by_step[7] is False  # asked for without a prefetch
    assert by_step[1] and by_step[2] and by_step[8]  # made ahead, in the thread
