"""LPIPS (vgg): loads the released key layout from safetensors and matches a plain reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from osora.models.lpips import LPIPS

# torchvision vgg16 `features`: conv index → (out, in) channels, stage by stage.
VGG16_CONVS = [
    [(0, 64, 3), (2, 64, 64)],
    [(5, 128, 64), (7, 128, 128)],
    [(10, 256, 128), (12, 256, 256), (14, 256, 256)],
    [(17, 512, 256), (19, 512, 512), (21, 512, 512)],
    [(24, 512, 512), (26, 512, 512), (28, 512, 512)],
]
TINY = (4, 8, 8, 16, 16)


def _random_weights(widths, seed=0):
    """Trunk (`features.{i}.*`) and heads (`lin{k}.model.1.weight`) as released, random."""
    g = torch.Generator().manual_seed(seed)
    trunk, heads = {}, {}
    c_in = 3
    for k, (stage, width) in enumerate(zip(VGG16_CONVS, widths)):
        for index, _, _ in stage:
            std = (2.0 / (9 * c_in)) ** 0.5  # He init: features stay O(1) through the trunk
            trunk[f"features.{index}.weight"] = torch.randn(width, c_in, 3, 3, generator=g) * std
            trunk[f"features.{index}.bias"] = torch.randn(width, generator=g) * 0.1
            c_in = width
        # Released heads are non-negative (clamped in training).
        heads[f"lin{k}.model.1.weight"] = torch.rand(1, width, 1, 1, generator=g) / width
    return trunk, heads


@pytest.fixture
def tiny(tmp_path):
    trunk, heads = _random_weights(TINY)
    save_file(trunk, tmp_path / "trunk.safetensors")
    save_file(heads, tmp_path / "heads.safetensors")
    model = LPIPS.from_pretrained(tmp_path / "trunk.safetensors", tmp_path / "heads.safetensors")
    return model, trunk, heads, tmp_path


def reference_lpips(trunk, heads, x, y):
    """LPIPS written out plainly in float64: images (N, 3, H, W) in [-1, 1] → (N,)."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    fx = (x.double() - shift) / scale
    fy = (y.double() - shift) / scale
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for k, stage in enumerate(VGG16_CONVS):
        if k > 0:
            fx, fy = F.max_pool2d(fx, 2), F.max_pool2d(fy, 2)
        for index, _, _ in stage:
            w = trunk[f"features.{index}.weight"].double()
            b = trunk[f"features.{index}.bias"].double()
            fx = F.relu(F.conv2d(fx, w, b, padding=1))
            fy = F.relu(F.conv2d(fy, w, b, padding=1))
        nx = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        weight = heads[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)
        per_pixel = ((nx - ny) ** 2 * weight).sum(dim=1)  # (N, h, w)
        total += per_pixel.mean(dim=(1, 2))
    return total


def _pair(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(shape, generator=g)).clamp(-1, 1)
    return x, y


def test_matches_plain_reference(tiny):
    model, trunk, heads, _ = tiny
    x, y = _pair((3, 3, 40, 48))
    ref = reference_lpips(trunk, heads, x, y)
    assert (ref > 0).all()
    got32 = model(x, y)
    assert got32.dtype == torch.float32 and got32.shape == (3,)
    assert torch.allclose(got32.double(), ref, rtol=0, atol=1e-6), (got32.double() - ref).abs()
    got64 = model.to(torch.float64)(x.double(), y.double())
    assert torch.allclose(got64, ref, rtol=0, atol=1e-12), (got64 - ref).abs()


def test_identity_symmetry_and_sign(tiny):
    model, *_ = tiny
    x, y = _pair((4, 3, 32, 32))
    assert torch.equal(model(x, x), torch.zeros(4))
    d_xy, d_yx = model(x, y), model(y, x)
    assert torch.allclose(d_xy, d_yx, rtol=0, atol=1e-7)
    assert (d_xy > 0).all()


def test_frozen_but_differentiable_in_input(tiny):
    model, *_ = tiny
    model.train()  # inside a training model: still deterministic (no dropout)
    assert all(not p.requires_grad for p in model.parameters())
    x, y = _pair((2, 3, 32, 32))
    x.requires_grad_(True)
    loss = model(x, y).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model(x, y), model(x, y))


