"""A rank of one probe (`python -m osora.tune.probe_worker REQUEST OUT_DIR` under torchrun;
osora.tune.probe starts it): the stage's model built as its training run builds it, a random
batch of the bucket's latent shape, one warm-up step, then `steps` timed steps — forward (with
the flow loss), backward and the optimizer step apart, medians. Writes OUT_DIR/rank<r>.json.

The model goes through `build_objective` with the job's context-parallel layout, as
pipelines/dit_train.py does: FSDP2 over the ranks, the stage's context_parallel and activation
checkpointing, AdamW and the EMA. A step is the loop's update (osora.train.loop): loss under
autocast, backward, gradient clipping, optimizer step, EMA.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.distributed.fsdp import FSDPModule

from osora.config.dit import DiTParams
from osora.job import current_job
from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.train.dit_setup import build_objective
from osora.train.flow_objective import LatentBatch
from osora.train.parallel import Dist, close_distributed, context_layout, init_distributed
from osora.tune.probe import OOM_EXIT_CODE, OOM_MARKERS, ProbeRequest, ProbeResult, ProbeSetup


def main() -> None:
    request_path, out_dir = sys.argv[1:]
    raw = json.loads(Path(request_path).read_text())
    request = ProbeRequest(**{**raw, "latent": tuple(raw["latent"])})
    job = init_distributed(request.backend)
    device = torch.device(f"cuda:{job.local_rank}" if request.device == "cuda" else "cpu")
    if device.type == "cpu":
        # start the intra-op thread pool first: its threads' stacks are the process's, not
        # the probe's
        torch.ones(256, 256) @ torch.ones(256, 256)
        _limit_cpu_memory(request.memory_mb)
    try:
        result = _measure(request, job, device)
    except (torch.OutOfMemoryError, MemoryError) as err:
        result = ProbeResult(request.batch, False, reason=f"out of memory: {err}"[:300])
    except RuntimeError as err:
        if not any(m in str(err).lower() for m in OOM_MARKERS):
            raise
        result = ProbeResult(request.batch, False, reason=f"out of memory: {err}"[:300])
    out = Path(out_dir) / f"rank{job.rank}.json"
    out.write_text(json.dumps(asdict(result)))
    if not result.fits:
        # the other ranks may wait in a collective this rank never joins: end the job now
        # (torchrun stops them), without a process-group teardown that would wait too
        sys.stdout.flush()
        os._exit(OOM_EXIT_CODE)
    close_distributed()


def _measure(request: ProbeRequest, job: Dist, device: torch.device) -> ProbeResult:
    params = DiTParams.model_validate(request.dit)
    stage = params.train.stages[request.stage]
    context = context_layout(job, stage.context_parallel)
    torch.manual_seed(params.train.seed)  # weights as a fresh stage starts
    config = MMDiTConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in request.model.items()})
    objective = build_objective(params, MMDiT(config).to(device).train(), request.stage,
                                job.world_size, context)
    c = stage.checkpointing
    setup = ProbeSetup(
        job.world_size, current_job().nodes, context.cp,
        fsdp=any(isinstance(m, FSDPModule) for m in objective.model.modules()),
        checkpointing=f"{c.double}/{c.single}{'+offload' if c.offload else ''}",
        depth=f"{config.depth_double}+{config.depth_single}", device=str(device))

    # The ranks of a context-parallel group share their sample: seeded by the group
    generator = torch.Generator().manual_seed(context.dp_rank)
    b = request.batch
    batch = LatentBatch(
        latent=torch.randn(b, *request.latent, generator=generator).to(device),  # (B,C,T,h,w)
        text=torch.randn(b, request.text_tokens, config.text_dim,
                         generator=generator).to(device),  # (B, L, D_seq)
        pooled=torch.randn(b, config.vec_dim, generator=generator).to(device))  # (B, D_vec)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=request.precision == "bf16")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {"forward": [], "backward": [], "step": []}
    for step in range(request.steps + 1):  # step 0 warms up (allocator, kernels)
        torch.manual_seed(hash((params.train.seed, context.dp_rank, step)) % 2**63)  # as the loop
        sync()
        start = time.perf_counter()
        forward_s = backward_s = 0.0
        for update in objective.updates(batch, step):
            update.optimizer.zero_grad(set_to_none=True)
            began = time.perf_counter()
            with autocast:
                loss, _ = update.loss()
            sync()
            forward_end = time.perf_counter()
            loss.backward()
            sync()
            forward_s += forward_end - began
            backward_s += time.perf_counter() - forward_end
            torch.nn.utils.clip_grad_norm_(update.parameters, params.train.grad_clip)
            update.optimizer.step()
            if update.ema is not None:
                update.ema.update()
        sync()
        if step:
            times["forward"].append(forward_s)
            times["backward"].append(backward_s)
            times["step"].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return ProbeResult(request.batch, True, median["step"], median["forward"],
                       median["backward"], peak_mb=_peak_mb(device), setup=setup)


def _limit_cpu_memory(memory_mb: int) -> None:
    """Cap this process's data memory (heap and private anonymous mappings, where tensors live;
    not code or thread stacks) at what it holds now + memory_mb (Linux)."""
    import resource

    with open("/proc/self/status") as f:
        data_kb = next(int(line.split()[1]) for line in f if line.startswith("VmData:"))
    cap = data_kb * 1024 + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))


def _peak_mb(device: torch.device) -> float:
    import resource

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


if __name__ == "__main__":
    main()
