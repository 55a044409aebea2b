"""params/ae.yaml: the autoencoder stages (docs/recipe.md §2): the Video DC-AE this project trains,
its training, its evaluation on held-out clips, and the latent precompute for DiT training."""

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from osora.config.base import Params, params_of
from osora.models.dcae_config import DCAEConfig
from osora.models.tile_spec import TileSpec
from osora.train.buckets import parse_ratio

# The Video DC-AE architecture: the dataclass the model takes, its fields documented there;
# in_channels (RGB) is fixed by the code.
DCAEParams = params_of(DCAEConfig, not_params=("in_channels",))


class SplitParams(Params):
    """Which clips the AE never trains on: whole source videos are held out, so no frame of a
    held-out clip's video is seen in training."""

    level: str = Field(min_length=1, description="pyramid level the AE trains and tests on")
    holdout_fraction: float = Field(
        gt=0.0, lt=1.0, description="share of source videos held out (at least one)"
    )


class PerceptualParams(Params):
    """LPIPS (VGG16 trunk + linear heads) from local files; weight 0 turns it off."""

    weight: float = Field(ge=0.0, description="loss weight (paper 0.5)")
    trunk: str | None = Field(description="VGG16 trunk weights, .safetensors (torchvision keys)")
    heads: str | None = Field(description="LPIPS linear heads, .safetensors (lpips keys)")

    @model_validator(mode="after")
    def _paths_when_used(self) -> "PerceptualParams":
        if self.weight > 0 and not (self.trunk and self.heads):
            raise ValueError(
                "weight > 0 needs trunk and heads (local LPIPS weights); set both or weight: 0"
            )
        return self


class AdversarialParams(Params):
    """Phase 2: hinge GAN loss from a 3D patch discriminator with its own optimizer."""

    weight: float = Field(ge=0.0, description="generator loss weight (paper 0.05)")
    lr: float = Field(gt=0.0, description="discriminator AdamW learning rate (paper 1e-4)")
    widths: list[int] = Field(min_length=1, description="discriminator widths, one per block")


class DistillParams(Params):
    """Optional alignment of the encoder's features with DINOv2's (weight 0: off)."""

    weight: float = Field(ge=0.0, description="distillation loss weight")
    dinov2: str | None = Field(description="local Hugging Face Dinov2Model folder")
    stage: int = Field(ge=0, description="encoder stage whose output is aligned (third: 2)")

    @model_validator(mode="after")
    def _path_when_used(self) -> "DistillParams":
        if self.weight > 0 and not self.dinov2:
            raise ValueError("weight > 0 needs dinov2 (a local Dinov2Model folder) or weight: 0")
        return self


class AETrainParams(Params):
    """Video DC-AE training (docs/recipe.md §2): phase 1 L1 + perceptual, phase 2 + adversarial."""

    frames: int = Field(ge=1, description="frames per training window")
    crop: int = Field(ge=8, description="square crop side of a training window, px")
    short_side: int | None = Field(
        ge=8, description="resize clips to this short side before cropping; null: native size"
    )
    batch_size: int = Field(ge=1, description="windows per step per process")
    seed: int = Field(ge=0, description="seeds init, window sampling and the discriminator")
    device: Literal["cpu", "cuda"] = Field(description="where to train")
    precision: Literal["fp32", "bf16"] = Field(description="bf16: autocast matmuls and convs")
    lr: float = Field(gt=0.0, description="AdamW learning rate of the AE (paper 5e-5)")
    betas: tuple[float, float] = Field(description="AdamW betas (paper 0.9, 0.999)")
    eps: float = Field(gt=0.0, description="AdamW epsilon (paper 1e-15)")
    weight_decay: float = Field(ge=0.0, description="AdamW weight decay (paper 0)")
    grad_clip: float = Field(gt=0.0, description="max global gradient norm (paper 1)")
    ema_decay: float | None = Field(
        ge=0.0, lt=1.0,
        description="EMA of the weights, exported instead of the raw ones; null: off",
    )
    warmup_steps: int = Field(ge=0, description="linear learning-rate warm-up, steps")
    lr_schedule: Literal["constant", "cosine"] = Field(
        description="after warm-up: constant (paper), or cosine decay to 0 at the last step"
    )
    phase1_steps: int = Field(ge=0, description="steps of L1 + perceptual")
    phase2_steps: int = Field(ge=0, description="further steps with the adversarial loss")
    perceptual: PerceptualParams
    adversarial: AdversarialParams
    distill: DistillParams
    log_every: int = Field(ge=1, description="steps between logged metrics")
    checkpoint_every: int = Field(ge=1, description="steps between resumable checkpoints")
    prefetch_ahead: int = Field(ge=1, description="steps whose windows are decoded in "
                                "advance, each by its own thread (osora.train.prefetch)")
    clip_cache_mib: float = Field(
        ge=0.0, description="per process: decoded clips kept in memory, least recently used "
        "evicted; a clip that fits is decoded whole once, a larger one (all at 0) up to each "
        "window's end per step (osora.train.clip_windows)")

    @model_validator(mode="after")
    def _some_steps(self) -> "AETrainParams":
        if self.phase1_steps + self.phase2_steps == 0:
            raise ValueError("phase1_steps + phase2_steps must be > 0")
        return self


