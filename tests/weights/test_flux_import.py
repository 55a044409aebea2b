"""FLUX → osora MMDiT import: a tiny random checkpoint in FLUX's own module tree, naming and
interleaved RoPE gives, through `load_flux`, the model that computes FLUX's function (float64);
guidance dropping, the autoencoder switch, sharded folders, errors, export.

`RefFlux` below is written from black-forest-labs/flux `src/flux/model.py` (Flux),
`src/flux/modules/layers.py` (EmbedND, MLPEmbedder, RMSNorm `.scale`, QKNorm, SelfAttention
with fused qkv, Modulation, DoubleStreamBlock, SingleStreamBlock with linear1/linear2,
LastLayer) and `src/flux/math.py` (rope as 2×2 rotation matrices on interleaved pairs,
apply_rope), kept in float64. It shares no code with osora.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import save_file
from torch import nn

from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.weights.flux import (
    FLUX_DEV,
    IO_KEYS,
    convert_flux_state_dict,
    flux_key_map,
    flux_reference_names,
    fresh_io_layers,
    load_flux,
)
from osora.weights.safetensors_io import (
    load_weights,
    read_safetensors_checkpoint,
    save_weights,
)

F64 = torch.float64
# A tiny osora config: 4 latent channels in 2×2 patches (FLUX's img_in width 16), head dim 16.
CFG = MMDiTConfig(
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
    guidance_embed=True,
    rope_layout="rotate_half",
)
SRC_IN = CFG.in_channels * CFG.patch_size**2  # FLUX's (patchified) in_channels


# --------------------------------------------------------------------------------------------
# The reference: FLUX's module tree and forward


def ref_timestep_embedding(t, dim=256, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t)


def ref_rope(pos, dim, theta):  # (B, L) → (B, L, dim/2, 2, 2) rotation matrices
    scale = torch.arange(0, dim, 2, dtype=F64) / dim
    out = torch.einsum("...n,d->...nd", pos, 1.0 / theta**scale)
    out = torch.stack([out.cos(), -out.sin(), out.sin(), out.cos()], dim=-1)
    return rearrange(out, "b n d (i j) -> b n d i j", i=2, j=2)


def ref_apply_rope(xq, freqs_cis):  # interleaved pairs (2j, 2j + 1)
    xq_ = xq.reshape(*xq.shape[:-1], -1, 1, 2)
    return (freqs_cis[..., 0] * xq_[..., 0] + freqs_cis[..., 1] * xq_[..., 1]).reshape(xq.shape)


def ref_attention(q, k, v, pe):
    q, k = ref_apply_rope(q, pe), ref_apply_rope(k, pe)
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
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = QKNormRef(dim // heads)
        self.proj = nn.Linear(dim, dim)


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
    def __init__(self, dim, heads, mlp_hidden, qkv_bias):
        super().__init__()
        self.heads = heads
        self.img_mod = ModulationRef(dim, 6)
        self.img_attn = SelfAttentionRef(dim, heads, qkv_bias)
        self.img_mlp = mlp(dim, mlp_hidden)
        self.txt_mod = ModulationRef(dim, 6)
        self.txt_attn = SelfAttentionRef(dim, heads, qkv_bias)
        self.txt_mlp = mlp(dim, mlp_hidden)

    def qkv(self, attn, x):
        q, k, v = rearrange(attn.qkv(x), "B L (K H D) -> K B H L D", K=3, H=self.heads)
        return attn.norm.query_norm(q), attn.norm.key_norm(k), v

    def forward(self, img, txt, vec, pe):
        i1s, i1c, i1g, i2s, i2c, i2g = self.img_mod(vec)  # shift, scale, gate ×2
        t1s, t1c, t1g, t2s, t2c, t2g = self.txt_mod(vec)
        img_q, img_k, img_v = self.qkv(self.img_attn, (1 + i1c) * ln(img) + i1s)
        txt_q, txt_k, txt_v = self.qkv(self.txt_attn, (1 + t1c) * ln(txt) + t1s)
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
    def __init__(self, dim, heads, mlp_hidden):
        super().__init__()
        self.dim, self.heads, self.mlp_hidden = dim, heads, mlp_hidden
        self.linear1 = nn.Linear(dim, 3 * dim + mlp_hidden)
        self.linear2 = nn.Linear(dim + mlp_hidden, dim)
        self.norm = QKNormRef(dim // heads)
        self.modulation = ModulationRef(dim, 3)

    def forward(self, x, vec, pe):
        shift, scale, gate = self.modulation(vec)
        qkv, h = torch.split(
            self.linear1((1 + scale) * ln(x) + shift), [3 * self.dim, self.mlp_hidden], dim=-1
        )
        q, k, v = rearrange(qkv, "B L (K H D) -> K B H L D", K=3, H=self.heads)
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


class RefFlux(nn.Module):
    def __init__(self, cfg: MMDiTConfig, in_channels: int, guidance_embed: bool = True):
        super().__init__()
        d, m = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio)
        self.axes_dim, self.theta, self.guidance_embed = cfg.axes_dims, cfg.theta, guidance_embed
        self.img_in = nn.Linear(in_channels, d)
        self.time_in = MLPEmbedderRef(256, d)
        self.vector_in = MLPEmbedderRef(cfg.vec_dim, d)
        self.guidance_in = MLPEmbedderRef(256, d) if guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(cfg.text_dim, d)
        self.double_blocks = nn.ModuleList(
            DoubleBlockRef(d, cfg.num_heads, m, cfg.qkv_bias) for _ in range(cfg.depth_double)
        )
        self.single_blocks = nn.ModuleList(
            SingleBlockRef(d, cfg.num_heads, m) for _ in range(cfg.depth_single)
        )
        self.final_layer = LastLayerRef(d, in_channels)

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None):
        img = self.img_in(img)
        vec = self.time_in(ref_timestep_embedding(timesteps))
        if self.guidance_embed:
            vec = vec + self.guidance_in(ref_timestep_embedding(guidance))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        ids = torch.cat((txt_ids, img_ids), dim=1)
        pe = torch.cat(
            [ref_rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(3)], dim=-3
        ).unsqueeze(1)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec, pe)
        return self.final_layer(img[:, txt.shape[1] :], vec)


def random_flux(cfg=CFG, in_channels=SRC_IN, seed=0) -> RefFlux:
    torch.manual_seed(seed)
    model = RefFlux(cfg, in_channels)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.1 * torch.randn_like(p)
            p.copy_(1 + noise if name.endswith(".scale") else noise)  # QK-norm scales near 1
    return model


def save_checkpoint(model: nn.Module, path, **extra) -> None:
    """As a release ships it: plain safetensors of the state dict (float32)."""
    save_file({**model.state_dict(), **extra}, str(path))


def pack(x, p):  # the reference's sampling.pack
    return rearrange(x, "b c t (h ph) (w pw) -> b (t h w) (c ph pw)", ph=p, pw=p)


def reference_inputs(cfg, b=2, t=2, h=4, w=4, n_txt=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, t, h, w, generator=gen, dtype=F64)
    # t and the guidance scale float32 numbers: osora embeds float32(t)·1000, FLUX
    # float32(1000·t); equal for these, one float32 rounding apart for other float64 values.
    times = torch.rand(b, generator=gen).to(F64)
    text = torch.randn(b, n_txt, cfg.text_dim, generator=gen, dtype=F64)
    pooled = torch.randn(b, cfg.vec_dim, generator=gen, dtype=F64)
    guidance = (1 + 4 * torch.rand(b, generator=gen)).to(F64)
    p = cfg.patch_size
    grid = torch.meshgrid(*(torch.arange(n) for n in (t, h // p, w // p)), indexing="ij")
    img_ids = torch.stack(grid, -1).reshape(1, -1, 3).expand(b, -1, -1).to(F64)
    return x, times, text, pooled, guidance, img_ids, torch.zeros(b, n_txt, 3, dtype=F64)


# --------------------------------------------------------------------------------------------
# Tests


def test_reference_names_match_flux_module_tree_and_flux_dev_size():
    names = {k: tuple(v.shape) for k, v in RefFlux(CFG, SRC_IN).state_dict().items()}
    assert flux_reference_names(CFG) == names
    assert list(flux_reference_names(CFG)) == list(names)  # module order too
    # FLUX.1-dev: 11,901,408,320 parameters, img_in 3072 × 64.
    table = flux_reference_names(FLUX_DEV)
    assert sum(math.prod(s) for s in table.values()) == 11_901_408_320
    assert table["img_in.weight"] == (3072, 64)
    km = flux_key_map(CFG)
    assert km["double_blocks.1.img_attn.norm.key_norm.weight"] == (
        "double_blocks.1.img_attn.norm.key_norm.scale",
    )
    assert km["single_blocks.0.linear1.weight"] == ("single_blocks.0.linear1.weight",)
    assert km.keys() == MMDiT(CFG).state_dict().keys()
    no_guidance = dataclasses.replace(CFG, guidance_embed=False)
    assert flux_key_map(no_guidance).keys() == MMDiT(no_guidance).state_dict().keys()


@pytest.mark.parametrize(
    ("guidance_embed", "layout"), [(True, "rotate_half"), (False, "interleaved")]
)
def test_imported_model_computes_flux(tmp_path, guidance_embed, layout):
    ref = random_flux()
    save_checkpoint(ref, tmp_path / "flux.safetensors")
    cfg = dataclasses.replace(CFG, guidance_embed=guidance_embed, rope_layout=layout)
    model, report = load_flux(tmp_path / "flux.safetensors", cfg, dtype=F64)
    assert model.img_in.weight.dtype == F64

    x, t, text, pooled, g, img_ids, txt_ids = reference_inputs(cfg)
    ref = ref.double()
    ref.guidance_embed = guidance_embed  # a FLUX without the guidance embedding
    want = ref(pack(x, 2), img_ids, text, txt_ids, t, pooled, g if guidance_embed else None)
    got = model(x, t, text, pooled, guidance=g if guidance_embed else None)
    torch.testing.assert_close(pack(got, 2), want, rtol=0, atol=1e-10)
    # The condition columns are zero: any condition leaves the output as FLUX's.
    cond = torch.randn(2, cfg.cond_channels, *x.shape[2:], dtype=F64)
    kwargs = {"guidance": g} if guidance_embed else {}
    torch.testing.assert_close(model(x, t, text, pooled, cond=cond, **kwargs), got)

    assert report.reinitialised == []
    if guidance_embed:
        assert report.dropped == [] and "permuted interleaved → rotate_half" in report.rope
    else:
        assert sorted(report.dropped) == sorted(
            f"guidance_in.{a}.{b}" for a in ("in_layer", "out_layer") for b in ("weight", "bias")
        )
        assert "no permutation" in report.rope
    assert "columns [:, :16]; the 20 condition columns zero" in report.img_in
    assert "flux.safetensors" in str(report)


def test_autoencoder_switch_reinitialises_io_layers_with_the_models_init(tmp_path):
    ref = random_flux()
    save_checkpoint(ref, tmp_path / "flux.safetensors")
    dcae = dataclasses.replace(CFG, in_channels=8, patch_size=1, cond_channels=9)  # C·p² = 8
    model, report = load_flux(tmp_path / "flux.safetensors", dcae, seed=3)
    assert report.reinitialised == list(IO_KEYS) and "re-initialised" in report.img_in
    assert "differs from the config's C·p² = 8" in report.img_in
    fresh = fresh_io_layers(dcae, seed=3)
    state = model.state_dict()
    for key in IO_KEYS:
        assert torch.equal(state[key], fresh[key]), key
    assert not model.img_in.weight[:, 8:].any() and model.img_in.weight[:, :8].any()
    assert not model.final_layer.linear.weight.any() and not model.img_in.bias.any()
    # The model's own init: the same Xavier bound and zeros as MMDiT(dcae).
    bound = math.sqrt(6 / (dcae.in_features + dcae.hidden_size))
    assert model.img_in.weight.abs().max() <= bound
    # Everything else is FLUX's (the blocks permuted to rotate-half; embeddings as they are).
    assert torch.equal(state["txt_in.weight"], ref.txt_in.weight.detach())
    assert torch.equal(state["single_blocks.1.linear2.weight"],
                       ref.single_blocks[1].linear2.weight.detach())
    # Refusing the switch makes the width a shape error.
    with pytest.raises(ValueError, match=r"img_in.weight \(in .*flux.safetensors\): expected "
                                         r"\(64, 8\), got \(64, 16\)"):
        load_flux(tmp_path / "flux.safetensors", dcae, reinit_io=False)


def test_sharded_folder_and_prefixed_names_load_like_one_file(tmp_path):
    ref = random_flux()
    save_checkpoint(ref, tmp_path / "flux.safetensors")
    one, _ = load_flux(tmp_path / "flux.safetensors", CFG)
    folder = tmp_path / "sharded"
    folder.mkdir()
    state = ref.state_dict()
    names = list(state)
    shards = {"m-00001-of-00002.safetensors": names[:20],
              "m-00002-of-00002.safetensors": names[20:]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / file))
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (folder / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded, _ = load_flux(folder, CFG)
    for (name, a), (_, b) in zip(one.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), name
    tensors, origin = read_safetensors_checkpoint(folder / "m.safetensors.index.json")
    assert tensors.keys() == state.keys()
    assert origin["final_layer.linear.bias"] == folder / "m-00002-of-00002.safetensors"
    assert all(p.requires_grad for p in sharded.parameters())
    # A single-file UI export: every name under model.diffusion_model.
    save_file({f"model.diffusion_model.{k}": v for k, v in state.items()},
              str(tmp_path / "ui.safetensors"))
    prefixed, report = load_flux(tmp_path / "ui.safetensors", CFG)
    assert torch.equal(prefixed.img_in.weight, one.img_in.weight)
    assert "model.diffusion_model." in report.notes[0]
    # An index that does not match its shards.
    broken = tmp_path / "broken"
    broken.mkdir()
    save_file({k: state[k] for k in names[:20]}, str(broken / "a.safetensors"))
    index = {"weight_map": {**dict.fromkeys(names[:21], "a.safetensors"), "x": "b.safetensors"}}
    (broken / "m.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="names shard 'b.safetensors', which is not a file"):
        load_flux(broken, CFG)
    del index["weight_map"]["x"]
    (broken / "m.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"a.safetensors lacks tensors .*: {names[20]}"):
        load_flux(broken, CFG)
    # A bad tensor in shard 2 is named with its file.
    bad = {k: state[k] for k in shards["m-00002-of-00002.safetensors"]}
    key = "single_blocks.1.linear1.weight"
    assert key in bad
    bad[key] = bad[key][:-1]
    save_file(bad, str(folder / "m-00002-of-00002.safetensors"))
    with pytest.raises(ValueError, match=rf"{key} \(in .*m-00002-of-00002.safetensors\): "
                                         r"expected \(448, 64\), got \(447, 64\)"):
        load_flux(folder, CFG)


def test_missing_misshapen_and_unknown_tensors_are_named(tmp_path):
    state = random_flux().state_dict()
    path = tmp_path / "flux.safetensors"
    del state["double_blocks.1.txt_attn.proj.bias"]
    state["double_blocks.0.img_attn.qkv.weight"] = torch.zeros(191, 64)
    state["lora_unet.extra"] = torch.zeros(3)
    save_file(state, str(path))
    with pytest.raises(ValueError) as err:
        load_flux(path, CFG)
    msg = str(err.value)
    assert f"FLUX checkpoint {path} does not fit" in msg
    assert "missing tensors (1): double_blocks.1.txt_attn.proj.bias" in msg
    assert (f"double_blocks.0.img_attn.qkv.weight (in {path}): expected (192, 64), "
            "got (191, 64)") in msg
    assert f"unknown tensors (1; pass them in `ignore` to skip): lora_unet.extra (in {path})" in msg

    state = random_flux().state_dict()
    save_file({**state, "lora_unet.extra": torch.zeros(3)}, str(path))
    model, report = load_flux(path, CFG, ignore=["lora_unet.*"])
    assert report.ignored == ["lora_unet.extra"] and "ignored: lora_unet.extra" in str(report)
    # Pure conversion, and hints for the wrong kind of checkpoint.
    converted = convert_flux_state_dict(state, CFG)
    assert converted.keys() == MMDiT(CFG).state_dict().keys()
    diffusers = {"x_embedder.weight": torch.zeros(64, 16), **state}
    with pytest.raises(ValueError, match="diffusers names"):
        convert_flux_state_dict(diffusers, CFG)
    no_guidance = {k: v for k, v in state.items() if not k.startswith("guidance_in.")}
    with pytest.raises(ValueError, match="no guidance_in .* guidance_embed=False"):
        convert_flux_state_dict(no_guidance, CFG)
    with pytest.raises(FileNotFoundError):
        load_flux(tmp_path / "absent.safetensors", CFG)


def test_export_and_reload_is_bit_exact(tmp_path):
    save_checkpoint(random_flux(), tmp_path / "flux.safetensors")
    model, _ = load_flux(tmp_path / "flux.safetensors", CFG)
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
