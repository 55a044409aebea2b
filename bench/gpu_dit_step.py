"""A tiny MMDiT trained a few steps by osora's training loop on CUDA and NCCL, under torchrun
(bench/gpu_check.py starts it on one GPU and on all of them):

    python -m torch.distributed.run --standalone --nproc-per-node N bench/gpu_dit_step.py \
        --checkpoints DIR [--cp 2]

Each rank trains on cuda:LOCAL_RANK with bf16 autocast, checkpointing asynchronously to DIR
(DCP) with NaN recovery on; with several ranks the model is FSDP2-sharded over all of them and
groups of `--cp` ranks share each sample's sequence (Ulysses), the path of the paper's stage 3.
One process leaves the loop's collectives out (they need a second rank, and NCCL refuses two
ranks on one GPU). Rank 0 prints one JSON line: world size, CP degree, the last logged
metrics, seconds, peak memory. Needs torch and einops (osora.models.mmdit) alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from osora.models.mmdit import MMDIT_TINY, MMDiT  # noqa: E402
from osora.train.context_parallel import parallelize_attention  # noqa: E402
from osora.train.dit_setup import MMDIT_SHARD_UNITS  # noqa: E402
from osora.train.flow_objective import FlowObjective, LatentBatch  # noqa: E402
from osora.train.loop import LoopSettings, train  # noqa: E402
from osora.train.parallel import (  # noqa: E402
    close_distributed,
    context_layout,
    init_distributed,
    shard_model,
)
from osora.train.recovery import RecoverySettings  # noqa: E402

STEPS, BATCH = 4, 2  # BATCH samples per data-parallel replica and step
LATENT = (16, 2, 8, 8)  # (C, T, H, W) at patch 1: 128 video tokens
TEXT_TOKENS = 16  # 144 tokens in all: any CP degree up to 16 that divides it splits them evenly
CONFIG = dataclasses.replace(MMDIT_TINY, depth_double=2, depth_single=2)


def batch_for(step: int, dp_rank: int, device: torch.device) -> LatentBatch:
    """The step's batch of one replica (the ranks of a CP group draw the same), on `device`."""
    g = torch.Generator().manual_seed(1000 * step + dp_rank)
    latent = torch.randn(BATCH, *LATENT, generator=g)  # (B, C, T, H, W)
    text = torch.randn(BATCH, TEXT_TOKENS, CONFIG.text_dim, generator=g)  # (B, L, D_text)
    pooled = torch.randn(BATCH, CONFIG.vec_dim, generator=g)  # (B, D_vec)
    mask = torch.ones(BATCH, TEXT_TOKENS, dtype=torch.bool)  # (B, L)
    mask[0, TEXT_TOKENS // 2:] = False  # one padded prompt: the key mask crosses the group
    cond = torch.zeros(BATCH, CONFIG.cond_channels, *LATENT[1:])  # (B, C + 1, T, H, W): t2v
    return LatentBatch(*(x.to(device) for x in (latent, text, pooled, mask, cond)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, required=True,
                        help="an empty folder for the run's checkpoints, the same on every rank")
    parser.add_argument("--cp", type=int, default=1, help="context-parallel degree")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_dit_step: no CUDA device (torch.cuda.is_available() is False); "
                         "it checks training on NCCL: run it on a GPU machine under torchrun")

    job = init_distributed()  # nccl, bound to cuda:LOCAL_RANK
    try:
        device = torch.device("cuda", job.local_rank)
        context = context_layout(job, args.cp)
        torch.manual_seed(0)
        model = MMDiT(CONFIG).to(device)  # float32 master weights; bf16 by autocast
        if args.cp > 1:
            parallelize_attention(model, context.group, "ulysses")
        if job.world_size > 1:
            model = shard_model(model, MMDIT_SHARD_UNITS,
                                forward_methods=("embed",) if args.cp > 1 else (),
                                gradient_divide_factor=context.dp if args.cp > 1 else None)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-15)
        objective = FlowObjective(model, optimizer, patch_size=CONFIG.patch_size,
                                  sigma_min=1e-5, context=context)
        settings = LoopSettings(steps=STEPS, grad_clip=1.0, log_every=1, checkpoint_every=2,
                                precision="bf16", device=str(device), async_checkpoint=True,
                                recovery=RecoverySettings(max_recoveries=1))
        start = time.perf_counter()
        result = train(objective, lambda step: batch_for(step, context.dp_rank, device),
                       settings, checkpoint_dir=args.checkpoints, rank=job.rank,
                       data_rank=context.dp_rank)
        seconds = time.perf_counter() - start
        finite = all(math.isfinite(v) for v in result.last.values())
        if job.rank == 0:
            print(json.dumps({
                "world_size": job.world_size, "cp": context.cp, "dp": context.dp,
                "backend": dist.get_backend() if dist.is_initialized() else None,
                "steps_run": result.steps_run, "seconds": round(seconds, 2),
                "last_metrics": result.last,
                "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            }))
        if result.steps_run != STEPS or not finite:
            raise SystemExit(f"gpu_dit_step: {result.steps_run} of {STEPS} steps ran, last "
                             f"metrics {result.last}")
    finally:
        close_distributed()


if __name__ == "__main__":
    main()
