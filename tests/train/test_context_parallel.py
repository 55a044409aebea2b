"""Ulysses context parallelism on 2 and 4 real gloo processes: forward outputs and gradients of
every rank's token shard equal single-process attention over the whole sequence, in float64."""

import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from free_port import free_port

from osora.train.context_parallel import ulysses_attention
from osora.train.parallel import close_distributed, init_distributed

B, H, D, TOKENS_PER_RANK = 2, 4, 8, 3


def _worker(rank: int, world: int, port: int, masked: bool) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_distributed("gloo")
    try:
        n = TOKENS_PER_RANK * world
        g = torch.Generator().manual_seed(0)
        q, k, v, grad_out = (torch.randn(B, H, n, D, generator=g, dtype=torch.float64)
                             for _ in range(4))
        mask = torch.rand(B, n, generator=g) > 0.3 if masked else None
        if mask is not None:
            mask[:, 0] = True
        # the reference: one process, the whole sequence
        full = [x.clone().requires_grad_() for x in (q, k, v)]
        ref = F.scaled_dot_product_attention(
            *full, attn_mask=None if mask is None else mask[:, None, None, :])
        (ref * grad_out).sum().backward()

        mine = slice(rank * TOKENS_PER_RANK, (rank + 1) * TOKENS_PER_RANK)
        shard = [x[:, :, mine].clone().requires_grad_() for x in (q, k, v)]
        out = ulysses_attention(*shard, mask=mask)
        torch.testing.assert_close(out, ref[:, :, mine].detach(), rtol=1e-12, atol=1e-12)
        (out * grad_out[:, :, mine]).sum().backward()
        # q's gradient needs only this rank's queries; k's and v's sum over every rank's
        # queries, which the backward all-to-all brings home
        for name, s, f in zip("qkv", shard, full):
            torch.testing.assert_close(s.grad, f.grad[:, :, mine], rtol=1e-10, atol=1e-12,
                                       msg=lambda m, name=name: f"grad {name}: {m}")
        odd = torch.zeros(B, world + 1, TOKENS_PER_RANK, D)  # heads not divisible
        with pytest.raises(ValueError, match=f"{world + 1} heads over {world} ranks"):
            ulysses_attention(odd, odd, odd)
    finally:
        close_distributed()


@pytest.mark.parametrize("world,masked", [(2, False), (2, True), (4, True)])
def test_ulysses_equals_whole_sequence_attention(world, masked):
    mp.spawn(_worker, args=(world, free_port(), masked), nprocs=world, join=True)
