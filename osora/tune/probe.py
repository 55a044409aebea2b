"""One probe of the batch-size search: can this batch of this bucket train, and how fast, in the
run the batch is for?

Each probe is a torchrun job of its own, started as the training stage is (osora.launch's
command for params/launch.yaml: nodes × nproc_per_node ranks), so an out-of-memory error — or
an allocator left fragmented by one — cannot poison the next probe, and the ranks build the
stage's model the way the stage does (osora.tune.probe_worker: FSDP2, context parallelism and
activation checkpointing through `build_objective`). The request goes to the ranks as a JSON
file; each rank writes its result, with the world size, CP degree and sharding it ran with,
next to it.

Memory: on CUDA the device's own limit; on CPU the request's `memory_mb` per rank beyond what
the rank holds once torch and its process group are up, enforced with RLIMIT_DATA (heap and
anonymous mappings), so an allocation past it fails inside torch as a GPU's does. (The AE
encode is not part of osora's step: training reads precomputed latents, so step 3 of the
paper's search compares forward and backward.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from osora.config.launch import LaunchParams
from osora.launch import LAUNCH_ENV, torchrun_argv

OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory",
               "std::bad_alloc", "memoryerror")
KILLED_MARKER = "signal 9 (sigkill)"  # torchrun's summary of a rank the kernel's OOM killer took
WORKER = "osora.tune.probe_worker"
# A rank that ran out of memory writes its result, then exits with this code: the others may be
# blocked in a collective, and torchrun stops them once one rank has failed.
OOM_EXIT_CODE = 3


@dataclass(frozen=True)
class ProbeRequest:
    dit: dict  # params/dit.yaml (DiTParams as JSON): the stage's training setup
    stage: str  # the key of dit.train.stages whose checkpointing and CP the ranks apply
    model: dict  # MMDiTConfig fields: dit.model's, depths as params/tune.yaml says
    latent: tuple[int, int, int, int]  # (C, T, h, w) of one sample
    text_tokens: int
    batch: int  # per data-parallel rank, as params/buckets.yaml's batch_size
    device: str  # "cpu" or "cuda"
    precision: str
    memory_mb: int  # CPU only: each rank's budget
    steps: int
    backend: str  # the ranks' process group backend (osora.launch.process_group_backend)


@dataclass(frozen=True)
class ProbeSetup:
    """How a probe ran, as its ranks saw it."""

    world_size: int  # the job's ranks (torch.distributed)
    nodes: int  # torchrun agents
    context_parallel: int  # ranks sharing one sample's sequence
    fsdp: bool  # the blocks' parameters were FSDP2-sharded over the ranks
    checkpointing: str  # the stage's: "double/single" checkpointed blocks (-1: all), "+offload"
    depth: str  # double+single blocks of the model built
    device: str  # rank 0's


@dataclass(frozen=True)
class ProbeResult:
    batch: int
    fits: bool
    step_s: float | None = None  # medians over the timed steps, the slowest rank's
    forward_s: float | None = None
    backward_s: float | None = None
    peak_mb: float | None = None  # the largest rank's
    reason: str = ""  # why it does not fit (out of memory, timeout, crash)
    setup: ProbeSetup | None = None  # None: the job died before a rank reported

    @classmethod
    def from_dict(cls, raw: dict) -> ProbeResult:
        """The inverse of `dataclasses.asdict` (an Optuna trial's attribute, a rank's file)."""
        setup = raw.get("setup")
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in raw.items() if k in known},
                      "setup": ProbeSetup(**setup) if setup else None})


def world_size(launch: LaunchParams) -> int:
    return launch.nodes * launch.nproc_per_node


def run_probe(request: ProbeRequest, launch: LaunchParams, timeout_s: float,
              workdir: Path) -> ProbeResult:
    """The request as a torchrun job with `launch`'s ranks. Out of memory (an error or a kill
    by signal) and a timeout are infeasible results; any other failure raises with the job's
    stderr. `workdir` holds the request and the ranks' results: with several nodes it must be
    on the filesystem they share (the checkout, docs/launch.md)."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="probe-", dir=workdir) as tmp:
        path = Path(tmp) / "request.json"
        path.write_text(json.dumps(asdict(request)))
        # `-m`: torchrun runs WORKER as a module, as `python -m` would
        argv = torchrun_argv(launch, "-m", [WORKER, str(path), tmp])
        # One malloc arena (per-thread arenas reserve memory the budget would count) and a
        # fixed mmap threshold: glibc's adaptive one made the heap's size depend on the order
        # threads freed in, so a batch at the budget's edge fitted in some runs only (measured:
        # 2 of 6); with it fixed, 8 of 8 runs agree.
        env = {**os.environ, **LAUNCH_ENV, "MALLOC_ARENA_MAX": "1",
               "MALLOC_MMAP_THRESHOLD_": "131072"}
        job = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, start_new_session=True)
        try:
            _, stderr = job.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)  # torchrun and its ranks
            job.communicate()
            return ProbeResult(request.batch, False, reason=f"timeout after {timeout_s:g} s")
        ranks = [ProbeResult.from_dict(json.loads(p.read_text()))
                 for p in sorted(Path(tmp).glob("rank*.json"))]
    return _job_result(request.batch, ranks, job.returncode, stderr, world_size(launch))


def _job_result(batch: int, ranks: list[ProbeResult], returncode: int, stderr: str,
                world: int) -> ProbeResult:
    """One result from the ranks' own: infeasible when any rank ran out of memory, else the
    slowest rank's times and the largest rank's memory."""
    failed = [r for r in ranks if not r.fits]
    if failed:
        return failed[0]
    if returncode == 0 and len(ranks) == world:
        return ProbeResult(batch, True, *(max(getattr(r, n) for r in ranks) for n in
                                          ("step_s", "forward_s", "backward_s", "peak_mb")),
                           setup=ranks[0].setup)
    lowered = stderr.lower()
    if any(m in lowered for m in (*OOM_MARKERS, KILLED_MARKER)):
        tail = next((line for line in reversed(stderr.splitlines())
                     if any(m in line.lower() for m in OOM_MARKERS)), "killed by SIGKILL")
        return ProbeResult(batch, False, reason=f"out of memory: {tail.strip()[:300]}")
    # anything else is a bug or a bad request, not a batch that does not fit
    raise RuntimeError(f"probe of batch {batch} failed (torchrun exit {returncode}, "
                       f"{len(ranks)} of {world} ranks reported):\n{stderr[-3000:]}")
