"""3D PatchGAN discriminator for phase 2 of Video DC-AE training (docs/recipe.md §2).

Phase 2 adds 0.05·hinge adversarial loss (osora.models.losses) from a 3D discriminator trained
with its own AdamW (lr 1e-4). The discriminator sees whole clips, so it can penalise temporal
artefacts (flicker, smeared motion) that per-frame L1 + LPIPS miss; it answers per patch, not
per clip, so it judges local texture and motion, the things L1 blurs, and its loss does not
depend on the clip size.

Layout (pix2pix's PatchGAN, Isola et al. 2017, made 3D):

    conv k×k×k, stride (st₀, 2, 2)                    → LeakyReLU           (no norm: raw pixels)
    conv k×k×k, stride (stᵢ, 2, 2) → norm → LeakyReLU → dropout   for each further width
    conv k×k×k, stride 1           → norm → LeakyReLU → dropout   (widens the receptive field)
    conv k×k×k, stride 1 → 1 channel: one logit per space-time patch

`stᵢ` is 2 where `temporal_down[i]`, else 1. Every conv has 'same' padding k // 2, so a stride-2
conv maps a length n to ceil(n / 2): any T ≥ 1 works, and a single frame (an image, 20% of the
reference's training batches) stays one frame without special cases. With n strided convs of
which n_t halve time:

    (B, 3, T, H, W) in [-1, 1] → logits (B, 1, ceil(T / 2^n_t), ceil(H / 2^n), ceil(W / 2^n))

H and W must be at least 2^n (`Discriminator3D.min_size`): below that the deepest strided convs
would only halve zero padding and the logits would judge padding, not pixels. Odd sizes are fine.

Reference: Open-Sora v2's `NLayerDiscriminator3D` (`opensora/models/vae/discriminator.py`,
`configs/vae/train/video_dc_ae_disc.py`: n_layers=5, ndf=64, kernel 3, BatchNorm3d, dropout 0.3,
time halved by the first two convs, convs before a norm without bias, N(0, 0.02) init). The paper
config below has exactly its layers: same `main.{i}.*` state-dict keys and shapes, so a reference
checkpoint loads as it is (tests/models/test_discriminator.py checks this). Choices of
this implementation: the norm is configurable — "batch" as in the reference; with the recipe's
batch of 1 video per GPU that normalises each video over its own T·H·W positions, i.e. per sample
(keep the discriminator in train mode: in eval mode BatchNorm switches to running statistics);
"group" (GroupNorm) is batch-independent by construction, so it behaves the same in train and
eval mode, for any batch size and whether real and fake clips go through in one batch or two;
"none" for a plain conv stack. MAGVIT-v2 and Open-Sora 1.2 used a StyleGAN-style residual
discriminator with blur-pool and a final Linear over the flattened clip instead; its Linear ties
the discriminator to one clip size, which a PatchGAN avoids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NORMS = ("batch", "group", "none")


@dataclass(frozen=True)
class Discriminator3DConfig:
    """The defaults are the paper's discriminator (DISCRIMINATOR_F32T4)."""

    in_channels: int = 3
    # one strided conv per entry (space ×½ each), then a stride-1 conv at widths[-1] and the head
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    # per strided conv: halve time too? None: the first two do (the reference: 4× in time)
    temporal_down: tuple[bool, ...] | None = None
    kernel_size: int = 3  # odd: 'same' padding k // 2 maps a length n to ceil(n / 2) at stride 2
    norm: str = "batch"  # one of NORMS; the first conv never has a norm (it sees raw pixels)
    # "group": gcd(norm_groups, width) groups per layer; a group normalises its channels over all
    # T'·H'·W' positions of one sample, so it needs > 1 value even at the deepest, smallest grid
    norm_groups: int = 32
    negative_slope: float = 0.2  # LeakyReLU
    dropout: float = 0.3  # after each normed activation, as in the reference

    def __post_init__(self):
        # lists from YAML params become tuples, so configs stay hashable and comparable
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        n = len(self.widths)
        if self.temporal_down is None:
            object.__setattr__(self, "temporal_down", tuple(i < 2 for i in range(n)))
        else:
            object.__setattr__(self, "temporal_down", tuple(bool(t) for t in self.temporal_down))
        if n < 1:
            raise ValueError("Discriminator3DConfig: widths needs at least one entry")
        if self.in_channels < 1 or min(self.widths) < 1:
            raise ValueError(
                f"Discriminator3DConfig: channel counts must be ≥ 1, got in_channels="
                f"{self.in_channels}, widths={self.widths}"
            )
        if len(self.temporal_down) != n:
            raise ValueError(
                f"Discriminator3DConfig: temporal_down has {len(self.temporal_down)} flags, widths "
                f"has {n} entries; give one flag per strided conv (or None: the first two)"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"Discriminator3DConfig: kernel_size must be odd and ≥ 1 (for 'same' padding), "
                f"got {self.kernel_size}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"Discriminator3DConfig: norm={self.norm!r}; use one of {NORMS}")
        if self.norm_groups < 1:
            raise ValueError(
                f"Discriminator3DConfig: norm_groups must be ≥ 1, got {self.norm_groups}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"Discriminator3DConfig: dropout must be in [0, 1), got {self.dropout}"
            )


# Open-Sora v2's phase-2 discriminator (N_Layer_discriminator_3D, n_layers=5): 18.8M parameters;
# a 32×256×256 clip → 8×8×8 patch logits (4× time, 32× space: the DC-AE's own compression).
DISCRIMINATOR_F32T4 = Discriminator3DConfig()
# A CPU-sized discriminator for tests (same layout, 4 strided convs, GroupNorm): 74K parameters.
# 4 groups, so a group keeps 4–8 channels even where a 16×16 crop has shrunk to one position.
DISCRIMINATOR_TINY = Discriminator3DConfig(
    widths=(8, 16, 32, 32), norm="group", norm_groups=4, dropout=0.0
)


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels)
    return nn.Identity()


