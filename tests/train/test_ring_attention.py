"""Ring attention on 2, 3 and 4 real gloo processes: forward outputs and gradients of every rank's
token share equal single-process attention over the whole sequence, in float64, with heads not
divisible by the ranks, with sequences the ranks share unequally (osora.train.cp_shares), with
key masks, with key blocks masked whole, and on sub-groups."""


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from free_port import free_port, join_gloo

from osora.train.cp_shares import share_offset, token_shares
from osora.train.parallel import close_distributed
from osora.train.ring_attention import ring_attention

B, H, D = 2, 3, 8  # 3 heads: divisible by none of the degrees tested


def _check(group, n: int, masked: bool, dead_blocks: bool = False, seed: int = 0) -> None:
    """ring_attention over `group` of a sequence of n tokens against
    F.scaled_dot_product_attention on the whole sequence: this rank's output rows and its
    slices of the q, k, v gradients."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    sizes = token_shares(n, world)
    g = torch.Generator().manual_seed(seed)
    q, k, v, grad_out = (torch.randn(B, H, n, D, generator=g, dtype=torch.float64)
                         for _ in range(4))
    mask = torch.rand(B, n, generator=g) > 0.3 if masked else None
    if mask is not None:
        mask[:, 0] = True  # every row attends to something
    if dead_blocks:  # row 1: rank 1's block masked whole; row 0: the last rank's
        mask[1, sizes[0]:sizes[0] + sizes[1]] = False
        mask[0, share_offset(sizes, world - 1):] = False
    # the reference: one process, the whole sequence
    full = [x.clone().requires_grad_() for x in (q, k, v)]
    ref = F.scaled_dot_product_attention(
        *full, attn_mask=None if mask is None else mask[:, None, None, :])
    (ref * grad_out).sum().backward()

    mine = slice(share_offset(sizes, rank), share_offset(sizes, rank + 1))
    shard = [x[:, :, mine].clone().requires_grad_() for x in (q, k, v)]
    out = ring_attention(*shard, group=group, mask=mask, sizes=sizes)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref[:, :, mine].detach(), rtol=1e-12, atol=1e-12)
    (out * grad_out[:, :, mine]).sum().backward()
    # q's gradient needs only this rank's queries; k's and v's sum over every rank's queries,
    # gathered on the way round the ring
    for name, s, f in zip("qkv", shard, full):
        assert torch.isfinite(s.grad).all(), name
        torch.testing.assert_close(s.grad, f.grad[:, :, mine], rtol=1e-10, atol=1e-12,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


def _worker(rank: int, world: int, port: int, n: int, masked: bool, dead_blocks: bool) -> None:
    join_gloo(rank, world, port)
    try:
        _check(None, n, masked, dead_blocks)
        if world == 4:
            # rings over sub-groups, group ranks ≠ global ranks: {0, 2}, {1, 3}; and alone
            pair, _ = dist.new_subgroups_by_enumeration([[0, 2], [1, 3]])
            _check(pair, 7, masked, seed=1)
            alone, _ = dist.new_subgroups_by_enumeration([[r] for r in range(world)])
            _check(alone, 5, masked, seed=2)
        bad = torch.zeros(B, H, 3, D)
        with pytest.raises(ValueError, match="bool key mask"):
            ring_attention(bad, bad, bad, mask=torch.ones(B, 3, dtype=torch.bool))
    finally:
        close_distributed()


@pytest.mark.parametrize("world,n,masked", [(2, 6, False), (2, 7, True), (4, 14, True)])
def test_ring_equals_whole_sequence_attention(world, n, masked):
    """3 heads over 2 or 4 ranks (Ulysses can't); 6 tokens over 2 ranks: 3 + 3, 7: 4 + 3, 14
    over 4: 4 + 4 + 3 + 3; on 4, also over sub-groups (7 tokens) and P = 1."""
    mp.spawn(_worker, args=(world, free_port(), n, masked, False), nprocs=world, join=True)


def test_key_blocks_masked_whole_give_finite_exact_results():
    """3 ranks, 10 tokens: 4 + 3 + 3; batch row 1 masks rank 1's keys whole (rank 1's first
    block: nothing seen yet), row 0 the last rank's: those blocks add nothing, and nothing
    turns NaN."""
    mp.spawn(_worker, args=(3, free_port(), 10, True, True), nprocs=3, join=True)
