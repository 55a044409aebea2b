"""MMDiT: the FLUX-style diffusion transformer of Open-Sora 2.0 (docs/recipe.md §3, §5).

A noisy latent video (B, C, T, H, W) is cut into 1×p×p patches, one token each, in row-major
(t, h, w) order. The T5 text sequence is projected to the hidden width and precedes the video
tokens. A conditioning vector `vec` = MLP(sinusoidal(1000·t)) + MLP(pooled CLIP) (+ MLP of the
guidance scale for a guidance-distilled FLUX-dev) drives adaLN modulation everywhere.

- `depth_double` double-stream blocks: text and video keep their own weights (adaLN with 6
  vectors per stream: shift/scale/gate before attention and before the MLP, QK RMS norm per head,
  qkv bias, GELU-tanh MLP), and attend jointly over [text; video].
- `depth_single` single-stream blocks over the concatenated sequence: one fused linear yields
  q, k, v and the MLP input, a second maps [attention; GELU-tanh(MLP)] back (3 adaLN vectors).
- final layer: LayerNorm, adaLN shift/scale, linear to C·p² per token; tokens → (B, C, T, H, W).
  Every LayerNorm + modulation pair is one fused op (osora.kernels.modulate), as are the QK
  RMS norm and RoPE: Triton on GPUs, their torch references elsewhere.

Attention runs 3D RoPE (osora/models/rope.py: text positions 0, video (t, h, w) grid
coordinates) and torch's scaled_dot_product_attention in each block's `attention` module
(osora/models/attention.py: the seam context parallelism swaps; it holds no weights). The model
predicts the flow velocity v = noise − data with t = 1 pure noise, so a sampler steps
x ← x + (t_next − t)·v from t = 1 to 0.

Image/video condition (`cond_channels` > 0): `cond` (B, C+1, T, H, W) = [mask, mask·latent] is
concatenated to the noisy latent along channels before patchify, so `img_in` sees (2C+1)·p²
features; the first C·p² columns are the latent's (FLUX's img_in), the rest the condition's, zero
at init. That equals the reference's separate zero-initialised `cond_in` projection added to
`img_in`. cond=None means a zero condition (t2v, or the 12.5% condition dropout).

Reference: black-forest-labs/flux `src/flux/model.py`, `src/flux/modules/layers.py`;
hpcaitech/Open-Sora v2 `opensora/models/mmdit/{model,layers,math}.py`, config
`configs/diffusion/inference/256px.py`. Parameter names follow FLUX's, so a FLUX state dict maps
here by renaming the QK-norm `.scale` to `.weight` (plus `convert_rope_layout` for this
project's rotate-half layout, and the img_in columns). An Open-Sora v2 checkpoint
(`fused_qkv=False`) additionally concatenates q_proj/k_proj/v_proj into `qkv` (double blocks),
q_proj/k_proj/v_mlp into `linear1` (single blocks), and `cond_in` into img_in's condition
columns (weights) and img_in's bias (bias sum).
"""

from __future__ import annotations

import functools
import math
import re

import torch
from einops import rearrange
from torch import nn

from osora.kernels import modulate as norm_modulate
from osora.models.attention import Attention
from osora.models.layers import RMSNorm
from osora.models.mmdit_config import MMDiTConfig
from osora.models.rope import (
    grid_positions,
    permute_head_rows,
    rope_freqs,
    rope_permutation,
)

TIME_EMBED_DIM = 256  # sinusoidal embedding width of t (and of the guidance scale), as FLUX


# Open-Sora 2.0's 11B MMDiT (reference `configs/diffusion/inference/256px.py`: FLUX-dev's shape,
# HunyuanVAE latents 16 ch, patch 2, cond_embed, no guidance embedding, Liger rotate-half RoPE):
# 11,891,387,456 parameters (double 6,456,794,624; single 5,380,488,704).
MMDIT_11B = MMDiTConfig(in_channels=16, patch_size=2, cond_channels=17)
# A CPU-sized model with the same structure for tests and CI: DCAE_TINY's 16 latent channels,
# patch 1, 0.25M parameters; forward + backward of a 2×16×4×8×8 latent with 16 text tokens takes
# ~0.3 s on 2 CPU cores. Set text_dim / vec_dim to the tiny text encoders' widths.
MMDIT_TINY = MMDiTConfig(
    in_channels=16,
    patch_size=1,
    cond_channels=17,
    hidden_size=64,
    num_heads=4,
    depth_double=1,
    depth_single=1,
    text_dim=32,
    vec_dim=32,
    axes_dims=(4, 6, 6),
)


