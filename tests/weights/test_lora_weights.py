"""A LoRA adapter on disk (osora.weights.lora): only the adapter tensors, small, peft's own
config reader takes its config, a bit-exact round trip, the merged checkpoint equal to the
adapted model (float64), `osora weights merge-lora` the same, and an adapter refused on a base
it was not trained on."""

import copy
import dataclasses
import json

import pytest
import torch
from peft import LoraConfig

from osora.cli import main as osora
from osora.models.lora import adapter_state_dict, add_lora, lora_config, merge_into_base
from osora.models.mmdit import MMDIT_TINY, MMDiT
from osora.weights.lora import CONFIG_NAME, WEIGHTS_NAME, load_lora, merge_lora, save_lora
from osora.weights.mmdit import load_mmdit, save_mmdit, saved_text_encoder
from osora.weights.safetensors_io import load_weights, read_metadata

TARGETS = r".*_blocks\.\d+\.((img|txt)_attn\.(qkv|proj)|(img|txt)_mlp\.(0|2)|linear(1|2))"
RANK, ALPHA = 4, 8.0
TEXT_ENCODER = "minilm:test"


def random_mmdit(seed: int, config=MMDIT_TINY) -> MMDiT:
    """A float64 MMDiT whose every weight is non-zero (the adaLN-zero init would make every
    block the identity, hiding what the adapters do)."""
    torch.manual_seed(seed)
    model = MMDiT(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def adapted(model: MMDiT, seed: int = 1) -> MMDiT:
    """`model` with adapters whose A and B are both random (B starts at zero in training)."""
    add_lora(model, lora_config(RANK, ALPHA, 0.0, TARGETS))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def inputs(config=MMDIT_TINY):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, config.in_channels, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(2, generator=g, dtype=torch.float64)
    text = torch.randn(2, 5, config.text_dim, generator=g, dtype=torch.float64)
    pooled = torch.randn(2, config.vec_dim, generator=g, dtype=torch.float64)
    return x, t, text, pooled


@pytest.fixture
def saved(tmp_path):
    """(base checkpoint path, the adapted model, its adapter folder)."""
    base = save_mmdit(random_mmdit(0), tmp_path / "base.safetensors", text_encoder=TEXT_ENCODER)
    model = adapted(load_mmdit(base))
    folder = save_lora(model, tmp_path / "lora", base=base, text_encoder=TEXT_ENCODER)
    return base, model, folder


def test_the_adapter_file_holds_only_adapter_tensors_and_is_small(saved):
    base, model, folder = saved
    tensors = load_weights(folder / WEIGHTS_NAME)
    assert set(tensors) == set(adapter_state_dict(model))
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    # 4 double-block and 2 single-block linears of MMDIT_TINY, A and B each
    assert len(tensors) == 2 * (2 * 4 + 2)
    assert (folder / WEIGHTS_NAME).stat().st_size < 0.2 * base.stat().st_size
    metadata = read_metadata(folder / WEIGHTS_NAME)
    assert metadata["base_checkpoint"] == str(base)
    assert metadata["text_encoder"] == TEXT_ENCODER
    assert json.loads(metadata["mmdit_config"])["hidden_size"] == MMDIT_TINY.hidden_size


def test_peft_reads_the_saved_config(saved):
    base, _, folder = saved
    config = LoraConfig.from_pretrained(str(folder))  # peft's own reader, not osora's
    assert (config.r, config.lora_alpha, config.target_modules) == (RANK, ALPHA, TARGETS)
    assert config.base_model_name_or_path == str(base)
    assert json.loads((folder / CONFIG_NAME).read_text())["peft_type"] == "LORA"


def test_save_then_load_is_bit_exact(saved):
    base, model, folder = saved
    loaded = load_lora(load_mmdit(base), folder, base_path=base)
    want, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_the_merged_model_equals_the_adapted_one(saved, tmp_path):
    base, model, folder = saved
    x = inputs()
    with torch.no_grad():
        want = model(*x)
        merged = merge_into_base(copy.deepcopy(model))
        got = merged(*x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert list(merged.state_dict()) == list(MMDiT(MMDIT_TINY).state_dict())  # plain names

    # against the formula itself, on one layer: W + (alpha / r)·B·A
    layer = model.double_blocks[0].img_attn.qkv
    by_hand = (layer.base_layer.weight
               + ALPHA / RANK * layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
    torch.testing.assert_close(merged.double_blocks[0].img_attn.qkv.weight, by_hand,
                               rtol=0, atol=1e-15)

    out = merge_lora(base, folder, tmp_path / "merged.safetensors")
    from_files = load_mmdit(out)
    for name, tensor in merged.state_dict().items():
        assert torch.equal(from_files.state_dict()[name], tensor), name
    assert saved_text_encoder(out) == TEXT_ENCODER


def test_osora_weights_merge_lora_writes_the_merged_checkpoint(saved, tmp_path, capsys):
    base, _, folder = saved
    out = tmp_path / "cli.safetensors"
    assert osora(["weights", "merge-lora", str(base), str(folder), str(out)]) == 0
    reference = merge_lora(base, folder, tmp_path / "reference.safetensors")
    want = load_weights(reference)
    assert {k: torch.equal(v, want[k]) for k, v in load_weights(out).items()} == \
        dict.fromkeys(want, True)
    assert osora(["weights", "merge-lora", str(base), str(tmp_path), str(out)]) != 0
    assert "not a LoRA adapter folder" in capsys.readouterr().err


def test_an_adapter_is_refused_on_another_base(saved, tmp_path):
    base, _, folder = saved
    other_weights = save_mmdit(random_mmdit(5), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"was trained on .*base\.safetensors \(sha256 "
                       r"[0-9a-f]{64}\), not on .*other\.safetensors \(sha256 [0-9a-f]{64}\)"):
        merge_lora(other_weights, folder, tmp_path / "out.safetensors")

    deeper = dataclasses.replace(MMDIT_TINY, depth_single=2)
    other_config = save_mmdit(random_mmdit(0, deeper), tmp_path / "deeper.safetensors")
    with pytest.raises(ValueError, match=r"adapts another MMDiT: the adapter's config "
                       r"MMDiTConfig\(.*depth_single=1.*\) vs the base's MMDiTConfig\(.*"
                       r"depth_single=2"):
        merge_lora(other_config, folder, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
