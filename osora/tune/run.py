"""The paper's three-step batch-size search for one stage's buckets (docs/recipe.md §6):

1. the reference bucket — the one with the most tokens per sample — gets the largest batch that
   fits in memory;
2. every other bucket gets the largest batch that fits and whose step time does not exceed the
   reference batch's (× `time_tolerance`);
3. its forward and backward times each stay within the reference batch's as well.

Every probe is a torchrun job of the stage's launch settings (osora.tune.probe): FSDP2 over
params/launch.yaml's ranks, the stage's context parallelism and checkpointing, the full model
unless params/tune.yaml reduces its depth. The result records how the probes ran, as their
ranks reported it.

One Optuna study per bucket (osora.tune.search), named by stage, bucket, model, ranks and
hardware, in a persistent storage, so an interrupted search resumes and `optuna-dashboard`
shows them. The result is written into params/buckets.yaml (osora.tune.write_back).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from osora.launch import process_group_backend
from osora.tune.probe import ProbeRequest, ProbeResult, ProbeSetup, run_probe, world_size
from osora.tune.search import BucketSearch, Limits, open_study, search_bucket
from osora.tune.shapes import ProbeShape, bucket_shapes

Prober = Callable[[ProbeShape, int], ProbeResult]  # (bucket shape, batch) → result


@dataclass
class TuneResult:
    stage: str
    batches: dict[int, int]  # bucket frame count → batch size
    searches: dict[int, BucketSearch]
    reference: ProbeShape
    hardware: str
    model: str  # a readable description of the probed model
    studies: dict[int, str]  # bucket → Optuna study name
    probed: ProbeSetup | None  # how the probes ran (None: no probe reported one)
    full_depth: bool  # False: params/tune.yaml reduced the model's depth

    @property
    def probes(self) -> int:
        return sum(s.probes for s in self.searches.values())


def probed_model(settings) -> dict:
    """The MMDiT config the probes build: params/dit.yaml's, depths from params/tune.yaml."""
    t = settings.tune
    config = settings.dit.model
    changes = {k: v for k, v in (("depth_double", t.depth_double),
                                 ("depth_single", t.depth_single)) if v is not None}
    return dataclasses.asdict(dataclasses.replace(config, **changes))


def probed_setup(searches: dict[int, BucketSearch]) -> ProbeSetup | None:
    """The one setup every probe that reported ran with; None when none reported."""
    setups = {r.setup for s in searches.values() for r in s.results.values()
              if r.setup is not None}
    if len(setups) > 1:
        raise RuntimeError(f"tune: the probes ran in different setups {sorted(map(str, setups))}"
                           "; their batch sizes are not comparable: delete the studies "
                           "(params/tune.yaml storage) and search again")
    return next(iter(setups), None)


def hardware_name(settings) -> str:
    """What the batch sizes are for: the GPU's name, or the CPU with the memory budget."""
    t = settings.tune
    if t.device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu} ({os.cpu_count()} cores), {t.memory_mb} MB per rank"


def default_storage(root: Path) -> str:
    (root / "optuna").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'optuna' / 'tune.db'}"


def process_prober(settings, root: Path) -> Prober:
    """Probes as torchrun jobs (osora.tune.probe) with params/launch.yaml's ranks, for
    params/tune.yaml's settings and the tuned stage's training setup."""
    t = settings.tune
    model = probed_model(settings)
    dit = settings.dit.model_dump(mode="json")
    backend = process_group_backend(settings.launch, t.device)

    def probe(shape: ProbeShape, batch: int) -> ProbeResult:
        request = ProbeRequest(dit, t.stage, model, shape.latent, shape.text_tokens, batch,
                               t.device, t.precision, t.memory_mb, t.steps, backend)
        return run_probe(request, settings.launch, t.probe_timeout_s, root / "optuna")

    return probe


def tune_buckets(settings, root: Path, prober: Prober | None = None,
                 say: Callable[[str], None] = print) -> TuneResult:
    """Search every bucket of params/tune.yaml's stage (module doc)."""
    t = settings.tune
    prober = prober or process_prober(settings, root)
    storage = t.storage or default_storage(root)
    model = probed_model(settings)
    checkpointing = settings.dit.train.stages[t.stage].checkpointing.model_dump()
    hardware = hardware_name(settings)
    cp = settings.dit.train.stages[t.stage].context_parallel
    world = world_size(settings.launch)
    stage = settings.dit.train.stages[t.stage]
    # what else changes a micro-batch's memory (grad_accum does not); listed only when set, so
    # the studies of plain stages keep their names
    lean = {k: v for k, v in (("lora", stage.lora and stage.lora.model_dump()),
                              ("fsdp_offload", stage.fsdp_offload)) if v}
    key = hashlib.sha256(json.dumps([model, checkpointing, t.precision, t.memory_mb, world, cp]
                                    + ([lean] if lean else []),
                                    sort_keys=True).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", hardware).strip("-").lower()
    shapes = bucket_shapes(settings, t.stage)
    reference, others = shapes[0], shapes[1:]
    studies = {s.frames: f"{t.stage}-{s.frames}f-{world}r-{key}-{slug}" for s in shapes}

    def run(shape: ProbeShape, limits: Limits) -> BucketSearch:
        found = search_bucket(open_study(studies[shape.frames], storage),
                              lambda b: prober(shape, b), limits, t.max_batch)
        if found.best is None and found.results[1].fits:
            # batch 1 fits but is slower than the reference batch (a timing outlier, or a
            # bucket costlier per sample): it still trains, at batch 1
            say(f"tune: warning: batch 1 of the {shape.frames}-frame bucket is slower than "
                "the reference batch; using it anyway")
            found.best = found.results[1]
        if found.best is None:
            raise RuntimeError(
                f"tune: not even batch 1 of the {shape.frames}-frame bucket "
                f"({shape.tokens} tokens) fits on {hardware}: {found.results[1].reason}; "
                "raise params/tune.yaml memory_mb or reduce the model (depth_double / "
                "depth_single)")
        say(f"tune: {shape.frames}-frame bucket ({shape.tokens} tokens/sample): batch "
            f"{found.best.batch} ({found.probes} probes, {len(found.results)} in the study)")
        return found

    searches = {reference.frames: run(reference, Limits())}
    limits = Limits(searches[reference.frames].best, t.time_tolerance)
    for shape in others:
        searches[shape.frames] = run(shape, limits)
    full = settings.dit.model
    full_depth = (full.depth_double, full.depth_single) == (model["depth_double"],
                                                           model["depth_single"])
    depth = f"{model['depth_double']}+{model['depth_single']}"
    description = (f"MMDiT hidden {model['hidden_size']}, {model['num_heads']} heads, depth "
                   f"{depth}{'' if full_depth else ' (reduced)'}, patch {model['patch_size']}, "
                   f"{t.precision}, {world} ranks, context parallel {cp}, checkpointing "
                   f"{checkpointing['double']}/{checkpointing['single']}"
                   f"{' + offload' if checkpointing['offload'] else ''}")
    return TuneResult(t.stage, {f: s.best.batch for f, s in searches.items()}, searches,
                      reference, hardware, description, studies, probed_setup(searches),
                      full_depth)