# --------------------------------------------------------------------------------------------
# Pure functions


def timestep_embedding(
    t: torch.Tensor,
    dim: int = TIME_EMBED_DIM,
    max_period: float = 10_000.0,
    time_factor: float = 1000.0,
) -> torch.Tensor:
    """Sinusoidal embedding of t·time_factor (FLUX): (B,) → (B, dim) float32, [cos, sin]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (dim/2,)
    args = (time_factor * t.float())[:, None] * freqs[None]  # (B, dim/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2·(dim/2))
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb  # (B, dim)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, T, H, W) → tokens (B, T·(H/p)·(W/p), C·p²), features ordered (c, ph, pw) as the
    reference's `pack`."""
    return rearrange(x, "b c t (h ph) (w pw) -> b (t h w) (c ph pw)", ph=p, pw=p)


def unpatchify(x: torch.Tensor, t: int, h: int, w: int, p: int) -> torch.Tensor:
    """The inverse: (B, t·h·w, C·p²) → (B, C, t, h·p, w·p); t, h, w are token-grid sizes."""
    return rearrange(x, "b (t h w) (c ph pw) -> b c t (h ph) (w pw)", t=t, h=h, w=w, ph=p, pw=p)


# --------------------------------------------------------------------------------------------
# Modules


class MLPEmbedder(nn.Module):
    """Linear → SiLU → Linear: (B, in_dim) → (B, hidden)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class Modulation(nn.Module):
    """adaLN parameters from vec: (B, dim) → n tensors (B, 1, dim), in (shift, scale, gate)
    groups."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.n = n
        self.lin = nn.Linear(dim, n * dim)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.lin(nn.functional.silu(vec))[:, None, :]  # (B, 1, n·dim)
        return out.chunk(self.n, dim=-1)


class QKNorm(nn.Module):
    """RMS norm of q and k over head_dim, with separate learned scales (FLUX/SD3)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim, eps=1e-6)
        self.key_norm = RMSNorm(head_dim, eps=1e-6)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q).to(q.dtype), self.key_norm(k).to(k.dtype)


class SelfAttention(nn.Module):
    """One stream's attention weights: fused qkv, QK norm, output projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, dim) → q, k, v (B, H, N, D), q and k normalised."""
        qkv = self.qkv(x)  # (B, N, 3·H·D)
        q, k, v = rearrange(qkv, "b n (k h d) -> k b h n d", k=3, h=self.num_heads)
        q, k = self.norm(q, k)
        return q, k, v


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
    )


