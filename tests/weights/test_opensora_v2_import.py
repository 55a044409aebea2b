"""Open-Sora v2 → osora MMDiT import: a tiny random checkpoint in Open-Sora v2's module tree
(separate q/k/v projections, `v_mlp`, `cond_in`, Liger rotate-half RoPE) gives, through
`load_opensora_v2`, the model that computes the reference's function (float64), for the
released layout and for `fused_qkv=True` / interleaved targets; errors, export.

`RefOpenSora` below is written from hpcaitech/Open-Sora v2 `opensora/models/mmdit/model.py`
(MMDiTModel: img_in + cond_in, prepare_block_inputs), `layers.py` (SelfAttention with
q_proj/k_proj/v_proj or qkv, DoubleStreamBlockProcessor, SingleStreamBlockProcessor with
q_proj/k_proj/v_mlp, RMSNorm `.scale`, LigerEmbedND, LastLayer) and `math.py` (liger_rope;
LigerRopeFunction applies HF-Llama rotate_half), kept in float64. It shares no code with osora.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import save_file
from torch import nn

from osora.models.mmdit import MMDIT_11B, MMDiT, MMDiTConfig
from osora.weights.opensora_v2 import (
    convert_opensora_v2_state_dict,
    load_opensora_v2,
    opensora_v2_key_map,
    opensora_v2_reference_names,
)
from osora.weights.safetensors_io import load_weights, save_weights

F64 = torch.float64
CFG = MMDiTConfig(  # tiny: 4 latent channels × 2², condition [mask, mask·latent] = 5 channels
    in_channels=4,
    patch_size=2,
    cond_channels=5,
    hidden_size=64,
    num_heads=4,
    depth_double=2,
    depth_single=2,
    text_dim=32,
    vec_dim=24,
    axes_dims=(4, 6, 6),
)


# --------------------------------------------------------------------------------------------
# The reference: Open-Sora v2's MMDiTModel


def ref_timestep_embedding(t, dim=256, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t)


def liger_embed(ids, axes_dim, theta):  # LigerEmbedND: (B, L, 3) → cos, sin (B, L, D)
    cos, sin = [], []
    for i, dim in enumerate(axes_dim):
        scale = torch.arange(0, dim, 2, dtype=F64) / dim
        out = torch.einsum("...n,d->...nd", ids[..., i], 1.0 / theta**scale)
        cos.append(out.cos())
        sin.append(out.sin())
    return torch.cat(cos, -1).repeat(1, 1, 2), torch.cat(sin, -1).repeat(1, 1, 2)


def liger_rope(x, cos, sin):  # LigerRopeFunction = HF-Llama q·cos + rotate_half(q)·sin
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]


def ref_attention(q, k, v, pe):
    cos, sin = pe
    q, k = liger_rope(q, cos, sin), liger_rope(k, cos, sin)
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
        if fused:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        else:
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

    def forward(self, img, txt, vec, pe):
        i1s, i1c, i1g, i2s, i2c, i2g = self.img_mod(vec)  # shift, scale, gate ×2
        t1s, t1c, t1g, t2s, t2c, t2g = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.qkv_heads((1 + i1c) * ln(img) + i1s)
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads((1 + t1c) * ln(txt) + t1s)
        attn = ref_attention(
            torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2),
            torch.cat((txt_v, img_v), 2), pe,
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
        if fused:
            self.linear1 = nn.Linear(dim, 3 * dim + mlp_hidden)
        else:
            self.q_proj = nn.Linear(dim, dim)
            self.k_proj = nn.Linear(dim, dim)
            self.v_mlp = nn.Linear(dim, dim + mlp_hidden)
        self.linear2 = nn.Linear(dim + mlp_hidden, dim)
        self.norm = QKNormRef(dim // heads)
        self.modulation = ModulationRef(dim, 3)

    def forward(self, x, vec, pe):
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
        attn = ref_attention(q, k, v, pe)
        return x + gate * self.linear2(torch.cat((attn, F.gelu(h, approximate="tanh")), 2))


class LastLayerRef(nn.Module):
    def __init__(self, dim, out):
        super().__init__()
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * ln(x) + shift[:, None, :])


class RefOpenSora(nn.Module):
    """MMDiTModel(cond_embed=True, guidance_embed=False, use_liger_rope=True)."""

    def __init__(self, cfg: MMDiTConfig, fused: bool = False):
        super().__init__()
        d, m, p = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio), cfg.patch_size
        self.axes_dim, self.theta = cfg.axes_dims, cfg.theta
        in_channels = cfg.in_channels * p**2  # the reference's in_channels: packed features
        self.img_in = nn.Linear(in_channels, d)
        self.time_in = MLPEmbedderRef(256, d)
        self.vector_in = MLPEmbedderRef(cfg.vec_dim, d)
        self.cond_in = nn.Linear(in_channels + p**2, d)
        self.txt_in = nn.Linear(cfg.text_dim, d)
        self.double_blocks = nn.ModuleList(
            DoubleBlockRef(d, cfg.num_heads, m, cfg.qkv_bias, fused)
            for _ in range(cfg.depth_double)
        )
        self.single_blocks = nn.ModuleList(
            SingleBlockRef(d, cfg.num_heads, m, fused) for _ in range(cfg.depth_single)
        )
        self.final_layer = LastLayerRef(d, in_channels)

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond):
        img = self.img_in(img) + self.cond_in(cond)
        vec = self.time_in(ref_timestep_embedding(timesteps)) + self.vector_in(y_vec)
        txt = self.txt_in(txt)
        pe = liger_embed(torch.cat((txt_ids, img_ids), dim=1), self.axes_dim, self.theta)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec, pe)
        return self.final_layer(img[:, txt.shape[1] :], vec)


def random_opensora(cfg=CFG, fused=False, seed=0) -> RefOpenSora:
    torch.manual_seed(seed)
    model = RefOpenSora(cfg, fused)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.1 * torch.randn_like(p)
            p.copy_(1 + noise if name.endswith(".scale") else noise)  # QK-norm scales near 1
    return model


def pack(x, p):  # opensora/utils/sampling.py `pack`
    return rearrange(x, "b c t (h ph) (w pw) -> b (t h w) (c ph pw)", ph=p, pw=p)


def reference_inputs(cfg, b=2, t=3, h=4, w=4, n_txt=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, t, h, w, generator=gen, dtype=F64)
    # float32 t: osora embeds float32(t)·1000, the reference float32(1000·t) (equal here)
    times = torch.rand(b, generator=gen).to(F64)
    text = torch.randn(b, n_txt, cfg.text_dim, generator=gen, dtype=F64)
    pooled = torch.randn(b, cfg.vec_dim, generator=gen, dtype=F64)
    # i2v-head condition as the reference builds it: cat(masks, masked_ref) along channels
    masks = torch.zeros(b, 1, t, h, w, dtype=F64)
    masks[:, :, 0] = 1
    ref_latent = torch.randn(b, cfg.in_channels, t, h, w, generator=gen, dtype=F64)
    cond = torch.cat((masks, masks * ref_latent), dim=1)
    p = cfg.patch_size
    grid = torch.meshgrid(*(torch.arange(n) for n in (t, h // p, w // p)), indexing="ij")
    img_ids = torch.stack(grid, -1).reshape(1, -1, 3).expand(b, -1, -1).to(F64)
    return x, times, text, pooled, cond, img_ids, torch.zeros(b, n_txt, 3, dtype=F64)


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("fused", [False, True])
def test_reference_names_match_the_module_tree(fused):
    names = {k: tuple(v.shape) for k, v in RefOpenSora(CFG, fused).state_dict().items()}
    table = opensora_v2_reference_names(CFG, fused_qkv=fused)
    assert table == names and list(table) == list(names)


def test_released_11b_layout():
    table = opensora_v2_reference_names(MMDIT_11B)
    # MMDiTModel at configs/diffusion/inference/256px.py: 11,891,390,528 parameters (one
    # img_in bias more than osora's MMDiT, which merges cond_in's bias into img_in's).
    assert sum(math.prod(s) for s in table.values()) == 11_891_390_528
    assert table["img_in.weight"] == (3072, 64) and table["cond_in.weight"] == (3072, 68)
    assert table["single_blocks.37.v_mlp.weight"] == (3072 + 12288, 3072)
    assert not any(k.startswith("guidance_in.") for k in table)
    km = opensora_v2_key_map(MMDIT_11B)
    assert km["double_blocks.18.txt_attn.qkv.bias"] == tuple(
        f"double_blocks.18.txt_attn.{x}_proj.bias" for x in "qkv"
    )
    assert km["single_blocks.0.linear1.weight"] == (
        "single_blocks.0.q_proj.weight", "single_blocks.0.k_proj.weight",
        "single_blocks.0.v_mlp.weight",
    )
    assert km["img_in.weight"] == ("img_in.weight", "cond_in.weight")
    assert km["img_in.bias"] == ("img_in.bias", "cond_in.bias")
    assert km["double_blocks.0.img_attn.norm.query_norm.weight"] == (
        "double_blocks.0.img_attn.norm.query_norm.scale",
    )
    with torch.device("meta"):
        assert km.keys() == MMDiT(MMDIT_11B).state_dict().keys()


@pytest.mark.parametrize(
    ("fused", "patch", "layout"),
    [(False, 2, "rotate_half"), (True, 1, "interleaved")],  # released; fused/DC-AE-like
)
def test_imported_model_computes_the_reference(tmp_path, fused, patch, layout):
    src_cfg = dataclasses.replace(CFG, patch_size=patch)
    ref = random_opensora(src_cfg, fused)
    save_file(ref.state_dict(), str(tmp_path / "Open_Sora_v2.safetensors"))
    cfg = dataclasses.replace(src_cfg, rope_layout=layout)
    model = load_opensora_v2(tmp_path / "Open_Sora_v2.safetensors", cfg, dtype=F64)

    x, t, text, pooled, cond, img_ids, txt_ids = reference_inputs(cfg)
    ref = ref.double()
    want = ref(pack(x, patch), img_ids, text, txt_ids, t, pooled, pack(cond, patch))
    got = model(x, t, text, pooled, cond=cond)
    torch.testing.assert_close(pack(got, patch), want, rtol=0, atol=1e-10)
    # t2v: the reference's zero condition is osora's cond=None (cond_in's bias still counts).
    zero = torch.zeros_like(pack(cond, patch))
    want_t2v = ref(pack(x, patch), img_ids, text, txt_ids, t, pooled, zero)
    torch.testing.assert_close(pack(model(x, t, text, pooled), patch), want_t2v, rtol=0,
                               atol=1e-10)


def test_merged_bias_is_summed_in_float32_for_bf16_checkpoints():
    state = {k: v.to(torch.bfloat16) for k, v in random_opensora().state_dict().items()}
    out = convert_opensora_v2_state_dict(state, CFG)
    assert out["img_in.bias"].dtype == torch.bfloat16
    exact = state["img_in.bias"].float() + state["cond_in.bias"].float()
    assert torch.equal(out["img_in.bias"], exact.to(torch.bfloat16))
    assert torch.equal(out["img_in.weight"][:, 16:], state["cond_in.weight"])
    assert torch.equal(out["single_blocks.1.linear1.weight"][128:],
                       state["single_blocks.1.v_mlp.weight"])


def test_missing_misshapen_and_unknown_tensors_are_named(tmp_path):
    path = tmp_path / "Open_Sora_v2.safetensors"
    state = random_opensora().state_dict()
    del state["single_blocks.0.v_mlp.bias"]
    state["double_blocks.1.img_attn.k_proj.weight"] = torch.zeros(63, 64)
    state["ema.step"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(ValueError) as err:
        load_opensora_v2(path, CFG)
    msg = str(err.value)
    assert f"Open-Sora v2 checkpoint {path} does not fit" in msg
    assert "missing tensors (1): single_blocks.0.v_mlp.bias" in msg
    assert (f"double_blocks.1.img_attn.k_proj.weight (in {path}): expected (64, 64), "
            "got (63, 64)") in msg
    assert f"unknown tensors (1; pass them in `ignore` to skip): ema.step (in {path})" in msg

    state = random_opensora().state_dict()
    save_file({**state, "ema.step": torch.zeros(1)}, str(path))
    model = load_opensora_v2(path, CFG, ignore=["ema.*"])
    assert torch.equal(model.txt_in.weight, state["txt_in.weight"])
    # A condition-less config against a cond_in checkpoint, and the reverse, say what to use.
    with pytest.raises(ValueError, match=r"cond_in \(cond_embed=True\).*cond_channels = "
                                         r"in_channels \+ 1 = 5"):
        convert_opensora_v2_state_dict(state, dataclasses.replace(CFG, cond_channels=0))
    no_cond = {k: v for k, v in state.items() if not k.startswith("cond_in.")}
    with pytest.raises(ValueError, match="(?s)missing tensors .*cond_in.weight.*no cond_in"):
        convert_opensora_v2_state_dict(no_cond, CFG)
    with pytest.raises(ValueError, match="cond_channels = 7; use 5"):
        convert_opensora_v2_state_dict(state, dataclasses.replace(CFG, cond_channels=7))
    # Fused and split names mixed: the split ones are unknown.
    mixed = {**state, "single_blocks.1.linear1.weight": torch.zeros(448, 64)}
    with pytest.raises(ValueError, match=r"unknown tensors .*single_blocks\.0\.q_proj\.weight"):
        convert_opensora_v2_state_dict(mixed, CFG)


def test_export_and_reload_is_bit_exact(tmp_path):
    save_file(random_opensora().state_dict(), str(tmp_path / "Open_Sora_v2.safetensors"))
    model = load_opensora_v2(tmp_path / "Open_Sora_v2.safetensors", CFG)
    path = save_weights(model, tmp_path / "osora.safetensors")
    back = load_weights(path)
    state = model.state_dict()
    assert back.keys() == state.keys()
    for name, value in state.items():
        assert back[name].dtype == value.dtype and torch.equal(
            back[name].view(torch.uint8), value.view(torch.uint8)
        ), name
    fresh = MMDiT(CFG)
    load_weights(path, fresh)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, state[name]), name
