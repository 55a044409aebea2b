"""Ulysses context parallelism on 2 and 4 real gloo processes: forward outputs and gradients of
every rank's token shard equal single-process attention over the whole sequence, in float64. The
MMDiT test runs ring attention too (its own tests: test_ring_attention.py)."""


import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from free_port import free_port, join_gloo

from osora.train.context_parallel import ulysses_attention
from osora.train.parallel import close_distributed

B, H, D, TOKENS_PER_RANK = 2, 4, 8, 3


def _worker(rank: int, world: int, port: int, masked: bool) -> None:
    join_gloo(rank, world, port)
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


def _model_worker(rank: int, world: int, port: int) -> None:
    import dataclasses

    from osora.diffusion.conditioning import build_cond, condition_mask
    from osora.models.mmdit import MMDIT_TINY, MMDiT
    from osora.train.context_parallel import all_reduce_grads, context_parallel_forward

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
        n_txt = 6 if world == 2 else 8  # 38 tokens over 2 ranks, 40 over 4
        text = torch.randn(2, n_txt, MMDIT_TINY.text_dim, generator=g, dtype=torch.float64)
        inputs = (x, torch.rand(2, generator=g, dtype=torch.float64), text,
                  torch.randn(2, MMDIT_TINY.vec_dim, generator=g, dtype=torch.float64))
        text_mask = torch.tensor([[True] * n_txt, [True] * 3 + [False] * (n_txt - 3)])
        weight = torch.randn(x.shape, generator=g, dtype=torch.float64)

        ref = model(*inputs, text_mask=text_mask, cond=cond)  # one process, whole sequence
        (ref * weight).sum().backward()
        want = {n: prm.grad.clone() for n, prm in model.named_parameters()}
        model.zero_grad()

        for attention in ("ulysses", "ring"):  # one spawn for both: spawns are the cost
            out = context_parallel_forward(model, None, *inputs, text_mask=text_mask, cond=cond,
                                           attention=attention)
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
            context_parallel_forward(model, None, *inputs, attention="rign")
    finally:
        close_distributed()


@pytest.mark.parametrize("world", [2, 4])
def test_the_mmdit_under_context_parallel_equals_one_process(world):
    """Ulysses and ring attention alike. 2 ranks: 6 text + 32 video tokens, shards [6 text +
    13 video | 19 video]; 4 ranks: 8 + 32, [8 text + 2 video | 10 video | …]: a shard may hold
    both streams or one (float64)."""
    mp.spawn(_model_worker, args=(world, free_port()), nprocs=world, join=True)