# Tiled encode/decode: the dataclass osora.models.tiling takes (null sizes: no tiling along
# that axis), its fields documented there.
TileParams = params_of(TileSpec)


class AEEvalParams(Params):
    """Reconstruction metrics on held-out clips (the columns of docs/recipe.md Table 1)."""

    frames: int = Field(ge=1, description="frames of each clip evaluated, from its start")
    short_side: int | None = Field(
        ge=8, description="resize clips to this short side; null: native"
    )
    max_clips: int = Field(ge=1, description="evaluate at most this many held-out clips")
    device: Literal["cpu", "cuda"]
    lpips_trunk: str | None = Field(description="VGG16 weights for the LPIPS column; null: omit")
    lpips_heads: str | None = Field(description="LPIPS linear heads; null: omit the column")
    tile: TileParams


class AutoencoderChoice(Params):
    """Which AE the latent stages use: the DC-AE trained by `ae_train`, or pretrained weights."""

    kind: Literal["dcae", "hunyuan_vae"] = Field(description="architecture")
    weights: str | None = Field(
        description="pretrained checkpoint (original naming for hunyuan_vae); null: the DC-AE "
        "that ae_train produced"
    )
    dit_patch: int = Field(
        ge=1, description="the DiT's spatial patch side on this AE's latents (patches are "
        "1 × p × p): latent buckets are "
        "multiples of spatial_down × dit_patch, and D_token counts it (Open-Sora 2.0: 2 on "
        "the HunyuanVideo VAE, 1 on the DC-AE)"
    )

    @model_validator(mode="after")
    def _hunyuan_needs_weights(self) -> "AutoencoderChoice":
        if self.kind == "hunyuan_vae" and not self.weights:
            raise ValueError("kind hunyuan_vae needs weights: the released VAE checkpoint path")
        return self


class LatentSetParams(Params):
    """One set of DiT training latents: a pyramid level's clips at one bucket resolution (the
    paper trains stages 1–2 on 256px latents and stage 3 on 768px ones of a smaller level)."""

    level: str = Field(min_length=1, description="pyramid level whose clips are encoded")
    resolution: int = Field(ge=8, description="bucket area ≈ resolution², aspect ratio kept, px")
    frames: list[PositiveInt] = Field(
        min_length=1, description="allowed bucket frame counts; each must fit the AE "
        "(non-causal k·td, causal 1 + k·td); a clip takes the largest ≤ its own. 1 is the "
        "image bucket: images go there and only there (a set without 1 sets them aside)"
    )
    aspect_ratios: list[str] | None = Field(
        description="W:H ratios a clip snaps to (the nearest on a log scale); null: each "
        "clip keeps its own"
    )
    min_area: float = Field(ge=0, le=1, description="a clip with fewer pixels than this "
                            "fraction of its bucket's is quarantined as too small (ref 0.8)")

    @model_validator(mode="after")
    def _frames_once(self) -> "LatentSetParams":
        repeated = sorted({f for f in self.frames if self.frames.count(f) > 1})
        if repeated:
            raise ValueError(f"frames lists {repeated} more than once; list each count once")
        for ratio in self.aspect_ratios or ():
            parse_ratio(ratio)
        return self


class LatentsParams(Params):
    """The latent precompute (stage `latents`): each named set's clips encoded once, at their
    bucket sizes (osora.train.buckets), into the table `latents_<set>`, so DiT training need not
    run the AE. A DiT stage names the set it trains on (params/dit.yaml train.stages.*.latents)."""

    sets: dict[str, LatentSetParams] = Field(
        min_length=1, description="set name → level, resolution and frame counts; one table "
        "latents_<name> each"
    )
    device: Literal["cpu", "cuda"] = Field(description="where the AE encodes")
    precision: Literal["fp32", "bf16"] = Field(description="bf16: autocast the encoder")
    storage_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        description="dtype of the stored latent bytes"
    )
    tile: TileParams = Field(description="tiled encoding; null sizes: one pass per clip")


class AEParams(Params):
    dcae: DCAEParams
    split: SplitParams
    train: AETrainParams
    eval: AEEvalParams
    autoencoder: AutoencoderChoice
    latents: LatentsParams