class DoubleStreamBlock(nn.Module):
    """Text and video streams with their own weights, attending jointly over [text; video]."""

    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.attention = Attention(cfg.rope_layout)
        self.img_mod = Modulation(dim, 6)
        self.img_attn = SelfAttention(dim, cfg.num_heads, cfg.qkv_bias)
        self.img_mlp = _mlp(dim, cfg.mlp_hidden)
        self.txt_mod = Modulation(dim, 6)
        self.txt_attn = SelfAttention(dim, cfg.num_heads, cfg.qkv_bias)
        self.txt_mlp = _mlp(dim, cfg.mlp_hidden)

    def forward(
        self,
        img: torch.Tensor,  # (B, N, dim)
        txt: torch.Tensor,  # (B, L, dim)
        vec: torch.Tensor,  # (B, dim)
        freqs: torch.Tensor,  # (L + N, D/2, 2)
        mask: torch.Tensor | None = None,  # (B, L + N) bool key mask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)  # (B, 1, dim)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)

        img_q, img_k, img_v = self.img_attn.qkv_heads(
            norm_modulate(img, i_shift1, i_scale1)
        )  # (B, H, N, D) each
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(
            norm_modulate(txt, t_shift1, t_scale1)
        )  # (B, H, L, D) each
        q = torch.cat([txt_q, img_q], dim=2)  # (B, H, L + N, D)
        k = torch.cat([txt_k, img_k], dim=2)
        v = torch.cat([txt_v, img_v], dim=2)
        out = self.attention(q, k, v, freqs, mask)  # (B, L + N, dim)
        txt_out, img_out = out[:, : txt.shape[1]], out[:, txt.shape[1] :]

        img = img + i_gate1 * self.img_attn.proj(img_out)
        img = img + i_gate2 * self.img_mlp(norm_modulate(img, i_shift2, i_scale2))
        txt = txt + t_gate1 * self.txt_attn.proj(txt_out)
        txt = txt + t_gate2 * self.txt_mlp(norm_modulate(txt, t_shift2, t_scale2))
        return img, txt


class SingleStreamBlock(nn.Module):
    """One stream over [text; video]: parallel attention and MLP from one fused linear."""

    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.dim = dim
        self.num_heads = cfg.num_heads
        self.mlp_hidden = cfg.mlp_hidden
        self.attention = Attention(cfg.rope_layout)
        self.linear1 = nn.Linear(dim, 3 * dim + self.mlp_hidden)  # q, k, v, MLP input
        self.linear2 = nn.Linear(dim + self.mlp_hidden, dim)  # [attention; MLP] → dim
        self.norm = QKNorm(cfg.head_dim)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(dim, 3)

    def forward(
        self,
        x: torch.Tensor,  # (B, L + N, dim)
        vec: torch.Tensor,  # (B, dim)
        freqs: torch.Tensor,  # (L + N, D/2, 2)
        mask: torch.Tensor | None = None,  # (B, L + N) bool key mask
    ) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)  # (B, 1, dim) each
        qkv, mlp = self.linear1(norm_modulate(x, shift, scale)).split(
            [3 * self.dim, self.mlp_hidden], dim=-1
        )  # (B, L + N, 3·dim), (B, L + N, mlp_hidden)
        q, k, v = rearrange(qkv, "b n (k h d) -> k b h n d", k=3, h=self.num_heads)
        q, k = self.norm(q, k)  # (B, H, L + N, D)
        out = self.attention(q, k, v, freqs, mask)  # (B, L + N, dim)
        return x + gate * self.linear2(torch.cat([out, self.mlp_act(mlp)], dim=-1))


class LastLayer(nn.Module):
    """LayerNorm, adaLN shift/scale, linear to the output features per token."""

    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)  # (B, 1, dim)
        return self.linear(norm_modulate(x, shift, scale))  # (B, N, out_features)


