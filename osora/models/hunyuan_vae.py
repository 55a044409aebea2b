"""HunyuanVideo's causal 3D VAE, the AE of the released Open-Sora 2.0 11B model (docs/recipe.md §2).

A KL autoencoder that compresses a video 4× in time and 8× in space into 16 channels:
(B, 3, T, H, W) → (B, 16, 1 + (T−1)/4, H/8, W/8); T must be 1 + 4k (129 → 33; 1 = an image).

Every conv is a *causal* Conv3d: the input is padded by k−1 frames on the past side only (and
k//2 pixels on each side in space), replicating the edge values, as the reference does. So the
first frame is encoded alone and latent frame j ≥ 1 sees frames ≤ 4j only.

Encoder: conv_in, then one down block per width (`layers_per_block` ResNet blocks of
GroupNorm → SiLU → causal conv, twice, plus a 1×1×1 shortcut conv where the width changes), each
but the last ending in a strided causal conv (the reference's time-compression-4 rule: space ×½
in the first log2(8) = 3 blocks, time ×½ in the log2(4) = 2 blocks before the last, i.e. blocks
1 and 2). Mid block: ResNet, single-head self-attention over all (t, h, w) tokens with a
frame-causal mask (a token sees its own and earlier latent frames), ResNet. Then GroupNorm, SiLU
and conv_out to 2·16 channels; a 1×1×1 `quant_conv` gives the moments (mean, logvar).

Decoder: 1×1×1 `post_quant_conv`, conv_in, the same mid block, then up blocks from the deepest
width with `layers_per_block + 1` ResNet blocks each and an upsampler (nearest upsampling, then a
causal conv) — space ×2 in the first 3 up blocks, time ×2 in up blocks 1 and 2, where the first
frame is upsampled in space only (so t latent frames give 1 + 2(t−1) frames) — then GroupNorm,
SiLU, conv_out to RGB.

Normalisation and causality: the reference GroupNorm pools statistics over the whole clip
(time included), so the reference encoder is causal in its convs and attention but its norm
statistics see future frames. `frame_norm=True` takes GroupNorm statistics per frame instead,
which makes the model strictly causal (same parameters, different numbers); the default follows
the reference so released weights reproduce it.

`encode` returns the posterior mean (deterministic; `sample=True` draws from the posterior),
unscaled, and `decode` takes the raw latent: as for every osora AE, the scale is applied on the
DiT side. Note the direction: the HunyuanVideo / Open-Sora v2 reference *multiplies* —
z_dit = 0.476986 · z in encode, z = z_dit / 0.476986 in decode (shift 0) — whereas the Video
DC-AE reference divides by its factor.

Reference: Tencent/HunyuanVideo `hyvideo/vae/` (autoencoder_kl_causal_3d.py, vae.py,
unet_causal_3d_blocks.py) and hpcaitech/Open-Sora v2 `opensora/models/hunyuan_vae/`. The module
tree keeps the reference names (`encoder.down_blocks.0.resnets.0.conv1.conv.weight`, ...), so
the importer (osora.weights.hunyuan_vae) maps keys one to one; the one rename is the attention
output projection `to_out.0` → `to_out`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from osora.models.autoencoder import latent_frames


@dataclass(frozen=True)
class HunyuanVAEConfig:
    in_channels: int = 3
    latent_channels: int = 16
    widths: tuple[int, ...] = (128, 256, 512, 512)  # reference `block_out_channels`
    layers_per_block: int = 2  # ResNet blocks per encoder block; the decoder has one more
    norm_groups: int = 32
    norm_eps: float = 1e-6
    spatial_down: int = 8  # 2^k, k ≤ len(widths): space ×½ in the first k blocks
    temporal_down: int = 4  # 2^k, k < len(widths): time ×½ in the k blocks before the last
    mid_attention: bool = True
    frame_norm: bool = False  # GroupNorm per frame (strictly causal) instead of per clip (ref.)
    scaling_factor: float = 0.476986

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths))
        n = len(self.widths)
        if n < 1 or min(self.widths) < 1 or self.in_channels < 1 or self.latent_channels < 1:
            raise ValueError(
                f"HunyuanVAEConfig: channel counts must be ≥ 1 and widths non-empty, got "
                f"in_channels={self.in_channels}, latent_channels={self.latent_channels}, "
                f"widths={self.widths}"
            )
        if self.layers_per_block < 1:
            raise ValueError(
                f"HunyuanVAEConfig: layers_per_block must be ≥ 1, got {self.layers_per_block}"
            )
        for w in self.widths:
            if w % self.norm_groups:
                raise ValueError(
                    f"HunyuanVAEConfig: width {w} is not a multiple of norm_groups "
                    f"{self.norm_groups}; choose widths divisible by the group count"
                )
        for name, value, most in (("spatial_down", self.spatial_down, n),
                                  ("temporal_down", self.temporal_down, n - 1)):
            k = int(math.log2(value)) if value >= 1 else -1
            if value < 1 or 2**k != value or k > most:
                raise ValueError(
                    f"HunyuanVAEConfig: {name} must be a power of 2 up to 2^{most} for "
                    f"{n} blocks, got {value}"
                )

    def block_factors(self) -> list[tuple[int, int]]:
        """(time, space) factor of each encoder down block / decoder up block, in order.

        The reference's time-compression-4 rule: space in blocks i < log2(sd); time in the
        log2(td) blocks just before the last. Paper config: (1, 2), (2, 2), (2, 2), (1, 1).
        """
        n = len(self.widths)
        ks, kt = int(math.log2(self.spatial_down)), int(math.log2(self.temporal_down))
        return [(2 if n - 1 - kt <= i < n - 1 else 1, 2 if i < ks else 1) for i in range(n)]


# The released HunyuanVideo VAE (config.json of hunyuan-video-t2v-720p/vae): ~246M parameters.
HUNYUAN_VAE = HunyuanVAEConfig()
# A CPU-sized model with the same geometry (4 blocks, 4×8×8, 16 channels) for tests and CI.
HUNYUAN_VAE_TINY = HunyuanVAEConfig(widths=(8, 16, 16, 16), layers_per_block=1, norm_groups=4)


# --------------------------------------------------------------------------------------------
# Layers


class CausalConv3d(nn.Module):
    """Conv3d padded k−1 frames on the past side only (k//2 px each side in space), replicate.

    (B, Cin, T, H, W) → (B, Cout, ⌊(T−1)/st⌋ + 1, H/ss, W/ss); the wrapped conv is `.conv`,
    as in the reference state dict.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 3,
                 stride: int | tuple[int, int, int] = 1, bias: bool = True):
        super().__init__()
        k = kernel_size
        self.padding = (k // 2, k // 2, k // 2, k // 2, k - 1, 0)  # (W, W, H, H, T past, T future)
        self.conv = nn.Conv3d(cin, cout, k, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding):
            x = F.pad(x, self.padding, mode="replicate")  # (B, C, T + k − 1, H + 2p, W + 2p)
        return self.conv(x)


class GroupNorm3d(nn.GroupNorm):
    """GroupNorm on (B, C, T, H, W): statistics over the clip (reference) or per frame."""

    def __init__(self, channels: int, groups: int, eps: float, per_frame: bool):
        super().__init__(groups, channels, eps=eps)
        self.per_frame = per_frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.per_frame:
            return super().forward(x)
        t = x.shape[2]
        y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", t=t)


class ResnetBlock(nn.Module):
    """x + conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))), with a 1×1×1 conv shortcut when cin ≠ cout."""

    def __init__(self, cin: int, cout: int, cfg: HunyuanVAEConfig):
        super().__init__()
        g, eps, pf = cfg.norm_groups, cfg.norm_eps, cfg.frame_norm
        self.norm1 = GroupNorm3d(cin, g, eps, pf)
        self.conv1 = CausalConv3d(cin, cout)
        self.norm2 = GroupNorm3d(cout, g, eps, pf)
        self.conv2 = CausalConv3d(cout, cout)
        self.conv_shortcut = CausalConv3d(cin, cout, kernel_size=1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, Cout, T, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


def frame_causal_mask(frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """(L, L) bool, True where query token i may attend to key j: frame(j) ≤ frame(i)."""
    frame = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)  # (L,)
    return frame[None, :] <= frame[:, None]


class Attention(nn.Module):
    """Single-head self-attention over (t, h, w) tokens, GroupNorm first, residual, causal in t.

    Names follow diffusers' `Attention` (group_norm, to_q, to_k, to_v; to_out is its to_out.0).
    Softmax in float32 at least (the reference upcasts).
    """

    def __init__(self, channels: int, cfg: HunyuanVAEConfig):
        super().__init__()
        self.group_norm = GroupNorm3d(channels, cfg.norm_groups, cfg.norm_eps, cfg.frame_norm)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        seq = rearrange(self.group_norm(x), "b c t h w -> b (t h w) c")  # (B, L, C)
        dtype = torch.promote_types(x.dtype, torch.float32)
        q, k, v = (proj(seq).to(dtype)[:, None] for proj in (self.to_q, self.to_k, self.to_v))
        mask = frame_causal_mask(t, h * w, device=x.device)  # (L, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[:, 0]  # (B, L, C)
        out = self.to_out(out.to(x.dtype))
        return x + rearrange(out, "b (t h w) c -> b c t h w", t=t, h=h, w=w)


class MidBlock(nn.Module):
    """ResNet, attention, ResNet at the deepest width."""

    def __init__(self, channels: int, cfg: HunyuanVAEConfig):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, cfg) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, cfg)] if cfg.mid_attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)  # (B, C, T, H, W)


