"""FLUX → osora MMDiT import: a tiny random checkpoint in FLUX's own module tree, naming and
interleaved RoPE gives, through `load_flux`, the model that computes FLUX's function (float64);
guidance dropping, the autoencoder switch, sharded folders, errors, export.

`RefFlux` below is written from black-forest-labs/flux `src/flux/model.py` (Flux),
`src/flux/modules/layers.py` (EmbedND, MLPEmbedder, RMSNorm `.scale`, QKNorm, SelfAttention
with fused qkv, Modulation, DoubleStreamBlock, SingleStreamBlock with linear1/linear2,
LastLayer) and `src/flux/math.py` (rope as 2×2 rotation matrices on interleaved pairs,
apply_rope), kept in float64; the modules it shares with Open-Sora v2 are in
flux_family_reference.py. It shares no code with osora.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import pytest
import torch
from einops import rearrange
from flux_family_reference import (
    F64,
    MLPEmbedderRef,
    RefMMDiT,
    pack,
    position_ids,
    random_latents_and_text,
    randomise,
    ref_timestep_embedding,
    rope_angles,
)
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
# The reference: FLUX's module tree and forward (the shared modules in flux_family_reference)


def ref_rope(pos, dim, theta):  # (B, L) → (B, L, dim/2, 2, 2) rotation matrices
    out = rope_angles(pos, dim, theta)
    out = torch.stack([out.cos(), -out.sin(), out.sin(), out.cos()], dim=-1)
    return rearrange(out, "b n d (i j) -> b n d i j", i=2, j=2)


def ref_apply_rope(xq, freqs_cis):  # interleaved pairs (2j, 2j + 1)
    xq_ = xq.reshape(*xq.shape[:-1], -1, 1, 2)
    return (freqs_cis[..., 0] * xq_[..., 0] + freqs_cis[..., 1] * xq_[..., 1]).reshape(xq.shape)


class RefFlux(RefMMDiT):
    def __init__(self, cfg: MMDiTConfig, in_channels: int, guidance_embed: bool = True):
        super().__init__()
        d = cfg.hidden_size
        self.axes_dim, self.theta, self.guidance_embed = cfg.axes_dims, cfg.theta, guidance_embed
        self.img_in = nn.Linear(in_channels, d)
        self.time_in = MLPEmbedderRef(256, d)
        self.vector_in = MLPEmbedderRef(cfg.vec_dim, d)
        self.guidance_in = MLPEmbedderRef(256, d) if guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(cfg.text_dim, d)
        self.add_blocks(cfg, in_channels, fused=True)  # SelfAttention.qkv, linear1

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
        return self.run_blocks(img, txt, vec, functools.partial(ref_apply_rope, freqs_cis=pe))


def random_flux(cfg=CFG, in_channels=SRC_IN, seed=0) -> RefFlux:
    torch.manual_seed(seed)
    return randomise(RefFlux(cfg, in_channels))


def save_checkpoint(model: nn.Module, path, **extra) -> None:
    """As a release ships it: plain safetensors of the state dict (float32)."""
    save_file({**model.state_dict(), **extra}, str(path))


def reference_inputs(cfg, b=2, t=2, h=4, w=4, n_txt=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x, times, text, pooled = random_latents_and_text(cfg, gen, b, t, h, w, n_txt)
    # The guidance scale a float32 number too (osora float32(g)·1000, FLUX float32(1000·g)).
    guidance = (1 + 4 * torch.rand(b, generator=gen)).to(F64)
    return x, times, text, pooled, guidance, *position_ids(cfg, b, t, h, w, n_txt)


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