def test_video_folds_frames_into_batch(tiny):
    model, *_ = tiny
    x, y = _pair((2, 3, 5, 32, 32))  # (B, 3, T, H, W)
    per_frame = model(x, y)
    assert per_frame.shape == (2, 5)
    for t in range(5):
        assert torch.allclose(per_frame[:, t], model(x[:, :, t], y[:, :, t]), atol=1e-7)


def test_full_vgg16_shapes_load(tmp_path):
    trunk, heads = _random_weights((64, 128, 256, 512, 512))
    # torchvision's classifier keys, as in a whole converted VGG16 state dict: ignored.
    trunk["classifier.0.weight"] = torch.zeros(8, 8)
    save_file(trunk, tmp_path / "vgg16.safetensors")
    save_file(heads, tmp_path / "vgg.safetensors")
    model = LPIPS.from_pretrained(tmp_path / "vgg16.safetensors", tmp_path / "vgg.safetensors")
    assert model.widths == (64, 128, 256, 512, 512)
    n_trunk = sum(p.numel() for name, p in model.named_parameters() if name.startswith("features"))
    assert n_trunk == 14_714_688  # VGG16's convolutional part
    x, y = _pair((1, 3, 32, 32))
    assert torch.allclose(
        model(x, y).double(), reference_lpips(trunk, heads, x, y), rtol=1e-5, atol=1e-6
    )


def test_lpips_package_key_layout_loads(tmp_path):
    """A full LPIPS-package state dict: trunk keys `net.slice{s}.{i}.*`, heads in one file."""
    trunk, heads = _random_weights(TINY)
    slice_of = {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4}
    renamed = {}
    for key, value in trunk.items():
        index = int(key.split(".")[1])
        renamed[f"net.slice{slice_of.get(index, 5)}.{key.split('.', 1)[1]}"] = value
    save_file(renamed, tmp_path / "lpips_trunk.safetensors")
    save_file(heads, tmp_path / "heads.safetensors")
    model = LPIPS.from_pretrained(
        tmp_path / "lpips_trunk.safetensors", tmp_path / "heads.safetensors"
    )
    x, y = _pair((2, 3, 32, 32))
    assert torch.allclose(model(x, y).double(), reference_lpips(trunk, heads, x, y), atol=1e-6)


@pytest.mark.parametrize(
    "role, key",
    [
        ("trunk", "features.12.bias"),
        ("heads", "lin3.model.1.weight"),
        ("trunk", "features.24.weight"),
    ],
)
def test_missing_key_is_named(tmp_path, role, key):
    trunk, heads = _random_weights(TINY)
    del (trunk if role == "trunk" else heads)[key]
    save_file(trunk, tmp_path / "t.safetensors")
    save_file(heads, tmp_path / "h.safetensors")
    with pytest.raises(ValueError) as err:
        LPIPS.from_pretrained(tmp_path / "t.safetensors", tmp_path / "h.safetensors")
    message = str(err.value)
    assert key in message
    assert str(tmp_path / ("t.safetensors" if role == "trunk" else "h.safetensors")) in message


def test_unexpected_and_mis_shaped_keys_are_named(tmp_path):
    trunk, heads = _random_weights(TINY)
    heads["lin5.model.1.weight"] = torch.ones(1, 4, 1, 1)
    heads["lin2.model.1.weight"] = torch.ones(1, 3, 1, 1)
    save_file(trunk, tmp_path / "t.safetensors")
    save_file(heads, tmp_path / "h.safetensors")
    with pytest.raises(ValueError) as err:
        LPIPS.from_pretrained(tmp_path / "t.safetensors", tmp_path / "h.safetensors")
    message = str(err.value)
    assert "unexpected keys (1): lin5.model.1.weight" in message
    assert "lin2.model.1.weight: expected (1, 8, 1, 1), got (1, 3, 1, 1)" in message


def test_bad_inputs(tiny):
    model, *_ = tiny
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="differ in shape"):
        model(x, torch.zeros(1, 3, 32, 16))
    with pytest.raises(ValueError, match="RGB"):
        model(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 16"):
        model(torch.zeros(1, 3, 8, 32), torch.zeros(1, 3, 8, 32))
