"""Context parallelism, ring style (Ring Attention, Liu et al. 2023): the sequence is split over
the P ranks of a group and stays split through attention. Each rank keeps its queries and
passes its keys and values around a ring, rank r sending to r+1 and receiving from r-1; at step
s it holds the K/V block of rank r-s, attends its queries to it while the next block is already
in flight, and after P steps has met every key. No head constraint (unlike Ulysses), P - 1
point-to-point exchanges of K/V instead of all-to-alls. Shares may differ in length
(osora.train.cp_shares): each block is received into a buffer of its owner's share.

    step s:  q_r × (k, v)_{r-s}  ──partial (out, lse)──▶ merge      (k, v)_{r-s} ──▶ rank r+1

The partial results merge by their log-sum-exp: with lse = log Σ exp(scores) over the keys seen
so far and out the softmax-weighted values over them, a new block (out_b, lse_b) gives
lse' = log(e^lse + e^lse_b), out' = out·e^(lse-lse') + out_b·e^(lse_b-lse'): exact, whatever
the order. A block whose keys are all masked for a row has lse_b = -inf and weight 0.

The backward is the same ring again: each block's probabilities are recomputed from the saved
q, out and the final lse (softmax = exp(scores - lse)); dq accumulates on the rank; dk and dv of
a block accumulate while travelling with its K/V, each rank adding its queries' share, and
after P steps (one exchange more than K/V) reach the block's owner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from osora.train.cp_shares import checked_shares, share_offset


def _peers(group) -> tuple[int, int, int, int]:
    """(this rank, P, global rank of the next, of the previous) in `group`'s ring."""
    p, rank = dist.get_world_size(group), dist.get_rank(group)
    nxt, prv = (rank + 1) % p, (rank - 1) % p
    if group is not None:
        nxt, prv = dist.get_global_rank(group, nxt), dist.get_global_rank(group, prv)
    return rank, p, nxt, prv


def _exchange(tensors: list[torch.Tensor], nxt: int, prv: int, group, rows: int):
    """Send `tensors` (B, H, n, D) to the next rank and receive the previous rank's, like them
    but of `rows` tokens, asynchronously. Returns (received buffers, requests to wait on)."""
    got = [t.new_empty(*t.shape[:2], rows, t.shape[3]) for t in tensors]
    ops = [dist.P2POp(dist.isend, t, nxt, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, t, prv, group) for t in got]
    return got, dist.batch_isend_irecv(ops)


def _wait(reqs) -> None:
    for req in reqs:
        req.wait()


def _scores(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None,
            scale: float) -> torch.Tensor:
    """q (B, H, n, D) against one block k (B, H, m, D) → scaled scores (B, H, n, m), masked keys
    -inf."""
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale  # (B, H, n, m)
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))  # mask (B, 1, 1, m)
    return s


