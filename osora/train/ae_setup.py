"""Assembling a Video DC-AE training run from params/ae.yaml: the clips, the model, the
optional pretrained parts (each from a local path), the optimizers and the objective.

Kept apart from the loop (torch only) because it reads the store and decodes video.
"""

from __future__ import annotations

import torch

from osora.config.ae import AEParams
from osora.models.dcae import DCAE, DownBlock, EfficientViTBlock, ResBlock, UpBlock
from osora.train.ae_objective import AELossWeights, AEObjective, adamw
from osora.train.ema import EMA

# The DC-AE's repeating blocks: each becomes one FSDP2 unit (gathered, run, resharded).
DCAE_SHARD_UNITS = (ResBlock, EfficientViTBlock, DownBlock, UpBlock)


def fsdp(world_size: int):
    """The `shard` argument of `build_objective` for a run of `world_size` processes: FSDP2
    over the DC-AE's blocks (a discriminator is sharded as one unit); identity alone."""
    from osora.train.parallel import shard_model

    def shard(module):
        if world_size == 1:
            return module
        if isinstance(module, DCAE):
            return shard_model(module, DCAE_SHARD_UNITS,
                               forward_methods=("encode", "decode", "encode_with_features"))
        return shard_model(module, ())

    return shard


def decode_clips(store, rows: list[dict], short_side: int | None, max_frames: int | None = None
                 ) -> list[torch.Tensor]:
    """Each clip row's video as (T, H, W, 3) uint8, its short side scaled to `short_side`."""
    from osora.media.frames import read_video, resized_size

    videos = []
    for row in rows:
        size = resized_size(row["width"], row["height"], short_side)
        with store.local_path(row["uri"]) as path:
            videos.append(torch.from_numpy(read_video(path, size, max_frames)))
    return videos


def build_objective(params: AEParams, device: str | torch.device,
                    shard=None) -> tuple[DCAE, AEObjective]:
    """The DC-AE (seeded init) and its objective. `shard(module)`, when given, applies the
    run's parallelism (FSDP2) to the AE and discriminator before their optimizers exist."""
    train = params.train
    torch.manual_seed(train.seed)
    ae = DCAE(params.dcae).to(device)
    shard = shard or (lambda module: module)
    ae = shard(ae)

    perceptual = None
    if train.perceptual.weight > 0:
        from osora.models.lpips import LPIPS

        perceptual = LPIPS.from_pretrained(train.perceptual.trunk, train.perceptual.heads)
        perceptual = perceptual.to(device)

    distill = teacher = None
    if train.distill.weight > 0:
        from osora.models.dinov2 import LatentDistillation, encoder_stage_channels, load_dinov2

        teacher = load_dinov2(train.distill.dinov2).to(device)
        width = encoder_stage_channels(params.dcae.widths, train.distill.stage)
        distill = LatentDistillation(width, teacher.config.hidden_size).to(device)

    def optimizer(parameters, lr):
        return adamw(parameters, lr, tuple(train.betas), train.eps, train.weight_decay)

    ae_params = list(ae.parameters()) + (list(distill.parameters()) if distill else [])
    discriminator = disc_optimizer = None
    if train.adversarial.weight > 0 and train.phase2_steps > 0:
        from osora.models.discriminator import Discriminator3D, Discriminator3DConfig

        discriminator = shard(Discriminator3D(
            Discriminator3DConfig(widths=tuple(train.adversarial.widths))).to(device))
        disc_optimizer = optimizer(discriminator.parameters(), train.adversarial.lr)

    weights = AELossWeights(
        perceptual=train.perceptual.weight,
        adversarial=train.adversarial.weight,
        distill=train.distill.weight,
        phase1_steps=train.phase1_steps,
    )
    objective = AEObjective(
        ae, optimizer(ae_params, train.lr), weights,
        perceptual=perceptual, discriminator=discriminator, disc_optimizer=disc_optimizer,
        distill=distill, teacher=teacher, distill_stage=train.distill.stage,
        ema=EMA(ae, train.ema_decay) if train.ema_decay is not None else None,
    )
    return ae, objective
