"""safetensors export: bit-exact round trips, tied weights, atomic writes, clear load errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from osora.weights import load_weights, read_metadata, save_weights
from osora.weights.safetensors_io import ALIASES_KEY, COPIED_VIEWS_KEY


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor (compares NaN payloads, -0.0 and subnormals exactly)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_bit_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(_bytes(a), _bytes(b))


def _special_floats(dtype: torch.dtype) -> torch.Tensor:
    info = torch.finfo(dtype)
    values = torch.tensor(
        [0.0, -0.0, float("inf"), float("-inf"), float("nan"), info.max, info.min, info.tiny],
        dtype=dtype,
    )
    subnormal = torch.tensor([info.tiny], dtype=dtype) / 4
    # A NaN with a non-default payload, made from its bit pattern.
    nan_bits = {
        torch.float32: torch.tensor([0x7FC12345], dtype=torch.int32),
        torch.float16: torch.tensor([0x7E01], dtype=torch.int16),
        torch.bfloat16: torch.tensor([0x7FC1], dtype=torch.int16),
        torch.float64: torch.tensor([0x7FF8000000012345], dtype=torch.int64),
    }[dtype].view(dtype)
    return torch.cat([values, subnormal, nan_bits, torch.randn(50, dtype=torch.float64).to(dtype)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_float_round_trip_is_bit_exact(tmp_path, dtype):
    torch.manual_seed(0)
    tensors = {
        "special": _special_floats(dtype),
        "matrix": torch.randn(7, 5).to(dtype),
        "scalar": torch.tensor(3.25, dtype=dtype),
        "empty": torch.zeros(0, 3, dtype=dtype),
        "transposed": torch.randn(4, 6).to(dtype).t(),  # not contiguous
    }
    path = save_weights(tensors, tmp_path / "w.safetensors")
    loaded = load_weights(path)
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        _assert_bit_equal(loaded[name], t)
        if not torch.isnan(t).any():
            assert torch.equal(loaded[name], t)


@pytest.mark.parametrize(
    "dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool]
)
def test_int_round_trip_is_bit_exact(tmp_path, dtype):
    if dtype == torch.bool:
        t = torch.tensor([True, False, True, True])
    else:
        info = torch.iinfo(dtype)
        t = torch.tensor([info.min, -1 if info.min < 0 else 0, 0, 1, info.max], dtype=dtype)
    path = save_weights({"t": t, "grid": t.repeat(3, 1)}, tmp_path / "i.safetensors")
    loaded = load_weights(path)
    assert torch.equal(loaded["t"], t) and torch.equal(loaded["grid"], t.repeat(3, 1))
    _assert_bit_equal(loaded["t"], t)


class Tied(nn.Module):
    """A tiny language model whose output head shares the embedding matrix."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.block = nn.Linear(6, 6).to(torch.bfloat16)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.tensor([3, 1, 4], dtype=torch.int64))


def test_tied_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    path = save_weights(model, tmp_path / "tied.safetensors", metadata={"step": "7"})
    meta = read_metadata(path)
    assert meta["step"] == "7" and meta["format"] == "pt"
    assert json.loads(meta[ALIASES_KEY]) == {"head.weight": "embed.weight"}

    state = load_weights(path)
    for name, t in model.state_dict().items():
        _assert_bit_equal(state[name], t)
    # The alias is tied again in the returned state dict.
    assert state["head.weight"].data_ptr() == state["embed.weight"].data_ptr()

    fresh = Tied()
    result = load_weights(path, fresh)
    assert not result.missing_keys and not result.unexpected_keys
    assert fresh.head.weight is fresh.embed.weight  # still tied after loading
    for name, t in model.state_dict().items():
        _assert_bit_equal(fresh.state_dict()[name], t)


def test_deduplicated_file_loads_into_tied_model(tmp_path):
    """A file holding only one name of a tied pair (safetensors' save_model) still loads."""
    model = Tied()
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "head.weight"}
    save_file(state, tmp_path / "dedup.safetensors")
    fresh = Tied()
    load_weights(tmp_path / "dedup.safetensors", fresh)
    assert torch.equal(fresh.head.weight, model.embed.weight)


def test_overlapping_views_are_copied_and_recorded(tmp_path):
    buf = torch.arange(24, dtype=torch.float32)
    state = {"all": buf, "q": buf[:8], "k": buf[8:16].view(2, 4), "alias": buf}
    path = save_weights(state, tmp_path / "views.safetensors")
    meta = read_metadata(path)
    assert json.loads(meta[COPIED_VIEWS_KEY]) == ["q", "k"]
    assert json.loads(meta[ALIASES_KEY]) == {"alias": "all"}
    loaded = load_weights(path)
    for name, t in state.items():
        _assert_bit_equal(loaded[name], t)


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "w.safetensors"
    save_weights({"a": torch.ones(3)}, path)
    before = path.read_bytes()

    def crash_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_weights({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_metadata_must_be_strings_and_not_reserved(tmp_path):
    with pytest.raises(ValueError, match="str to str"):
        save_weights({"a": torch.ones(1)}, tmp_path / "m.safetensors", metadata={"step": 3})
    with pytest.raises(ValueError, match="reserved"):
        save_weights({"a": torch.ones(1)}, tmp_path / "m.safetensors", metadata={"osora.x": "1"})
    with pytest.raises(ValueError, match="not a tensor"):
        save_weights({"a": [1, 2]}, tmp_path / "m.safetensors")


def test_load_errors_list_missing_unexpected_and_shapes(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del state["1.bias"]
    state["0.weight"] = torch.zeros(5, 4)
    state["extra.scale"] = torch.ones(1)
    path = save_weights(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as err:
        load_weights(path, model)
    message = str(err.value)
    assert str(path) in message
    assert "missing keys (1): 1.bias" in message
    assert "unexpected keys (1): extra.scale" in message
    assert "shape mismatch for 0.weight: expected (3, 4), got (5, 4)" in message
    # strict=False forgives missing/unexpected keys, never a shape mismatch.
    with pytest.raises(ValueError, match="shape mismatch for 0.weight") as err:
        load_weights(path, model, strict=False)
    assert "missing keys" not in str(err.value)


def test_load_non_strict_reports_missing(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    path = save_weights({"0.weight": torch.ones(3, 4)}, tmp_path / "part.safetensors")
    result = load_weights(path, model, strict=False)
    assert set(result.missing_keys) == {"0.bias", "1.weight", "1.bias"}
    assert torch.equal(model[0].weight, torch.ones(3, 4))


def test_load_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_weights(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_weights(junk)


def test_equal_weights_give_equal_bytes(tmp_path):
    # safetensors' own writer orders the metadata differently on each save; osora's files are
    # byte-identical for equal weights and metadata (stable DVC hashes, exact round trips)
    weights = {"w": torch.randn(4, 3), "b": torch.arange(7)}
    metadata = {f"key{i}": f"välue {i}\n\"quoted\"" for i in range(12)}
    files = [save_weights(weights, tmp_path / f"{i}.safetensors", metadata=metadata)
             for i in range(4)]
    assert len({f.read_bytes() for f in files}) == 1
    assert read_metadata(files[0]) == {"format": "pt", **metadata}
    assert load_weights(files[0])["w"].equal(weights["w"])