def _finite(lse: torch.Tensor) -> torch.Tensor:
    """lse with -inf (no key attended) replaced by 0, so exp(scores - lse) is 0, not NaN."""
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def _key_mask(mask: torch.Tensor | None, sizes: Sequence[int], j: int) -> torch.Tensor | None:
    """The key mask (B, n_j) of rank j's block, from the whole sequence's (B, N)."""
    if mask is None:
        return None
    lo = share_offset(sizes, j)
    return mask[:, lo:lo + sizes[j]]


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, mask, sizes):
        rank, p, nxt, prv = _peers(group)
        scale = 1.0 / math.sqrt(q.shape[-1])
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        qc = q.to(dtype)  # (B, H, n, D)
        out = torch.zeros(q.shape, dtype=dtype, device=q.device)  # (B, H, n, D)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=dtype, device=q.device)  # (B, H, n)
        kv = [k.contiguous(), v.contiguous()]  # the block in hand, (B, H, m, D) each
        for step in range(p):
            if step < p - 1:  # the next block, rank j - 1's, travels while this one is computed
                nxt_kv, reqs = _exchange(kv, nxt, prv, group, sizes[(rank - step - 1) % p])
            j = (rank - step) % p  # the block in hand is rank j's tokens, m = n_j of them
            s = _scores(qc, kv[0].to(dtype), _key_mask(mask, sizes, j), scale)  # (B, H, n, m)
            lse_b = torch.logsumexp(s, dim=-1)  # (B, H, n), -inf where all masked
            prob = torch.exp(s - _finite(lse_b)[..., None])  # (B, H, n, m)
            out_b = torch.einsum("bhqk,bhkd->bhqd", prob, kv[1].to(dtype))  # (B, H, n, D)
            new = torch.logaddexp(lse, lse_b)  # (B, H, n)
            safe = _finite(new)[..., None]  # (B, H, n, 1)
            out = out * torch.exp(lse[..., None] - safe) \
                + out_b * torch.exp(lse_b[..., None] - safe)  # (B, H, n, D)
            lse = new
            if step < p - 1:
                _wait(reqs)
                kv = nxt_kv
        out = out.to(q.dtype)  # (B, H, n, D)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.group, ctx.sizes = group, sizes
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse, mask = ctx.saved_tensors
        group, sizes = ctx.group, ctx.sizes
        rank, p, nxt, prv = _peers(group)
        scale = 1.0 / math.sqrt(q.shape[-1])
        dtype = lse.dtype
        qc, do = q.to(dtype), grad_out.to(dtype)  # (B, H, n, D)
        delta = (do * out.to(dtype)).sum(-1, keepdim=True)  # (B, H, n, 1): rowsum(dO ∘ O)
        lse = _finite(lse)[..., None]  # (B, H, n, 1)
        dq = torch.zeros_like(qc)  # (B, H, n, D)
        kv = [k.contiguous(), v.contiguous()]  # the block in hand
        dkv: list[torch.Tensor] = []  # its dk, dv from the ranks before, (B, H, m, D) each
        for step in range(p):
            j = (rank - step) % p  # the block in hand is rank j's, m = n_j tokens
            ops_kv = (_exchange(kv, nxt, prv, group, sizes[(j - 1) % p]) if step < p - 1
                      else ([], []))
            # the previous step's dk, dv go on to the next rank; the block now in hand arrives
            # with the previous rank's (its visits so far)
            ops_d = _exchange(dkv, nxt, prv, group, sizes[j]) if step > 0 else ([], [])
            kb, vb = kv[0].to(dtype), kv[1].to(dtype)  # (B, H, m, D)
            s = _scores(qc, kb, _key_mask(mask, sizes, j), scale)  # (B, H, n, m)
            prob = torch.exp(s - lse)  # (B, H, n, m): softmax
            dv = torch.einsum("bhqk,bhqd->bhkd", prob, do)  # (B, H, m, D)
            dp = torch.einsum("bhqd,bhkd->bhqk", do, vb)  # (B, H, n, m)
            ds = prob * (dp - delta)  # (B, H, n, m): d scores
            dq += torch.einsum("bhqk,bhkd->bhqd", ds, kb) * scale  # (B, H, n, D)
            dk = torch.einsum("bhqk,bhqd->bhkd", ds, qc) * scale  # (B, H, m, D)
            _wait(ops_kv[1] + ops_d[1])
            if step > 0:
                dk, dv = dk + ops_d[0][0], dv + ops_d[0][1]  # (B, H, m, D) each
            dkv = [dk, dv]
            if step < p - 1:
                kv = ops_kv[0]
        if p > 1:  # the last holder hands block rank+1's sums on: my own block comes home
            dkv, reqs = _exchange(dkv, nxt, prv, group, sizes[rank])
            _wait(reqs)
        dk, dv = dkv
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None,
                   mask: torch.Tensor | None = None,
                   sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Attention over the whole sequence from this rank's token share.

    q, k, v: (B, H, n_r, D), rank r of `group` holding the tokens [Σ_{i<r} n_i, Σ_{i≤r} n_i)
    (RoPE already applied); sizes: every rank's n_i (`cp_shares.token_shares`; None: all n_r);
    mask: None or the bool key mask (B, N) of the whole sequence, True = attend.
    Returns (B, H, n_r, D), this rank's tokens. Any number of heads.
    """
    sizes = tuple(checked_shares(q, group, sizes))
    b, n = k.shape[0], sum(sizes)
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (b, n)):
        raise ValueError(f"ring attention: mask must be a bool key mask (B, N) = ({b}, {n}), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    return _RingAttention.apply(q, k, v, group, mask, sizes)
