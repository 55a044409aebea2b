"""The [osora] section of a torchtitan TOML: what torchtitan's JobConfig has no field for.

Loaded as torchtitan's job-config extension (`[job] custom_config_module =
"osora.titan.job_config"`, which `python -m osora.titan.train` adds when it is missing), as
torchtitan's FLUX does with `torchtitan.models.flux.job_config`. Everything else is
torchtitan's own config: optimizer, lr_scheduler, training (batch size, steps, max_norm,
mixed precision), parallelism, activation_checkpoint.mode, checkpoint, metrics, debug.seed.
"""

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class Osora:
    source: Literal["synthetic", "latents"] = "synthetic"
    """Where batches come from. "synthetic": random latents of the shape below with random
    text features (throughput runs, CPU tests). "latents": osora's latents table through
    osora.train.dit_batches.LatentBatches (needs the `pipeline` extra and the store of
    params/store.yaml); its buckets, batch sizes, text encoder and conditioning come from
    params (`profile`, `stage`), not from this section or training.local_batch_size."""

    profile: str = "tiny"
    """params profile (osora.config.load_settings) of the "latents" source."""

    stage: str = "stage1"
    """params/dit.yaml train.stages.<stage> (and params/buckets.yaml stages.<stage>) of the
    "latents" source: its latent set, bucket batch sizes and whether it is conditioned."""

    latents_receipt: str = ""
    """Receipt (lineage/latents.json) pinning the latents table's version; "": the newest."""

    texts_receipt: str = ""
    """Receipt (lineage/text_embeds.json) pinning the text_embeds table's version, for a stage
    whose text_source is table; "": the newest."""

    latent_frames: int = 4
    """Latent frames T of the bucket: the synthetic batches' shape and the shape whose FLOPs
    per token torchtitan's MFU uses (train_step_flops)."""

    latent_height: int = 8
    """Latent height H (a multiple of the patch size)."""

    latent_width: int = 8
    """Latent width W (a multiple of the patch size)."""

    text_tokens: int = 16
    """Text tokens L of the synthetic batches and of the MFU shape."""

    sigma_min: float = 1.0e-5
    """Flow target (1 − σ_min)·noise − x0 (params/dit.yaml train.sigma_min)."""

    checkpoint_double: int = 0
    """activation_checkpoint.mode = "selective": the first N double blocks are checkpointed
    (osora.train.activation_checkpoint; −1: all; paper 8)."""

    checkpoint_single: int = 0
    """activation_checkpoint.mode = "selective": the first N single blocks (−1: all; paper all)."""

    checkpoint_offload: bool = False
    """With activation checkpointing: keep the saved inputs in CPU memory (paper stage 3)."""

    cp_attention: Literal["ulysses", "ring"] = "ulysses"
    """Attention over a context-parallel group (parallelism.context_parallel_degree > 1)."""


@dataclass
class JobConfig:
    """Merged into torchtitan's JobConfig by its ConfigManager."""

    osora: Osora = field(default_factory=Osora)


def osora_options(job_config) -> Osora:
    """The [osora] section of a (merged) torchtitan JobConfig; the defaults without one."""
    return getattr(job_config, "osora", None) or Osora()
