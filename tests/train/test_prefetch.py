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


def test_staging_buffers_are_allocated_once_per_shape_and_reused():
    """Batches of two bucket shapes through PinnedBuffers (plain memory without CUDA): two
    buffers per (shape, dtype), whatever the number of steps, and every batch handed out
    equals the one made, even when kept while later ones are staged."""
    import torch

    from osora.train.prefetch import PinnedBuffers

    def batch_for(step):
        shape = (2, 3) if step % 3 else (4, 1)  # two buckets, interleaved
        g = torch.Generator().manual_seed(step)
        return {"latent": torch.randn(shape, generator=g), "step": torch.tensor([step])}

    buffers = PinnedBuffers(depth=2)
    fetch = Prefetcher(batch_for, buffers=buffers)
    got = [fetch(s) for s in range(12)] + [fetch(4), fetch(5)]  # and a jump back
    fetch.close()
    for step, batch in zip([*range(12), 4, 5], got):
        assert torch.equal(batch["latent"], batch_for(step)["latent"]), step
        assert int(batch["step"]) == step
    assert buffers.allocated == 3 * 2  # (2, 3), (4, 1), (1,) int64: two each


def test_several_steps_ahead_are_made_in_parallel_and_handed_out_in_order():
    """ahead=3: steps s + 1 … s + 3 are made at once (a slow read per step overlaps the
    others); every batch handed out is its own step's, staged buffers included, across a jump."""
    import torch

    from osora.train.prefetch import PinnedBuffers

    started, first = threading.Barrier(3, timeout=10), {1, 2, 3}

    def batch_for(step):
        if step in first:  # made ahead after step 0: all three under way together, or this breaks
            first.discard(step)
            started.wait()
        return {"latent": torch.full((2, 3), float(step))}

    buffers = PinnedBuffers(depth=4)
    fetch = Prefetcher(batch_for, buffers=buffers, ahead=3)
    steps = [*range(10), 2, 3, 4]
    got = [fetch(s) for s in steps]
    fetch.close()
    for step, batch in zip(steps, got):
        assert bool((batch["latent"] == step).all()), step
    assert buffers.allocated == 4


def test_too_few_buffers_for_the_steps_ahead_is_an_error():
    import pytest

    from osora.train.prefetch import PinnedBuffers

    with pytest.raises(ValueError, match="depth 2 < ahead"):
        Prefetcher(lambda s: s, buffers=PinnedBuffers(depth=2), ahead=2)
