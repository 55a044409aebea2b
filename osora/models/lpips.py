"""LPIPS, the learned perceptual distance (Zhang et al. 2018), "vgg" variant: a metric and a loss.

Video autoencoders train on L1 + 0.5·LPIPS and report LPIPS in their reconstruction tables
(docs/recipe.md §2). The layout follows the released LPIPS v0.1 model exactly:

1. scaling: x in [-1, 1] → (x − shift) / scale, per RGB channel (the LPIPS constants below);
2. a VGG16 trunk, tapped after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3;
3. per tap: unit-normalise each pixel's channel vector (x / (‖x‖₂ + 1e-10)), square the
   difference of the two inputs' features, weigh channels with a 1×1 head (non-negative
   weights in the release, no bias), average over space;
4. sum over the five taps.

State-dict names match the originals, so released weights load as they are:
- trunk `features.{i}.weight/.bias` as in torchvision's `vgg16().features` (conv indices
  0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28);
- heads `lin{k}.model.1.weight`, shape (1, C_k, 1, 1), as in the LPIPS release's `vgg.pth`.
  The release's `model.0` is a Dropout; here it is an Identity so the distance is deterministic
  in train mode too (it is a frozen loss inside a training model).

No weights are downloaded. Convert the official files to safetensors once, on a machine that has
them, and pass the local paths to `LPIPS.from_pretrained`::

    import torch
    from osora.weights import save_weights
    # torchvision's ImageNet VGG16 (vgg16-397923af.pth): a plain state dict; keep the trunk
    vgg = torch.load("vgg16-397923af.pth", map_location="cpu", weights_only=True)
    save_weights({k: v for k, v in vgg.items() if k.startswith("features.")},
                 "vgg16_features.safetensors")
    # the LPIPS release's linear heads (lpips/weights/v0.1/vgg.pth): lin0..lin4.model.1.weight
    heads = torch.load("vgg.pth", map_location="cpu", weights_only=True)
    save_weights(heads, "lpips_vgg_heads.safetensors")

`from_pretrained` also takes a trunk file in the LPIPS package's layout (`net.slice{s}.{i}.*`,
renamed to `features.{i}.*`) and ignores torchvision's `classifier.*` keys in a trunk file, so a
whole VGG16 state dict works as a trunk file too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

# LPIPS's input scaling, per RGB channel, for inputs in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # in the unit-normalisation: x / (‖x‖ + EPS)

VGG16_WIDTHS = (64, 128, 256, 512, 512)
_CONVS_PER_STAGE = (2, 2, 3, 3, 3)
_MIN_SIZE = 16  # four 2× max-pools before the last tap


def _vgg16_layers(widths: Sequence[int]) -> tuple[list[nn.Module], list[int], list[int]]:
    """torchvision's vgg16 `features[:30]`.

    Returns the layers and, as indices into them, the taps (after each stage's last ReLU) and
    each stage's first conv.
    """
    layers: list[nn.Module] = []
    taps: list[int] = []
    firsts: list[int] = []
    c_in = 3
    for stage, (width, n_convs) in enumerate(zip(widths, _CONVS_PER_STAGE)):
        if stage > 0:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        firsts.append(len(layers))
        for _ in range(n_convs):
            layers.append(nn.Conv2d(c_in, width, kernel_size=3, padding=1))
            layers.append(nn.ReLU())
            c_in = width
        taps.append(len(layers) - 1)
    return layers, taps, firsts


class _LinHead(nn.Module):
    """1×1 conv, no bias, C → 1; `model.1` keeps the released key `lin{k}.model.1.weight`."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit_normalize(x: torch.Tensor) -> torch.Tensor:
    norm = torch.sqrt(torch.sum(x * x, dim=1, keepdim=True))  # (N, 1, h, w)
    return x / (norm + EPS)


class LPIPS(nn.Module):
    """Perceptual distance between two images or videos in [-1, 1]; frozen, differentiable.

    forward(x, y): (B, 3, H, W) → (B,); (B, 3, T, H, W) → (B, T), one distance per frame
    (frames are folded into the batch). Mean it for a loss; average over frames per video for
    the reconstruction tables. Inputs are cast to the weights' dtype.
    """

    def __init__(self, widths: Sequence[int] = VGG16_WIDTHS):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"LPIPS: widths must be 5 positive channel counts, got {widths}")
        self.widths = widths
        layers, taps, _ = _vgg16_layers(widths)
        self._tap_indices = frozenset(taps)
        self.features = nn.Sequential(*layers)
        for k, width in enumerate(widths):
            self.add_module(f"lin{k}", _LinHead(width))
        self.requires_grad_(False)
        self.eval()

    @property
    def heads(self) -> list[_LinHead]:
        return [getattr(self, f"lin{k}") for k in range(len(self.widths))]

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS: inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.ndim not in (4, 5) or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects RGB images (B, 3, H, W) or videos (B, 3, T, H, W) in [-1, 1], "
                f"got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < _MIN_SIZE:
            raise ValueError(
                f"LPIPS needs frames of at least {_MIN_SIZE}×{_MIN_SIZE} pixels (VGG16 pools "
                f"four times), got {tuple(x.shape[-2:])}"
            )

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised feature maps of images (N, 3, H, W)."""
        shift = torch.tensor(SHIFT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        scale = torch.tensor(SCALE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        h = (x - shift) / scale  # (N, 3, H, W)
        taps = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self._tap_indices:
                taps.append(_unit_normalize(h))  # (N, C_k, H / 2^k, W / 2^k)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(x, y)
        video = x.ndim == 5
        if video:
            b, _, t = x.shape[:3]
            x = x.transpose(1, 2).flatten(0, 1)  # (B·T, 3, H, W)
            y = y.transpose(1, 2).flatten(0, 1)
        dtype = self.features[0].weight.dtype
        n = x.shape[0]
        # Both inputs in one batch through the trunk.
        taps = self._taps(torch.cat([x.to(dtype), y.to(dtype)]))  # [(2N, C_k, h_k, w_k)]
        dist = x.new_zeros(n, dtype=dtype)
        for head, f in zip(self.heads, taps):
            diff = (f[:n] - f[n:]) ** 2  # (N, C_k, h_k, w_k)
            dist = dist + head(diff).mean(dim=(1, 2, 3))  # (N,)
        return dist.view(b, t) if video else dist

    @classmethod
    def from_pretrained(cls, trunk_path: str | os.PathLike, heads_path: str | os.PathLike) -> LPIPS:
        """LPIPS with a VGG16 trunk and linear heads read from local safetensors files.

        The trunk widths come from the file, so a reduced trunk (tests) loads the same way.
        Raises ValueError naming the file and its missing / unexpected / mis-shaped keys.
        """
        from osora.weights import load_weights
        from osora.weights.safetensors_io import state_dict_problems

        trunk = _canonical_trunk(load_weights(trunk_path))
        heads = dict(load_weights(heads_path))
        widths = []
        for conv in _vgg16_layers(VGG16_WIDTHS)[2]:
            w = trunk.get(f"features.{conv}.weight")
            if w is None or w.ndim != 4:
                raise ValueError(
                    f"LPIPS trunk file {trunk_path}: missing key features.{conv}.weight (the "
                    f"first conv of a VGG16 stage); found {_preview(trunk)}"
                )
            widths.append(w.shape[0])
        model = cls(widths)
        expected = model.state_dict()
        problems = []
        for role, path, given, prefix in (
            ("trunk", trunk_path, trunk, "features."),
            ("heads", heads_path, heads, "lin"),
        ):
            want = {k: v for k, v in expected.items() if k.startswith(prefix)}
            problems += [f"{role} file {path}: {p}" for p in state_dict_problems(want, given)]
        if problems:
            raise ValueError(
                "LPIPS weights do not fit the VGG16 LPIPS model:\n  " + "\n  ".join(problems)
            )
        model.load_state_dict({**trunk, **heads})
        return model


_SLICE_KEY = re.compile(r"^net\.slice[1-5]\.(\d+)\.(weight|bias)$")


def _canonical_trunk(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trunk keys as `features.{i}.*`: renames LPIPS-package keys, drops torchvision's head."""
    out = {}
    for key, value in state.items():
        match = _SLICE_KEY.match(key)
        if match:
            key = f"features.{match.group(1)}.{match.group(2)}"
        elif key.startswith("classifier."):
            continue  # torchvision's VGG16 classifier: not part of the LPIPS trunk
        out[key] = value
    return out


def _preview(state: Mapping[str, torch.Tensor], n: int = 6) -> str:
    keys = sorted(state)
    more = f", … ({len(keys)} keys)" if len(keys) > n else ""
    return (", ".join(keys[:n]) + more) if keys else "no tensors"