class MMDiT(nn.Module):
    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = cfg = config
        dim = cfg.hidden_size
        self.img_in = nn.Linear(cfg.in_features, dim)
        self.time_in = MLPEmbedder(TIME_EMBED_DIM, dim)
        self.vector_in = MLPEmbedder(cfg.vec_dim, dim)
        self.guidance_in = MLPEmbedder(TIME_EMBED_DIM, dim) if cfg.guidance_embed else None
        self.txt_in = nn.Linear(cfg.text_dim, dim)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(cfg) for _ in range(cfg.depth_double))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(cfg) for _ in range(cfg.depth_single))
        self.final_layer = LastLayer(dim, cfg.latent_features)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialisation for training from scratch (adaLN-Zero, DiT-style).

        Linear layers Xavier-uniform with zero bias; the t / guidance / pooled-vector MLPs
        normal(0, 0.02); every adaLN modulation and the final layer zero, so each block starts
        as the identity and the untrained model predicts v = 0; QK-norm scales one; the
        condition columns of img_in zero (the reference's zero-initialised `cond_in`). The
        reference itself starts from FLUX's weights and zero-initialises only `cond_in`.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        for emb in (self.time_in, self.vector_in, self.guidance_in):
            if emb is not None:
                nn.init.normal_(emb.in_layer.weight, std=0.02)
                nn.init.normal_(emb.out_layer.weight, std=0.02)
        mods = [b.img_mod.lin for b in self.double_blocks] + [
            b.txt_mod.lin for b in self.double_blocks
        ]
        mods += [b.modulation.lin for b in self.single_blocks]
        mods += [self.final_layer.adaLN_modulation[1], self.final_layer.linear]
        for lin in mods:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.img_in.weight[:, self.config.latent_features :])

    def _check_inputs(self, x, t, text, pooled, text_mask, cond, guidance) -> None:
        cfg = self.config
        p = cfg.patch_size
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"MMDiT: x must be a latent (B, {cfg.in_channels}, T, H, W), got {tuple(x.shape)}"
            )
        b, _, frames, h, w = x.shape
        if h % p or w % p:
            raise ValueError(
                f"MMDiT: latent height and width ({h}, {w}) must be multiples of the patch size "
                f"{p}; crop or pad the latent"
            )
        if t.shape != (b,):
            raise ValueError(f"MMDiT: t must be (B,) = ({b},), got {tuple(t.shape)}")
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
            raise ValueError(
                f"MMDiT: text must be (B, L, text_dim) = ({b}, L, {cfg.text_dim}), got "
                f"{tuple(text.shape)}"
            )
        if pooled.shape != (b, cfg.vec_dim):
            raise ValueError(
                f"MMDiT: pooled must be (B, vec_dim) = ({b}, {cfg.vec_dim}), got "
                f"{tuple(pooled.shape)}"
            )
        if text_mask is not None and (
            text_mask.dtype != torch.bool or text_mask.shape != text.shape[:2]
        ):
            raise ValueError(
                f"MMDiT: text_mask must be bool (B, L) = {tuple(text.shape[:2])} (True = real "
                f"token), got {text_mask.dtype} {tuple(text_mask.shape)}"
            )
        if cond is not None:
            if cfg.cond_channels == 0:
                raise ValueError(
                    "MMDiT: got cond but the model has cond_channels = 0; pass cond=None or "
                    "build the model with cond_channels = in_channels + 1"
                )
            if cond.shape != (b, cfg.cond_channels, frames, h, w):
                raise ValueError(
                    f"MMDiT: cond must be (B, cond_channels, T, H, W) = "
                    f"{(b, cfg.cond_channels, frames, h, w)}, got {tuple(cond.shape)}"
                )
        if cfg.guidance_embed and (guidance is None or guidance.shape != (b,)):
            raise ValueError(
                f"MMDiT: the model embeds a guidance scale (guidance_embed=True): pass guidance "
                f"(B,) = ({b},), got {None if guidance is None else tuple(guidance.shape)}"
            )
        if not cfg.guidance_embed and guidance is not None:
            raise ValueError("MMDiT: got guidance but the model has guidance_embed=False")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        pooled: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        *,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted velocity (noise − data) of the noisy latent.

        x: (B, C, T, H, W) noisy latent; t: (B,) in [0, 1], 1 = pure noise; text: (B, L,
        text_dim); pooled: (B, vec_dim); text_mask: (B, L) bool, True = real token, None = all
        attended; cond: (B, cond_channels, T, H, W) = [mask, mask·latent] or None (zeros);
        guidance: (B,) guidance scale, only for guidance_embed models.
        Returns v: (B, C, T, H, W) in x's dtype.
        """
        self._check_inputs(x, t, text, pooled, text_mask, cond, guidance)
        img, txt, vec, freqs, mask = self.embed(x, t, text, pooled, text_mask, cond, guidance)
        seq = self.run_blocks(img, txt, vec, freqs, mask)  # (B, L + N, dim)
        out = self.final_layer(seq[:, txt.shape[1]:], vec)  # (B, N, C·p²)
        return self.unembed(out, x)

    def embed(self, x, t, text, pooled, text_mask=None, cond=None, guidance=None):
        """The inputs as the blocks take them: img (B, N, dim), txt (B, L, dim), vec (B, dim),
        the RoPE freqs of [text; video] (L + N, D/2, 2) and the key mask (B, L + N) or None."""
        cfg = self.config
        p = cfg.patch_size
        b, _, frames, h, w = x.shape
        dtype = self.img_in.weight.dtype

        tokens = patchify(x, p).to(dtype)  # (B, N, C·p²)
        if cfg.cond_channels:
            if cond is None:  # t2v / condition dropout: a zero condition
                cond_tokens = tokens.new_zeros(*tokens.shape[:2], cfg.in_features - tokens.shape[2])
            else:
                cond_tokens = patchify(cond, p).to(dtype)  # (B, N, cond_channels·p²)
            tokens = torch.cat([tokens, cond_tokens], dim=-1)  # (B, N, in_features)
        img = self.img_in(tokens)  # (B, N, dim)
        vec = self.time_in(timestep_embedding(t).to(dtype))  # (B, dim)
        if self.guidance_in is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance).to(dtype))
        vec = vec + self.vector_in(pooled.to(dtype))
        txt = self.txt_in(text.to(dtype))  # (B, L, dim)

        positions = torch.cat(
            [
                torch.zeros(txt.shape[1], 3, device=x.device),  # text: no rotation
                grid_positions(frames, h // p, w // p, device=x.device),  # video: from 0
            ]
        )  # (L + N, 3)
        freqs = rope_freqs(  # (L + N, D/2, 2), float32 (float64 for a float64 model)
            positions, cfg.axes_dims, cfg.theta, torch.promote_types(dtype, torch.float32)
        )
        mask = None
        if text_mask is not None:
            video = torch.ones(b, img.shape[1], dtype=torch.bool, device=text_mask.device)
            mask = torch.cat([text_mask, video], dim=1)  # (B, L + N)
        return img, txt, vec, freqs, mask

    def run_blocks(self, img, txt, vec, freqs, mask=None) -> torch.Tensor:
        """Double then single blocks: [text; video] tokens (B, L + N, dim). Under context
        parallelism img and txt are one rank's parts of the sequence while freqs and the mask
        cover the whole of it: the blocks' attention modules take their part's freqs and attend
        over the rank group (see train/context_parallel)."""
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, freqs, mask)
        seq = torch.cat([txt, img], dim=1)  # (B, L + N, dim)
        for block in self.single_blocks:
            seq = block(seq, vec, freqs, mask)
        return seq

    def unembed(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The final layer's video tokens (B, N, C·p²) as a latent shaped like x, in x's dtype."""
        p = self.config.patch_size
        _, _, frames, h, w = x.shape
        return unpatchify(out, frames, h // p, w // p, p).to(x.dtype)  # (B, C, T, H, W)


# --------------------------------------------------------------------------------------------
# Work of a training step


@functools.lru_cache(maxsize=8)
def block_parameters(config: MMDiTConfig) -> int:
    """Parameters in the double and single blocks (the matmuls that scale with tokens)."""
    with torch.device("meta"):
        model = MMDiT(config)
    return sum(p.numel() for n, p in model.named_parameters()
               if n.startswith(("double_blocks", "single_blocks")))


def train_step_flops(config: MMDiTConfig, batch: int, video_tokens: int, text_tokens: int
                     ) -> float:
    """FLOPs of one forward + backward: 6 per block parameter per token, plus attention's
    12·layers·B·seq²·hidden (QKᵀ and AV, ×3 for the backward), as torchtitan counts."""
    seq = video_tokens + text_tokens
    layers = config.depth_double + config.depth_single
    return (6.0 * block_parameters(config) * batch * seq
            + 12.0 * layers * batch * seq * seq * config.hidden_size)


# --------------------------------------------------------------------------------------------
# Weight conversion between RoPE layouts

_QKV_ROWS = re.compile(
    r"(?:^|\.)(double_blocks\.\d+\.(img|txt)_attn\.qkv|single_blocks\.\d+\.linear1)\."
)
_QK_NORM = re.compile(r"\.norm\.(query|key)_norm\.weight$")


def convert_rope_layout(
    state_dict: dict[str, torch.Tensor], config: MMDiTConfig, src: str, dst: str
) -> dict[str, torch.Tensor]:
    """A state dict of this model with q/k channels permuted from RoPE layout src to dst.

    The q and k rows of every qkv projection (`…_attn.qkv`, the first 2·dim rows of the single
    blocks' `linear1`), weight and bias, are permuted within each head, and so are the QK-norm
    scales; v and everything else is unchanged. Attention scores are sums over channels, so the
    converted model computes the same function under layout dst. Returns a new dict.
    """
    perm = rope_permutation(config.head_dim, src, dst)
    dim, heads = config.hidden_size, config.num_heads
    out = {}
    for key, value in state_dict.items():
        if src != dst and _QKV_ROWS.search(key):
            q = permute_head_rows(value[:dim], perm, heads)
            k = permute_head_rows(value[dim : 2 * dim], perm, heads)
            value = torch.cat([q, k, value[2 * dim :]])
        elif src != dst and _QK_NORM.search(key):
            value = permute_head_rows(value, perm, 1)
        out[key] = value
    return out