class Discriminator3D(nn.Module):
    """Video (B, C, T, H, W) in [-1, 1] → patch logits (B, 1, T', H', W'); see the module doc.

    Positive logits say "real". Train it with `hinge_d_loss(D(x), D(x_rec.detach()))` and the
    autoencoder with `hinge_g_loss(D(x_rec))` (osora.models.losses).
    """

    def __init__(self, config: Discriminator3DConfig = DISCRIMINATOR_TINY):
        super().__init__()
        cfg = self.config = config
        k, pad, normed = cfg.kernel_size, cfg.kernel_size // 2, cfg.norm != "none"
        layers: list[nn.Module] = []
        cin = cfg.in_channels
        strides = [(2 if t else 1, 2, 2) for t in cfg.temporal_down] + [(1, 1, 1)]
        widths = cfg.widths + cfg.widths[-1:]  # the stride-1 conv keeps the last width
        for i, (cout, stride) in enumerate(zip(widths, strides)):
            # a conv followed by a norm needs no bias: the norm's shift replaces it
            layers.append(nn.Conv3d(cin, cout, k, stride, pad, bias=i == 0 or not normed))
            if i > 0:
                layers.append(_norm(cfg.norm, cout, cfg.norm_groups))
            layers.append(nn.LeakyReLU(cfg.negative_slope))
            if i > 0 and cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            cin = cout
        layers.append(nn.Conv3d(cin, 1, k, 1, pad))  # the head: one logit per patch
        self.main = nn.Sequential(*layers)
        self.init_weights()

    @property
    def min_size(self) -> int:
        """Smallest height / width: 2^(number of strided convs)."""
        return 2 ** len(self.config.widths)

    def init_weights(self) -> None:
        """The reference (pix2pix / taming) init: conv weights ~ N(0, 0.02), norm scales 1,
        biases 0. Small weights make the untrained discriminator answer ≈ 0 everywhere, so both
        hinge terms start near 1 and neither side begins saturated."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def output_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T, H, W) of a clip → (T', H', W') of its logits; ValueError if it is too small."""
        s = self.min_size
        if frames < 1 or height < s or width < s:
            raise ValueError(
                f"Discriminator3D: cannot judge {frames} frames of {height}×{width}: it needs at "
                f"least 1 frame and frames of at least {s}×{s} pixels ({len(self.config.widths)} "
                f"strided convs each halve height and width). Fix: feed larger crops, or use a "
                f"config with fewer widths."
            )
        t, h, w = frames, height, width
        for i, (cout, halve_t) in enumerate(zip(self.config.widths, self.config.temporal_down)):
            t, h, w = -(-t // 2) if halve_t else t, -(-h // 2), -(-w // 2)  # ceil divisions
            if self.config.norm == "group" and i > 0:
                self._check_group_size(cout, t * h * w, (frames, height, width))
        return t, h, w

    def _check_group_size(self, channels: int, positions: int, thw: tuple[int, ...]) -> None:
        """GroupNorm normalises each group's (channels / groups)·positions values per sample; a
        single value would always normalise to 0 and the discriminator would output a constant
        with no gradient — a silent failure, so refuse it."""
        per_group = channels // math.gcd(self.config.norm_groups, channels)
        if per_group * positions < 2:
            raise ValueError(
                f"Discriminator3D: at {thw[0]} frames of {thw[1]}×{thw[2]} a GroupNorm group of "
                f"the {channels}-channel layers would hold a single value ({per_group} channel × "
                f"{positions} position), which normalises to 0. Fix: feed larger crops or set "
                f"norm_groups below {channels}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config.in_channels
        if x.ndim != 5 or x.shape[1] != c:
            raise ValueError(
                f"Discriminator3D: expected a video batch (B, {c}, T, H, W) in [-1, 1], got shape "
                f"{tuple(x.shape)}; give images a time axis with x[:, :, None]"
            )
        self.output_size(*x.shape[2:])
        return self.main(x)  # (B, 1, T', H', W')
