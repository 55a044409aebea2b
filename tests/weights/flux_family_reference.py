"""An independent plain-torch reimplementation of the FLUX / Open-Sora v2 source layouts, the
reference that the importer tests (test_flux_import.py, test_opensora_v2_import.py) check
osora's imported MMDiT against, kept in float64. It shares no code with osora.

Written from black-forest-labs/flux `src/flux/model.py` (Flux), `src/flux/modules/layers.py`
(MLPEmbedder, RMSNorm `.scale`, QKNorm, SelfAttention, Modulation, DoubleStreamBlock,
SingleStreamBlock, LastLayer) and `src/flux/math.py` (rope, attention), and from
hpcaitech/Open-Sora v2 `opensora/models/mmdit/model.py` (MMDiTModel), `opensora/models/mmdit/
layers.py` (the same modules; SelfAttention with q_proj/k_proj/v_proj or qkv,
DoubleStreamBlockProcessor, SingleStreamBlockProcessor with q_proj/k_proj/v_mlp) and
`opensora/models/mmdit/math.py` (liger_rope) and `opensora/utils/sampling.py` (pack).
Open-Sora v2's MMDiT is derived from FLUX, so one module tree serves both: `fused` picks FLUX's
fused qkv / linear1 or Open-Sora's split projections, and the RoPE comes in as a function of
q or k (FLUX rotates interleaved pairs, Open-Sora's Liger kernel rotate-half); the input layers,
the positional embedding and the forward's head stay in the test files.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

F64 = torch.float64


def ref_timestep_embedding(t, dim=256, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t)


def rope_angles(pos, dim, theta):  # (B, L) → (B, L, dim/2): pos · theta^(-2j/dim)
    scale = torch.arange(0, dim, 2, dtype=F64) / dim
    return torch.einsum("...n,d->...nd", pos, 1.0 / theta**scale)


def ref_attention(q, k, v, rope):  # rope: q or k (B, H, L, D) → the same, rotated
    q, k = rope(q), rope(k)
    return rearrange(F.scaled_dot_product_attention(q, k, v), "B H L D -> B L (H D)")


class RMSNormRef(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6) * self.scale


class QKNormRef(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm, self.key_norm = RMSNormRef(dim), RMSNormRef(dim)


class MLPEmbedderRef(nn.Module):
    def __init__(self, in_dim, hidden):
        super().__init__()
        self.in_layer, self.out_layer = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class SelfAttentionRef(nn.Module):
    def __init__(self, dim, heads, qkv_bias, fused):
        super().__init__()
        self.heads, self.fused = heads, fused
        if fused:  # FLUX; Open-Sora v2 with fused_qkv
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        else:  # Open-Sora v2 as released
            self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.norm = QKNormRef(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x):  # → (B, H, L, D) each, q and k normalised
        if self.fused:
            q, k, v = rearrange(self.qkv(x), "B L (K H D) -> K B H L D", K=3, H=self.heads)
        else:
            q, k, v = (
                rearrange(proj(x), "B L (H D) -> B H L D", H=self.heads)
                for proj in (self.q_proj, self.k_proj, self.v_proj)
            )
        return self.norm.query_norm(q), self.norm.key_norm(k), v


class ModulationRef(nn.Module):
    def __init__(self, dim, n):
        super().__init__()
        self.n, self.lin = n, nn.Linear(dim, n * dim)

    def forward(self, vec):
        return self.lin(F.silu(vec))[:, None, :].chunk(self.n, dim=-1)


def ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def mlp(dim, hidden):
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU("tanh"), nn.Linear(hidden, dim))


class DoubleBlockRef(nn.Module):
    def __init__(self, dim, heads, mlp_hidden, qkv_bias, fused):
        super().__init__()
        self.img_mod = ModulationRef(dim, 6)
        self.img_attn = SelfAttentionRef(dim, heads, qkv_bias, fused)
        self.img_mlp = mlp(dim, mlp_hidden)
        self.txt_mod = ModulationRef(dim, 6)
        self.txt_attn = SelfAttentionRef(dim, heads, qkv_bias, fused)
        self.txt_mlp = mlp(dim, mlp_hidden)

    def forward(self, img, txt, vec, rope):
        i1s, i1c, i1g, i2s, i2c, i2g = self.img_mod(vec)  # shift, scale, gate ×2
        t1s, t1c, t1g, t2s, t2c, t2g = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.qkv_heads((1 + i1c) * ln(img) + i1s)
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads((1 + t1c) * ln(txt) + t1s)
        attn = ref_attention(
            torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2),
            torch.cat((txt_v, img_v), 2), rope,
        )
        txt_a, img_a = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
        img = img + i1g * self.img_attn.proj(img_a)
        img = img + i2g * self.img_mlp((1 + i2c) * ln(img) + i2s)
        txt = txt + t1g * self.txt_attn.proj(txt_a)
        txt = txt + t2g * self.txt_mlp((1 + t2c) * ln(txt) + t2s)
        return img, txt


class SingleBlockRef(nn.Module):
    def __init__(self, dim, heads, mlp_hidden, fused):
        super().__init__()
        self.dim, self.heads, self.mlp_hidden, self.fused = dim, heads, mlp_hidden, fused
        if fused:  # FLUX's linear1
            self.linear1 = nn.Linear(dim, 3 * dim + mlp_hidden)
        else:  # Open-Sora v2's q_proj, k_proj, v_mlp
            self.q_proj = nn.Linear(dim, dim)
            self.k_proj = nn.Linear(dim, dim)
            self.v_mlp = nn.Linear(dim, dim + mlp_hidden)
        self.linear2 = nn.Linear(dim + mlp_hidden, dim)
        self.norm = QKNormRef(dim // heads)
        self.modulation = ModulationRef(dim, 3)

    def forward(self, x, vec, rope):
        shift, scale, gate = self.modulation(vec)
        x_mod = (1 + scale) * ln(x) + shift
        if self.fused:
            qkv, h = torch.split(self.linear1(x_mod), [3 * self.dim, self.mlp_hidden], dim=-1)
            q, k, v = rearrange(qkv, "B L (K H D) -> K B H L D", K=3, H=self.heads)
        else:
            q = rearrange(self.q_proj(x_mod), "B L (H D) -> B H L D", H=self.heads)
            k = rearrange(self.k_proj(x_mod), "B L (H D) -> B H L D", H=self.heads)
            v, h = torch.split(self.v_mlp(x_mod), [self.dim, self.mlp_hidden], dim=-1)
            v = rearrange(v, "B L (H D) -> B H L D", H=self.heads)
        q, k = self.norm.query_norm(q), self.norm.key_norm(k)
        attn = ref_attention(q, k, v, rope)
        return x + gate * self.linear2(torch.cat((attn, F.gelu(h, approximate="tanh")), 2))


class LastLayerRef(nn.Module):
    def __init__(self, dim, out):
        super().__init__()
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * ln(x) + shift[:, None, :])


class RefMMDiT(nn.Module):
    """The trunk both models share. A subclass registers its input layers first (the state
    dict keeps the source's module order), then calls `add_blocks`; its forward embeds the
    inputs and ends in `run_blocks`."""

    def add_blocks(self, cfg, out_channels, fused):
        d, m = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio)
        self.double_blocks = nn.ModuleList(
            DoubleBlockRef(d, cfg.num_heads, m, cfg.qkv_bias, fused)
            for _ in range(cfg.depth_double)
        )
        self.single_blocks = nn.ModuleList(
            SingleBlockRef(d, cfg.num_heads, m, fused) for _ in range(cfg.depth_single)
        )
        self.final_layer = LastLayerRef(d, out_channels)

    def run_blocks(self, img, txt, vec, rope):
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, rope)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec, rope)
        return self.final_layer(img[:, txt.shape[1] :], vec)


def randomise(model: nn.Module) -> nn.Module:
    """Small random weights from the current torch seed; QK-norm scales near 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.1 * torch.randn_like(p)
            p.copy_(1 + noise if name.endswith(".scale") else noise)
    return model


def pack(x, p):  # the reference's sampling.pack
    return rearrange(x, "b c t (h ph) (w pw) -> b (t h w) (c ph pw)", ph=p, pw=p)


def random_latents_and_text(cfg, gen, b, t, h, w, n_txt):
    """x, t, text and pooled text, float64, drawn from `gen` in this order."""
    x = torch.randn(b, cfg.in_channels, t, h, w, generator=gen, dtype=F64)
    # t is a float32 number: osora embeds float32(t)·1000, the reference float32(1000·t);
    # equal for these, one float32 rounding apart for other float64 values.
    times = torch.rand(b, generator=gen).to(F64)
    text = torch.randn(b, n_txt, cfg.text_dim, generator=gen, dtype=F64)
    pooled = torch.randn(b, cfg.vec_dim, generator=gen, dtype=F64)
    return x, times, text, pooled


def position_ids(cfg, b, t, h, w, n_txt):
    """The reference's img_ids (t, h, w of each patch) and txt_ids (zeros), float64."""
    p = cfg.patch_size
    grid = torch.meshgrid(*(torch.arange(n) for n in (t, h // p, w // p)), indexing="ij")
    img_ids = torch.stack(grid, -1).reshape(1, -1, 3).expand(b, -1, -1).to(F64)
    return img_ids, torch.zeros(b, n_txt, 3, dtype=F64)