class Downsample(nn.Module):
    """Strided causal 3×3×3 conv: T → ⌊(T−1)/ft⌋ + 1 (first frame alone), H, W → H/fs, W/fs."""

    def __init__(self, channels: int, ft: int, fs: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=(ft, fs, fs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest upsampling (the first frame in space only), then a causal 3×3×3 conv.

    (B, C, T, H, W) → (B, C, 1 + ft·(T−1), fs·H, fs·W).
    """

    def __init__(self, channels: int, ft: int, fs: int):
        super().__init__()
        self.ft, self.fs = ft, fs
        self.conv = CausalConv3d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = F.interpolate(x[:, :, :1], scale_factor=(1, self.fs, self.fs), mode="nearest")
        if x.shape[2] > 1:
            rest = F.interpolate(x[:, :, 1:], scale_factor=(self.ft, self.fs, self.fs),
                                 mode="nearest")  # (B, C, ft·(T−1), fs·H, fs·W)
            first = torch.cat([first, rest], dim=2)
        return self.conv(first)


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, ft: int, fs: int, cfg: HunyuanVAEConfig):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, cfg) for i in range(cfg.layers_per_block)
        )
        self.downsamplers = nn.ModuleList([Downsample(cout, ft, fs)] if ft * fs > 1 else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (*self.resnets, *self.downsamplers):
            x = layer(x)
        return x


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, ft: int, fs: int, cfg: HunyuanVAEConfig):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, cfg)
            for i in range(cfg.layers_per_block + 1)
        )
        self.upsamplers = nn.ModuleList([Upsample(cout, ft, fs)] if ft * fs > 1 else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (*self.resnets, *self.upsamplers):
            x = layer(x)
        return x


# --------------------------------------------------------------------------------------------
# Encoder, decoder, autoencoder


class Encoder(nn.Module):
    def __init__(self, cfg: HunyuanVAEConfig):
        super().__init__()
        w = cfg.widths
        self.conv_in = CausalConv3d(cfg.in_channels, w[0])
        self.down_blocks = nn.ModuleList(
            DownBlock(w[max(i - 1, 0)], w[i], ft, fs, cfg)
            for i, (ft, fs) in enumerate(cfg.block_factors())
        )
        self.mid_block = MidBlock(w[-1], cfg)
        self.conv_norm_out = GroupNorm3d(w[-1], cfg.norm_groups, cfg.norm_eps, cfg.frame_norm)
        self.conv_out = CausalConv3d(w[-1], 2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)  # (B, C0, T, H, W)
        for block in self.down_blocks:
            x = block(x)  # (B, Ci, T', H', W')
        x = self.mid_block(x)  # (B, C_last, t, h, w)
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # (B, 2c, t, h, w)


class Decoder(nn.Module):
    def __init__(self, cfg: HunyuanVAEConfig):
        super().__init__()
        w = cfg.widths[::-1]  # deepest first
        self.conv_in = CausalConv3d(cfg.latent_channels, w[0])
        self.mid_block = MidBlock(w[0], cfg)
        self.up_blocks = nn.ModuleList(
            UpBlock(w[max(i - 1, 0)], w[i], ft, fs, cfg)
            for i, (ft, fs) in enumerate(cfg.block_factors())
        )
        self.conv_norm_out = GroupNorm3d(w[-1], cfg.norm_groups, cfg.norm_eps, cfg.frame_norm)
        self.conv_out = CausalConv3d(w[-1], cfg.in_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))  # (B, C_last, t, h, w)
        for block in self.up_blocks:
            x = block(x)  # (B, Ci, T', H', W')
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # (B, 3, T, H, W)


class HunyuanVAE(nn.Module):
    """HunyuanVideo causal 3D VAE: (B, 3, 1 + 4k, H, W) ↔ (B, 16, 1 + k, H/8, W/8).

    encode returns the raw latent (posterior mean, or a sample with `sample=True`) and decode
    takes it back; the reference DiT works on `z * scaling_factor` (multiplied, see the module
    docstring), applied on the DiT side.
    """

    causal = True

    def __init__(self, config: HunyuanVAEConfig = HUNYUAN_VAE_TINY):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        c = config.latent_channels
        self.quant_conv = nn.Conv3d(2 * c, 2 * c, kernel_size=1)
        self.post_quant_conv = nn.Conv3d(c, c, kernel_size=1)

    @property
    def spatial_down(self) -> int:
        return self.config.spatial_down

    @property
    def temporal_down(self) -> int:
        return self.config.temporal_down

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    def to_dit(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scaling_factor  # the reference multiplies

    def from_dit(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scaling_factor

    def latent_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T, H, W) of a video → (t, h, w) of its latent; ValueError if the VAE cannot take it."""
        t = latent_frames(frames, self.temporal_down, causal=True)  # ValueError names valid T
        s = self.spatial_down
        if height < s or width < s or height % s or width % s:
            raise ValueError(
                f"HunyuanVAE: cannot encode {height}×{width} frames: height and width must be "
                f"multiples of {s}; crop or pad to {max(s, height // s * s)}×"
                f"{max(s, width // s * s)}"
            )
        return t, height // s, width // s

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) in [-1, 1] → posterior (mean, logvar), each (B, c, t, H/8, W/8).

        logvar is clamped to [−30, 20] as in the reference.
        """
        c = self.config.in_channels
        if x.ndim != 5 or x.shape[1] != c:
            raise ValueError(
                f"HunyuanVAE.encode: expected a video batch (B, {c}, T, H, W), got shape "
                f"{tuple(x.shape)}; add a batch dim with x[None] / a time dim with x[:, :, None]"
            )
        self.latent_size(*x.shape[2:])
        moments = self.quant_conv(self.encoder(x))  # (B, 2c, t, h, w)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, T, H, W) → raw latent (B, c, 1 + (T−1)/4, H/8, W/8): the mean, or a sample."""
        mean, logvar = self.encode_moments(x)
        if not sample:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device,
                            dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent (B, c, t, h, w) → video (B, 3, 1 + 4(t−1), 8h, 8w)."""
        c = self.config.latent_channels
        if z.ndim != 5 or z.shape[1] != c:
            raise ValueError(
                f"HunyuanVAE.decode: expected a latent (B, {c}, t, h, w), got shape "
                f"{tuple(z.shape)}"
            )
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
