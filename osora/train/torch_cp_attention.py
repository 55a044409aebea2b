"""torch's own context parallelism as a third attention over a context-parallel group: the
rank's q/k/v shards become DTensors sharded on the sequence over the group's mesh, and
scaled_dot_product_attention runs inside torch's context-parallel dispatcher, which turns it
into torch's ring attention over the CUDA attention kernels (flash / memory-efficient / cuDNN).

CUDA only for training: on CPU the forward runs, but the backward of CPU's attention kernel has
no DTensor sharding rule in torch 2.13 (NotImplementedError), so the tests compare the forward
on gloo and the backward waits for a multi-GPU machine. Takes no key mask (torch's CP supports
causal masking only): text padding masks need Ulysses or ring attention. Equal shares only:
torch's ring gathers K/V in equal chunks, and padding the shortest shares would need the key
mask it lacks, so a sequence whose length the degree does not divide is refused (Ulysses and
ring take unequal shares, osora.train.cp_shares). The dispatcher is private API
(torch.distributed.tensor.experimental._attention); it is imported here alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

from osora.train.cp_shares import checked_shares


def torch_cp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None,
                       mask: torch.Tensor | None = None,
                       sizes: Sequence[int] | None = None) -> torch.Tensor:
    """The Ulysses/ring contract: q, k, v (B, H, N/P, D) this rank's contiguous token share;
    sizes: every rank's share (None: all equal), which must be equal; returns (B, H, N/P, D)."""
    from torch.distributed.tensor.experimental._attention import (
        _disable_context_parallel_dispatcher,
        _enable_context_parallel_dispatcher,
    )

    if mask is not None:
        raise ValueError("torch's context parallelism takes no attention mask: set "
                         "params/dit.yaml train.cp_attention to ulysses or ring, or turn the "
                         "text mask off (text.t5_attention_mask: false)")
    sizes = checked_shares(q, group, sizes)
    if len(set(sizes)) > 1:
        raise ValueError(f"torch's context parallelism takes equal shares only: {sum(sizes)} "
                         f"tokens over {len(sizes)} ranks split {sizes}; set params/dit.yaml "
                         "train.cp_attention to ulysses or ring, or train on buckets whose text "
                         "+ video tokens the degree divides")
    group = group if group is not None else dist.group.WORLD
    mesh = DeviceMesh.from_group(group, q.device.type)
    shards = [DTensor.from_local(x.contiguous(), mesh, [Shard(2)]) for x in (q, k, v)]
    _enable_context_parallel_dispatcher()
    try:
        out = F.scaled_dot_product_attention(*shards)  # DTensor (B, H, N, D), Shard(2)
    finally:
        _disable_context_parallel_dispatcher()
    return out.to_local()  # (B, H, N/P, D)
