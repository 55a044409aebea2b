"""torch's own context parallelism behind the CP attention contract, on 2 real gloo processes:
the forward equals whole-sequence attention in float64 (its backward needs CUDA's attention
kernels: see osora/train/torch_cp_attention.py); a key mask and unequal shares are refused with
the fix."""


import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from free_port import free_port, join_gloo

from osora.train.parallel import close_distributed
from osora.train.torch_cp_attention import torch_cp_attention

B, H, D, TOKENS_PER_RANK = 2, 3, 8, 4


def _worker(rank: int, world: int, port: int) -> None:
    join_gloo(rank, world, port)
    try:
        n = TOKENS_PER_RANK * world
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for _ in range(3))
        ref = F.scaled_dot_product_attention(q, k, v)
        mine = slice(rank * TOKENS_PER_RANK, (rank + 1) * TOKENS_PER_RANK)
        with torch.no_grad():
            out = torch_cp_attention(*(x[:, :, mine] for x in (q, k, v)))
        torch.testing.assert_close(out, ref[:, :, mine], rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="cp_attention to ulysses or ring"):
            torch_cp_attention(q, k, v, mask=torch.ones(B, n, dtype=torch.bool))
        sizes = [TOKENS_PER_RANK + 1, TOKENS_PER_RANK - 1]  # a sequence of 2·4 tokens, unequal
        share = slice(rank * sizes[0], rank * sizes[0] + sizes[rank])
        with pytest.raises(ValueError, match=r"equal shares only: 8 tokens over 2 ranks split "
                           r"\[5, 3\]; set params/dit.yaml train.cp_attention to ulysses or ring"):
            torch_cp_attention(*(x[:, :, share] for x in (q, k, v)), sizes=sizes)
    finally:
        close_distributed()


def test_torch_context_parallel_forward_equals_whole_sequence_attention():
    mp.spawn(_worker, args=(2, free_port()), nprocs=2, join=True)
