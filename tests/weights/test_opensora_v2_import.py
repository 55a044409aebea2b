"""Open-Sora v2 → osora MMDiT import: a tiny random checkpoint in Open-Sora v2's module tree
(separate q/k/v projections, `v_mlp`, `cond_in`, Liger rotate-half RoPE) gives, through
`load_opensora_v2`, the model that computes the reference's function (float64), for the
released layout and for `fused_qkv=True` / interleaved targets; errors, export.

`RefOpenSora` below is written from hpcaitech/Open-Sora v2 `opensora/models/mmdit/model.py`
(MMDiTModel: img_in + cond_in, prepare_block_inputs), `layers.py` (SelfAttention with
q_proj/k_proj/v_proj or qkv, DoubleStreamBlockProcessor, SingleStreamBlockProcessor with
q_proj/k_proj/v_mlp, RMSNorm `.scale`, LigerEmbedND, LastLayer) and `math.py` (liger_rope;
LigerRopeFunction applies HF-Llama rotate_half), kept in float64; the modules it shares with
FLUX are in flux_family_reference.py. It shares no code with osora.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
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

from osora.models.mmdit import MMDIT_11B, MMDiT, MMDiTConfig
from osora.weights.opensora_v2 import (
    convert_opensora_v2_state_dict,
    load_opensora_v2,
    opensora_v2_key_map,
    opensora_v2_reference_names,
)
from osora.weights.safetensors_io import load_weights, save_weights

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
# The reference: Open-Sora v2's MMDiTModel (the shared modules in flux_family_reference)


def liger_embed(ids, axes_dim, theta):  # LigerEmbedND: (B, L, 3) → cos, sin (B, L, D)
    cos, sin = [], []
    for i, dim in enumerate(axes_dim):
        out = rope_angles(ids[..., i], dim, theta)
        cos.append(out.cos())
        sin.append(out.sin())
    return torch.cat(cos, -1).repeat(1, 1, 2), torch.cat(sin, -1).repeat(1, 1, 2)


def liger_rope(x, cos, sin):  # LigerRopeFunction = HF-Llama q·cos + rotate_half(q)·sin
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]


class RefOpenSora(RefMMDiT):
    """MMDiTModel(cond_embed=True, guidance_embed=False, use_liger_rope=True)."""

    def __init__(self, cfg: MMDiTConfig, fused: bool = False):
        super().__init__()
        d, p = cfg.hidden_size, cfg.patch_size
        self.axes_dim, self.theta = cfg.axes_dims, cfg.theta
        in_channels = cfg.in_channels * p**2  # the reference's in_channels: packed features
        self.img_in = nn.Linear(in_channels, d)
        self.time_in = MLPEmbedderRef(256, d)
        self.vector_in = MLPEmbedderRef(cfg.vec_dim, d)
        self.cond_in = nn.Linear(in_channels + p**2, d)
        self.txt_in = nn.Linear(cfg.text_dim, d)
        self.add_blocks(cfg, in_channels, fused)

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond):
        img = self.img_in(img) + self.cond_in(cond)
        vec = self.time_in(ref_timestep_embedding(timesteps)) + self.vector_in(y_vec)
        txt = self.txt_in(txt)
        cos, sin = liger_embed(torch.cat((txt_ids, img_ids), dim=1), self.axes_dim, self.theta)
        return self.run_blocks(img, txt, vec, functools.partial(liger_rope, cos=cos, sin=sin))


def random_opensora(cfg=CFG, fused=False, seed=0) -> RefOpenSora:
    torch.manual_seed(seed)
    return randomise(RefOpenSora(cfg, fused))


def reference_inputs(cfg, b=2, t=3, h=4, w=4, n_txt=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x, times, text, pooled = random_latents_and_text(cfg, gen, b, t, h, w, n_txt)
    # i2v-head condition as the reference builds it: cat(masks, masked_ref) along channels
    masks = torch.zeros(b, 1, t, h, w, dtype=F64)
    masks[:, :, 0] = 1
    ref_latent = torch.randn(b, cfg.in_channels, t, h, w, generator=gen, dtype=F64)
    cond = torch.cat((masks, masks * ref_latent), dim=1)
    return x, times, text, pooled, cond, *position_ids(cfg, b, t, h, w, n_txt)


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
