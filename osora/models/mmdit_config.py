"""MMDiTConfig, the MMDiT's architecture: plain Python (no torch), so params/dit.yaml `model`
(osora.config.dit) takes it as its type without loading torch."""

from dataclasses import dataclass

ROPE_LAYOUTS = ("interleaved", "rotate_half")  # osora.models.rope.LAYOUTS (equal, tested)


@dataclass(frozen=True)
class MMDiTConfig:
    """The MMDiT architecture; also the type of params/dit.yaml `model` (osora.config.dit),
    where every field is stated and these checks are its validation."""

    __pydantic_config__ = {"extra": "forbid"}  # as params: an unknown key is an error

    in_channels: int = 16  # latent channels C (HunyuanVideo VAE 16, Video DC-AE 128)
    patch_size: int = 2  # spatial patch p (temporal patch 1): 2 for HunyuanVAE, 1 for DC-AE
    # channels of the image/video condition [mask, mask·latent] = C + 1; 0: no condition input
    cond_channels: int = 0
    hidden_size: int = 3072
    num_heads: int = 24
    depth_double: int = 19  # double-stream blocks (paper 19)
    depth_single: int = 38  # single-stream blocks (paper 38)
    mlp_ratio: float = 4.0
    text_dim: int = 4096  # features of the text sequence (T5-XXL 4096)
    vec_dim: int = 768  # features of the pooled text vector (CLIP-L 768)
    axes_dims: tuple[int, ...] = (16, 56, 56)  # RoPE dims per (t, h, w) axis; sum = head_dim
    theta: float = 10_000.0  # RoPE base
    qkv_bias: bool = True
    guidance_embed: bool = False  # FLUX-dev's distilled-guidance embedding; Open-Sora v2: False
    rope_layout: str = "rotate_half"  # the released Open-Sora v2 weights'; FLUX: "interleaved"

    def __post_init__(self):
        object.__setattr__(self, "axes_dims", tuple(int(d) for d in self.axes_dims))
        for name in ("in_channels", "hidden_size", "num_heads", "text_dim", "vec_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"MMDiTConfig: {name} must be ≥ 1, got {getattr(self, name)}")
        if self.patch_size not in (1, 2):
            raise ValueError(f"MMDiTConfig: patch_size must be 1 or 2, got {self.patch_size}")
        if self.cond_channels < 0 or self.depth_double < 0 or self.depth_single < 0:
            raise ValueError("MMDiTConfig: cond_channels and depths must be ≥ 0")
        if self.mlp_ratio <= 0 or self.theta <= 0:
            raise ValueError(f"MMDiTConfig: mlp_ratio and theta must be > 0, got "
                             f"{self.mlp_ratio}, {self.theta}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"MMDiTConfig: hidden_size {self.hidden_size} is not divisible by num_heads "
                f"{self.num_heads}"
            )
        if len(self.axes_dims) != 3 or any(d < 2 or d % 2 for d in self.axes_dims):
            raise ValueError(
                f"MMDiTConfig: axes_dims must be 3 even dims (t, h, w), got {self.axes_dims}"
            )
        if sum(self.axes_dims) != self.head_dim:
            raise ValueError(
                f"MMDiTConfig: axes_dims {self.axes_dims} sum to {sum(self.axes_dims)}, but "
                f"head_dim = hidden_size / num_heads = {self.head_dim}"
            )
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(
                f"MMDiTConfig: rope_layout {self.rope_layout!r} is unknown; use one of "
                f"{ROPE_LAYOUTS}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def latent_features(self) -> int:
        """Features per token from the noisy latent: C·p² (also the output features)."""
        return self.in_channels * self.patch_size**2

    @property
    def in_features(self) -> int:
        """img_in's input features: (C + cond_channels)·p²."""
        return (self.in_channels + self.cond_channels) * self.patch_size**2
