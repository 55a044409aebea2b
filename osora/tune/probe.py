"""One probe of the batch-size search: can this batch of this bucket train, and how fast?

Each probe runs in a process of its own (`python -m osora.tune.probe`, a JSON request on stdin,
a JSON result on stdout), so an out-of-memory error — or an allocator left fragmented by one —
cannot poison the next probe. The child builds the MMDiT of the request (the stage's activation
checkpointing applied), AdamW, and a random batch of the bucket's latent shape, takes one
warm-up step, then times `steps` steps: forward (with the flow loss), backward and the optimizer
step apart, reporting medians.

Memory: on CUDA the device's own limit; on CPU the request's `memory_mb` beyond what the
process holds once torch is imported, enforced with RLIMIT_DATA (heap and anonymous mappings),
so an allocation past it fails inside torch as a GPU's does. (The AE encode is not part of
osora's step: training reads precomputed latents, so step 3 of the paper's search compares
forward and backward.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory",
               "std::bad_alloc", "memoryerror")


@dataclass(frozen=True)
class ProbeRequest:
    model: dict  # MMDiTConfig fields
    latent: tuple[int, int, int, int]  # (C, T, h, w) of one sample
    text_tokens: int
    batch: int
    device: str
    precision: str
    memory_mb: int
    steps: int
    checkpointing: tuple[int, int, bool]  # (double, single, offload)


@dataclass(frozen=True)
class ProbeResult:
    batch: int
    fits: bool
    step_s: float | None = None  # medians over the timed steps
    forward_s: float | None = None
    backward_s: float | None = None
    peak_mb: float | None = None
    reason: str = ""  # why it does not fit (out of memory, timeout, crash)


def run_probe(request: ProbeRequest, timeout_s: float) -> ProbeResult:
    """The request in a fresh process. Out of memory (an error or a kill by signal) and a
    timeout are infeasible results; any other failure raises with the child's stderr."""
    try:
        # One malloc arena (per-thread arenas reserve memory the budget would count) and a
        # fixed mmap threshold: glibc's adaptive one made the heap's size depend on the order
        # threads freed in, so a batch at the budget's edge fitted in some runs only (measured:
        # 2 of 6); with it fixed, 8 of 8 runs agree.
        env = {**os.environ, "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
        done = subprocess.run([sys.executable, "-m", "osora.tune.probe"],
                              input=json.dumps(asdict(request)), capture_output=True,
                              text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return ProbeResult(request.batch, False, reason=f"timeout after {timeout_s:g} s")
    last = done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []
    if done.returncode == 0 and last:
        return ProbeResult(**json.loads(last[0]))
    tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
    if done.returncode < 0 or any(m in done.stderr.lower() for m in OOM_MARKERS):
        return ProbeResult(request.batch, False, reason=f"out of memory: {tail[0][:300]}")
    # anything else is a bug or a bad request, not a batch that does not fit
    raise RuntimeError(f"probe of batch {request.batch} failed (exit {done.returncode}):\n"
                       f"{done.stderr[-3000:]}")


def _limit_cpu_memory(memory_mb: int) -> None:
    """Cap this process's data memory (heap and private anonymous mappings, where tensors live;
    not code or thread stacks) at what it holds now + memory_mb (Linux)."""
    import resource

    with open("/proc/self/status") as f:
        data_kb = next(int(line.split()[1]) for line in f if line.startswith("VmData:"))
    cap = data_kb * 1024 + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))


def _measure(request: ProbeRequest) -> ProbeResult:
    import statistics
    import time

    import torch

    from osora.diffusion.flow import flow_inputs, flow_loss
    from osora.models.mmdit import MMDiT, MMDiTConfig
    from osora.train.activation_checkpoint import apply_checkpointing

    device = torch.device(request.device)
    if device.type == "cpu":
        # start the intra-op thread pool first: its threads' stacks are the process's, not
        # the probe's
        torch.ones(256, 256) @ torch.ones(256, 256)
        _limit_cpu_memory(request.memory_mb)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        torch.manual_seed(0)
        config = MMDiTConfig(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in request.model.items()})
        model = MMDiT(config).to(device).train()
        apply_checkpointing(model, *request.checkpointing)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, eps=1e-15)
        b = request.batch
        latent = torch.randn(b, *request.latent, device=device)  # (B, C, T, h, w)
        text = torch.randn(b, request.text_tokens, config.text_dim, device=device)
        pooled = torch.randn(b, config.vec_dim, device=device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                  enabled=request.precision == "bf16")
        generator = torch.Generator().manual_seed(0)
        times: dict[str, list[float]] = {"forward": [], "backward": [], "step": []}
        for step in range(request.steps + 1):  # step 0 warms up (allocator, kernels)
            sync()
            start = time.perf_counter()
            with autocast:
                x = flow_inputs(latent, patch_size=config.patch_size, generator=generator)
                loss = flow_loss(model(x.x_t, x.t, text, pooled), latent, x.noise)
            sync()
            forward_end = time.perf_counter()
            loss.backward()
            sync()
            backward_end = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            if step:
                times["forward"].append(forward_end - start)
                times["backward"].append(backward_end - forward_end)
                times["step"].append(time.perf_counter() - start)
    except (torch.OutOfMemoryError, MemoryError) as err:
        return ProbeResult(request.batch, False, reason=f"out of memory: {err}"[:300])
    except RuntimeError as err:
        if any(m in str(err).lower() for m in OOM_MARKERS):
            return ProbeResult(request.batch, False, reason=f"out of memory: {err}"[:300])
        raise
    median = {k: statistics.median(v) for k, v in times.items()}
    return ProbeResult(request.batch, True, median["step"], median["forward"],
                       median["backward"], peak_mb=_peak_mb(device))


def _peak_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    raw = json.loads(sys.stdin.read())
    request = ProbeRequest(**{**raw, "latent": tuple(raw["latent"]),
                              "checkpointing": tuple(raw["checkpointing"])})
    print(json.dumps(asdict(_measure(request))))


if __name__ == "__main__":
    main()
