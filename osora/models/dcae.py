"""Video DC-AE: the deep-compression video autoencoder of Open-Sora 2.0 (docs/recipe.md §2).

A deterministic (no KL), non-causal 3D-conv autoencoder that compresses a video 4× in time and
32× in space into `latent_channels` channels: (B, 3, T, H, W) → (B, c, T/4, H/32, W/32).

Encoder: conv_in, then one stage per width. Stage i runs `encoder_depths[i]` blocks at width
`widths[i]` — residual conv blocks ("res") or EfficientViT blocks ("vit": multi-scale ReLU
linear attention, then a GLU inverted-bottleneck conv MLP) — and, except for the last stage,
ends in a down block to `widths[i + 1]`: a strided 3×3×3 conv (space ×2, and time ×2 where
`temporal_down[i]`) plus a non-parametric shortcut, pixel-unshuffle of space/time into channels
then averaging over channel groups. With 6 stages that is 5 spatial halvings (32×) and, in the
paper configs, 2 temporal halvings at the last two of them (stages 3 and 4: 4×). conv_out maps
to the latent channels, its shortcut again averaging channel groups.

Decoder, the mirror: conv_in (shortcut: channel duplication), then stages from the deepest; each
but the deepest starts with an up block from `widths[i + 1]` to `widths[i]`: nearest-neighbour
upsampling then a 3×3×3 conv, plus the non-parametric inverse shortcut, channel duplication
(repeat_interleave) then pixel-shuffle of channels back into space/time. Then RMS norm, ReLU and
conv_out to RGB.

Time: non-causal, zero-padded 3D convs; T must be a multiple of 4 (each latent frame covers 4
frames, no extra first frame) or exactly 1 (an image: the temporal halvings are skipped while
the time axis has length 1, as in the reference). Consequently a latent with one frame decodes
to one frame.

Reference: hpcaitech/Open-Sora v2 `opensora/models/dc_ae` (after mit-han-lab/efficientvit's
DC-AE), config `dc-ae-f32t4c128`. The module layout follows it block for block, so a reference
state dict maps here by renaming keys only:
  encoder.project_in.conv → encoder.conv_in;  encoder.project_out.main.op_list.0.conv →
  encoder.conv_out;  decoder.project_in.main.conv → decoder.conv_in;  decoder.project_out.op_list.0
  → decoder.norm_out;  decoder.project_out.op_list.2.conv → decoder.conv_out;
  stages.{i}.op_list.{j} → stages.{i}.{j}, and inside a block: main.conv1.conv → conv1,
  main.conv2.conv → conv2, main.conv2.norm → norm (res); context_module.main.{qkv,proj}.conv →
  attn.{qkv,proj}, context_module.main.aggreg → attn.aggreg, context_module.main.proj.norm →
  attn.norm, local_module.main.{inverted,depth,point}_conv.conv → mlp.{inverted,depth,point}_conv,
  local_module.main.point_conv.norm → mlp.norm (vit); down block main.conv → conv; up block
  main.conv.conv → conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from osora.models.dcae_config import DCAEConfig
from osora.models.layers import ChannelRMSNorm

# Open-Sora 2.0's Video DC-AE (`dc-ae-f32t4c128`): encoder 220M, decoder 239M parameters.
DCAE_F32T4C128 = DCAEConfig(latent_channels=128, scaling_factor=0.493)
# Its 256-channel sibling (`dc-ae-f32t4c256`; reference scaling factor 0.46505).
DCAE_F32T4C256 = DCAEConfig(latent_channels=256, scaling_factor=0.46505)
# A CPU-sized model with the same structure (6 stages, 32× space, 4× time; res blocks in
# stages 1-2, EfficientViT blocks in 3-5) for tests and CI: ~0.38M parameters; 1×3×32×256×256
# forward + backward in ~3.5 s on 2 CPU cores. Stage 0 has no blocks: full-resolution 3D convs
# cost the most.
DCAE_TINY = DCAEConfig(
    latent_channels=16,
    widths=(4, 8, 16, 32, 32, 32),
    encoder_depths=(0, 1, 1, 1, 1, 1),
    decoder_depths=(0, 1, 1, 1, 1, 1),
    head_dim=8,
    mlp_ratio=2.0,
)


# --------------------------------------------------------------------------------------------
# Parameter-free shortcuts: space/time ↔ channels


def space_time_to_channels(x: torch.Tensor, ft: int, fs: int) -> torch.Tensor:
    """3D pixel-unshuffle: (B, C, T, H, W) → (B, C·ft·fs·fs, T/ft, H/fs, W/fs).

    Output channel c·ft·fs² + i·fs² + j·fs + k holds input (c, t·ft + i, h·fs + j, w·fs + k)
    (with ft = 1 this is torch's pixel_unshuffle per frame).
    """
    return rearrange(x, "b c (t i) (h j) (w k) -> b (c i j k) t h w", i=ft, j=fs, k=fs)


def channels_to_space_time(x: torch.Tensor, ft: int, fs: int) -> torch.Tensor:
    """3D pixel-shuffle, the inverse: (B, C·ft·fs·fs, T, H, W) → (B, C, T·ft, H·fs, W·fs)."""
    return rearrange(x, "b (c i j k) t h w -> b c (t i) (h j) (w k)", i=ft, j=fs, k=fs)


def unshuffle_average(x: torch.Tensor, out_channels: int, ft: int, fs: int) -> torch.Tensor:
    """Down-block shortcut: pixel-unshuffle then the mean over groups of consecutive channels.

    (B, C, T, H, W) → (B, out_channels, T/ft, H/fs, W/fs).
    """
    x = space_time_to_channels(x, ft, fs)  # (B, C·ft·fs², T', H', W')
    x = rearrange(x, "b (c g) t h w -> b c g t h w", c=out_channels)
    return x.mean(dim=2)  # (B, out_channels, T', H', W')


def duplicate_shuffle(x: torch.Tensor, out_channels: int, ft: int, fs: int) -> torch.Tensor:
    """Up-block shortcut: repeat each channel, then pixel-shuffle the copies into space/time.

    (B, C, T, H, W) → (B, out_channels, T·ft, H·fs, W·fs).
    """
    repeats = out_channels * ft * fs * fs // x.shape[1]
    x = x.repeat_interleave(repeats, dim=1)  # (B, out_channels·ft·fs², T, H, W)
    return channels_to_space_time(x, ft, fs)  # (B, out_channels, T·ft, H·fs, W·fs)


def upsample_nearest(x: torch.Tensor, ft: int, fs: int) -> torch.Tensor:
    """Nearest-neighbour upsampling (B, C, T, H, W) → (B, C, T·ft, H·fs, W·fs).

    Interpolates channel chunks of < 2³¹ output elements each: some kernels index with int32.
    """
    out_numel = x.numel() * ft * fs * fs
    chunks = max(1, math.ceil(out_numel / (2**31 - 1)))
    if chunks == 1 or x.shape[1] < 2:
        return F.interpolate(x, scale_factor=(ft, fs, fs), mode="nearest")
    parts = x.chunk(min(chunks, x.shape[1]), dim=1)
    return torch.cat(
        [F.interpolate(p, scale_factor=(ft, fs, fs), mode="nearest") for p in parts], 1
    )


# --------------------------------------------------------------------------------------------
# Attention


def relu_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-15
) -> torch.Tensor:
    """ReLU linear attention, channels first: q, k, v (B, n, d, N) → (B, n, d, N).

    out[:, :, :, i] = Σ_j v_j · (relu(k_j) · relu(q_i)) / (Σ_j relu(k_j) · relu(q_i) + eps),
    computed in O(N·d²) as (v k^T) q, in float32 (the normaliser cancels poorly in bf16).
    """
    dtype = q.dtype
    work = torch.promote_types(dtype, torch.float32)  # float32 at least; float64 stays
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = F.relu(q.to(work)), F.relu(k.to(work)), v.to(work)
        v = F.pad(v, (0, 0, 0, 1), value=1.0)  # (B, n, d+1, N): last row sums the weights
        vk = v @ k.transpose(-1, -2)  # (B, n, d+1, d)
        out = vk @ q  # (B, n, d+1, N)
        out = out[:, :, :-1] / (out[:, :, -1:] + eps)  # (B, n, d, N)
    return out.to(dtype)


def conv3d(
    cin: int, cout: int, kernel: int = 3, stride=1, bias: bool = True, groups: int = 1
) -> nn.Conv3d:
    """A non-causal 3D conv with 'same' zero padding (stride 2 halves even sizes)."""
    return nn.Conv3d(
        cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias, groups=groups
    )


# --------------------------------------------------------------------------------------------
# Blocks


class ResBlock(nn.Module):
    """x + norm(conv2(silu(conv1(x)))), 3×3×3 convs at constant width."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.conv1 = conv3d(width, width, bias=True)
        self.conv2 = conv3d(width, width, bias=False)
        self.norm = ChannelRMSNorm(width, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(x))  # (B, C, T, H, W)
        return x + self.norm(self.conv2(h))


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention (EfficientViT) over all T·H·W positions.

    q/k/v come from a 1×1×1 conv; each scale s adds a second q/k/v set aggregated from the first
    by a depthwise s×s×s conv and a per-head grouped 1×1×1 conv. Every set attends on its own;
    the heads are concatenated and projected back to the width, then RMS-normed.
    """

    def __init__(self, width: int, head_dim: int, scales: tuple[int, ...], eps: float):
        super().__init__()
        self.head_dim = head_dim
        heads = width // head_dim
        inner = heads * head_dim
        self.qkv = conv3d(width, 3 * inner, kernel=1, bias=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                conv3d(3 * inner, 3 * inner, kernel=s, bias=False, groups=3 * inner),
                conv3d(3 * inner, 3 * inner, kernel=1, bias=False, groups=3 * heads),
            )
            for s in scales
        )
        self.proj = conv3d(inner * (1 + len(scales)), width, kernel=1, bias=False)
        self.norm = ChannelRMSNorm(width, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, H, W = x.shape[2:]
        qkv = self.qkv(x)  # (B, 3I, T, H, W)
        qkv = torch.cat([qkv] + [agg(qkv) for agg in self.aggreg], dim=1)  # (B, 3I·(1+S), T, H, W)
        # channels are laid out head by head, each head as [q (d), k (d), v (d)]
        qkv = rearrange(qkv, "b (n c) t h w -> b n c (t h w)", c=3 * self.head_dim)
        q, k, v = qkv.chunk(3, dim=2)  # each (B, n, d, N)
        out = relu_linear_attention(q, k, v)  # (B, n, d, N)
        out = rearrange(out, "b n d (t h w) -> b (n d) t h w", t=T, h=H, w=W)
        return self.norm(self.proj(out))  # (B, C, T, H, W)


class GLUMBConv(nn.Module):
    """GLU inverted bottleneck: 1×1×1 expand (SiLU) → depthwise 3×3×3 → gate → 1×1×1 project."""

    def __init__(self, width: int, ratio: float, eps: float):
        super().__init__()
        hidden = round(width * ratio)
        self.inverted_conv = conv3d(width, 2 * hidden, kernel=1, bias=True)
        self.depth_conv = conv3d(2 * hidden, 2 * hidden, kernel=3, bias=True, groups=2 * hidden)
        self.point_conv = conv3d(hidden, width, kernel=1, bias=False)
        self.norm = ChannelRMSNorm(width, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depth_conv(F.silu(self.inverted_conv(x)))  # (B, 2M, T, H, W)
        h, gate = h.chunk(2, dim=1)  # each (B, M, T, H, W)
        return self.norm(self.point_conv(h * F.silu(gate)))  # (B, C, T, H, W)


class EfficientViTBlock(nn.Module):
    """x + attn(x), then + mlp(x): global context from linear attention, local from convs."""

    def __init__(self, width: int, cfg: DCAEConfig):
        super().__init__()
        self.attn = LiteMLA(width, cfg.head_dim, cfg.attn_scales, cfg.norm_eps)
        self.mlp = GLUMBConv(width, cfg.mlp_ratio, cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


def _block(kind: str, width: int, cfg: DCAEConfig) -> nn.Module:
    return ResBlock(width, cfg.norm_eps) if kind == "res" else EfficientViTBlock(width, cfg)


class DownBlock(nn.Module):
    """Strided 3×3×3 conv (space ×½, time ×½ if temporal) + unshuffle-average shortcut."""

    def __init__(self, cin: int, cout: int, temporal: bool):
        super().__init__()
        self.cout = cout
        self.temporal = temporal
        self.conv = conv3d(cin, cout, stride=(2 if temporal else 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft = 2 if self.temporal and x.shape[2] > 1 else 1  # a single frame (image) keeps T = 1
        return self.conv(x) + unshuffle_average(x, self.cout, ft, 2)  # (B, C', T/ft, H/2, W/2)


class UpBlock(nn.Module):
    """Nearest upsampling + 3×3×3 conv (space ×2, time ×2 if temporal) + duplicate-shuffle."""

    def __init__(self, cin: int, cout: int, temporal: bool):
        super().__init__()
        self.cout = cout
        self.temporal = temporal
        self.conv = conv3d(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft = 2 if self.temporal and x.shape[2] > 1 else 1  # a single frame (image) keeps T = 1
        h = self.conv(upsample_nearest(x, ft, 2))  # (B, C', T·ft, 2H, 2W)
        return h + duplicate_shuffle(x, self.cout, ft, 2)


# --------------------------------------------------------------------------------------------
# Encoder, decoder, autoencoder


class Encoder(nn.Module):
    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        w = cfg.widths
        self.latent_channels = cfg.latent_channels
        self.conv_in = conv3d(cfg.in_channels, w[0])
        self.stages = nn.ModuleList()
        for i, (width, depth, kind) in enumerate(zip(w, cfg.encoder_depths, cfg.block_types)):
            layers = [_block(kind, width, cfg) for _ in range(depth)]
            if i < len(w) - 1:
                layers.append(DownBlock(width, w[i + 1], cfg.temporal_down[i]))
            self.stages.append(nn.Sequential(*layers))
        self.conv_out = conv3d(w[-1], cfg.latent_channels)

    def forward(
        self, x: torch.Tensor, features_at: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x → latent z; with `features_at` = i, (z, output of stage i) from the same pass."""
        x = self.conv_in(x)  # (B, C0, T, H, W)
        features = None
        for i, stage in enumerate(self.stages):
            x = stage(x)  # (B, C_{i+1}, T', H/2, W/2) after each down block
            if i == features_at:
                features = x
        z = self.conv_out(x) + unshuffle_average(x, self.latent_channels, 1, 1)  # (B, c, t, h, w)
        return z if features_at is None else (z, features)


class Decoder(nn.Module):
    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        w = cfg.widths
        self.top_width = w[-1]
        self.conv_in = conv3d(cfg.latent_channels, w[-1])
        self.stages = nn.ModuleList()  # stages[i] works at widths[i]; run from the deepest
        for i, (width, depth, kind) in enumerate(zip(w, cfg.decoder_depths, cfg.block_types)):
            layers = [UpBlock(w[i + 1], width, cfg.temporal_down[i])] if i < len(w) - 1 else []
            layers += [_block(kind, width, cfg) for _ in range(depth)]
            self.stages.append(nn.Sequential(*layers))
        self.norm_out = ChannelRMSNorm(w[0], cfg.norm_eps)
        self.conv_out = conv3d(w[0], cfg.in_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z) + duplicate_shuffle(z, self.top_width, 1, 1)  # (B, C_last, t, h, w)
        for stage in reversed(self.stages):
            x = stage(x)  # (B, C_{i-1}, T', 2H, 2W) after each up block
        return self.conv_out(F.relu(self.norm_out(x)))  # (B, 3, T, H, W)


class DCAE(nn.Module):
    """Video DC-AE: encode (B, 3, T, H, W) → (B, c, T/4, H/32, W/32), decode back.

    Deterministic (no KL). encode returns the raw latent; the diffusion model works on
    `z / scaling_factor` and decode expects the raw latent again (`decode(z_dit * scaling_factor)`).
    """

    causal = False

    def __init__(self, config: DCAEConfig = DCAE_TINY):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.init_weights()

    @property
    def spatial_down(self) -> int:
        return 2 ** (len(self.config.widths) - 1)

    @property
    def temporal_down(self) -> int:
        return 2 ** sum(self.config.temporal_down)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    def to_dit(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scaling_factor  # the reference divides

    def from_dit(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scaling_factor

    def init_weights(self) -> None:
        """The reference init: every conv weight and every norm weight ~ N(0, 0.02) truncated at
        ±2, biases 0. Norm weights near 0 make each residual branch start near 0, so the
        untrained model is close to its parameter-free shortcut path."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.trunc_normal_(p, std=0.02)

    def latent_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T, H, W) of a video → (t, h, w) of its latent; ValueError if the AE cannot take it."""
        s, ts = self.spatial_down, self.temporal_down
        bad_t = frames != 1 and (frames < 1 or frames % ts)
        if bad_t or height < s or width < s or height % s or width % s:
            ok_t = 1 if frames < ts else frames // ts * ts
            raise ValueError(
                f"DCAE: cannot encode {frames} frames of {height}×{width}: needs a frame count "
                f"that is a multiple of {ts} (or 1, an image) and height and width that are "
                f"multiples of {s}. Fix: crop or pad to {ok_t} frames of "
                f"{max(s, height // s * s)}×{max(s, width // s * s)}."
            )
        return (1 if frames == 1 else frames // ts, height // s, width // s)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] → raw latent (B, c, T/4, H/32, W/32)."""
        c = self.config.in_channels
        if x.ndim != 5 or x.shape[1] != c:
            raise ValueError(
                f"DCAE.encode: expected a video batch (B, {c}, T, H, W), got shape "
                f"{tuple(x.shape)}; add a batch dim with x[None] / a time dim with x[:, :, None]"
            )
        self.latent_size(*x.shape[2:])
        return self.encoder(x)

    def encode_with_features(
        self, x: torch.Tensor, stage: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent, output of encoder stage `stage`) from one forward pass: the latent is
        `encode(x)` exactly, the features what latent distillation aligns (osora.models.dinov2).

        `stage` is 0-based; the "third stage" of the paper is 2. Stage i < last ends with its
        down block, so its output has widths[i + 1] channels at H / 2^(i+1), W / 2^(i+1), time
        halved by every temporal down block up to i (the last stage: widths[-1] at the latent
        grid, before conv_out). For the paper config stage 2 gives (B, 512, T, H/8, W/8).
        """
        n = len(self.encoder.stages)
        if not 0 <= stage < n:
            raise ValueError(
                f"DCAE.encode_with_features: stage must be in [0, {n - 1}], got {stage}"
            )
        c = self.config.in_channels
        if x.ndim != 5 or x.shape[1] != c:
            raise ValueError(
                f"DCAE.encode_with_features: expected a video batch (B, {c}, T, H, W), got shape "
                f"{tuple(x.shape)}"
            )
        self.latent_size(*x.shape[2:])
        return self.encoder(x, features_at=stage)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent (B, c, t, h, w) → video (B, 3, 4t, 32h, 32w) (one frame if t == 1)."""
        c = self.config.latent_channels
        if z.ndim != 5 or z.shape[1] != c:
            raise ValueError(
                f"DCAE.decode: expected a latent (B, {c}, t, h, w), got shape {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
