"""Ulysses context parallelism on 2, 3 and 4 real gloo processes: forward outputs and gradients of
every rank's token share equal single-process attention over the whole sequence, in float64,
for sequences the ranks share equally or not (osora.train.cp_shares). The MMDiT test runs ring
attention too (its own tests: test_ring_attention.py), entering through the blocks' attention
modules that `parallelize_attention` swaps."""


import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from free_port import free_port, join_gloo

from osora.train.context_parallel import ulysses_attention
from osora.train.cp_shares import share_offset, token_shares
from osora.train.parallel import close_distributed

B, H, D = 2, 12, 4  # 12 heads: divisible by 2, 3 and 4


def _worker(rank: int, world: int, port: int, tokens: int, masked: bool) -> None:
    join_gloo(rank, world, port)
    try:
        g = torch.Generator().manual_seed(0)
        q, k, v, grad_out = (torch.randn(B, H, tokens, D, generator=g, dtype=torch.float64)
                             for _ in range(4))
        mask = torch.rand(B, tokens, generator=g) > 0.3 if masked else None
        if mask is not None:
            mask[:, 0] = True
        # the reference: one process, the whole sequence
        full = [x.clone().requires_grad_() for x in (q, k, v)]
        ref = F.scaled_dot_product_attention(
            *full, attn_mask=None if mask is None else mask[:, None, None, :])
        (ref * grad_out).sum().backward()

        sizes = token_shares(tokens, world)
        lo = share_offset(sizes, rank)
        mine = slice(lo, lo + sizes[rank])
        shard = [x[:, :, mine].clone().requires_grad_() for x in (q, k, v)]
        out = ulysses_attention(*shard, mask=mask, sizes=sizes)
        torch.testing.assert_close(out, ref[:, :, mine].detach(), rtol=1e-12, atol=1e-12)
        (out * grad_out[:, :, mine]).sum().backward()
        # q's gradient needs only this rank's queries; k's and v's sum over every rank's
        # queries, which the backward all-to-all brings home
        for name, s, f in zip("qkv", shard, full):
            torch.testing.assert_close(s.grad, f.grad[:, :, mine], rtol=1e-10, atol=1e-12,
                                       msg=lambda m, name=name: f"grad {name}: {m}")
        odd = torch.zeros(B, world + 1, sizes[rank], D)  # heads not divisible
        with pytest.raises(ValueError, match=f"{world + 1} heads over {world} ranks"):
            ulysses_attention(odd, odd, odd, sizes=sizes)
        with pytest.raises(ValueError, match=f"rank {rank} holds {sizes[rank]} tokens"):
            ulysses_attention(*shard, sizes=[sizes[rank] + 1] * world)  # not its share
    finally:
        close_distributed()


@pytest.mark.parametrize("world,tokens,masked", [(2, 7, False), (3, 11, True), (4, 12, True)])
def test_ulysses_equals_whole_sequence_attention(world, tokens, masked):
    """7 tokens over 2 ranks: 4 + 3; 11 over 3: 4 + 4 + 3; 12 over 4: 3 each."""
    mp.spawn(_worker, args=(world, free_port(), tokens, masked), nprocs=world, join=True)


N_TEXT = {2: 5, 3: 6, 4: 7}  # text tokens beside the 32 video tokens, by world


def _model_worker(rank: int, world: int, port: int) -> None:
    import dataclasses

    from osora.diffusion.conditioning import build_cond, condition_mask
    from osora.models.mmdit import MMDIT_TINY, MMDiT
    from osora.train.context_parallel import (
        ContextParallelAttention,
        all_reduce_grads,
        context_parallel_forward,
        parallelize_attention,
    )

    join_gloo(rank, world, port)
    try:
        torch.manual_seed(0)
        model = MMDiT(dataclasses.replace(MMDIT_TINY, depth_double=2)).double()
        with torch.no_grad():
            for prm in model.parameters():
                prm.normal_(0, 0.05)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 16, 2, 4, 4, generator=g, dtype=torch.float64)  # 32 video tokens
        cond = build_cond(torch.randn(x.shape, generator=g, dtype=torch.float64),
                          condition_mask("i2v_head", 2))
        n_txt = N_TEXT[world]
        text = torch.randn(2, n_txt, MMDIT_TINY.text_dim, generator=g, dtype=torch.float64)
        inputs = (x, torch.rand(2, generator=g, dtype=torch.float64), text,
                  torch.randn(2, MMDIT_TINY.vec_dim, generator=g, dtype=torch.float64))
        text_mask = torch.tensor([[True] * n_txt, [True] * 3 + [False] * (n_txt - 3)])
        weight = torch.randn(x.shape, generator=g, dtype=torch.float64)

        ref = model(*inputs, text_mask=text_mask, cond=cond)  # one process, whole sequence
        (ref * weight).sum().backward()
        want = {n: prm.grad.clone() for n, prm in model.named_parameters()}
        model.zero_grad()
        names = list(model.state_dict())
        with pytest.raises(ValueError, match="call parallelize_attention"):
            context_parallel_forward(model, *inputs)  # local attention on a shard: refused

        kinds = ("ulysses", "ring") if MMDIT_TINY.num_heads % world == 0 else ("ring",)
        for attention in kinds:  # one spawn for all: spawns are the cost
            parallelize_attention(model, None, attention)  # None: the whole world is the group
            swapped = [m for m in model.modules() if isinstance(m, ContextParallelAttention)]
            assert len(swapped) == 3 and {m.kind for m in swapped} == {attention}
            assert list(model.state_dict()) == names  # the seam holds no weights
            out = context_parallel_forward(model, *inputs, text_mask=text_mask, cond=cond)
            torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-12,
                                       msg=lambda m, a=attention: f"{a}: {m}")
            (out * weight).sum().backward()
            all_reduce_grads(model, None)
            for name, prm in model.named_parameters():
                torch.testing.assert_close(prm.grad, want[name], rtol=1e-9, atol=1e-12,
                                           msg=lambda m, a=attention, name=name:
                                           f"{a} grad {name}: {m}")
            model.zero_grad()
        with pytest.raises(ValueError, match=r"one of \['ring', 'torch', 'ulysses'\], got 'rign'"):
            parallelize_attention(model, None, "rign")
    finally:
        close_distributed()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_mmdit_under_context_parallel_equals_one_process(world):
    """Ulysses and ring attention alike (3 ranks: ring alone, the 4 heads do not split in 3).
    2 ranks: 5 text + 32 video tokens, unequal shares [5 text + 14 video | 18 video]; 3 ranks:
    6 + 32, [6 text + 7 video | 13 video | 12 video]; 4 ranks: 7 + 32, [7 text + 3 video |
    10 video | 10 video | 9 video]: a share may hold both streams or one (float64)."""
    mp.spawn(_model_worker, args=(world, free_port()), nprocs=world, join=True)


def test_a_model_without_attention_modules_is_refused():
    from torch import nn

    from osora.train.context_parallel import parallelize_attention

    with pytest.raises(ValueError, match="Linear has no Attention modules"):
        parallelize_attention(nn.Linear(2, 2), None, "ulysses")
