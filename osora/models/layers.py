"""Norm layers shared by the models.

Each norm computes in float32 at least (float64 stays float64) and returns the input's dtype,
so bf16 training normalises as precisely as fp32. RMSNorm runs osora.kernels.rms_norm (fused
Triton on GPUs, its torch reference elsewhere); the MMDiT's LayerNorm + adaLN modulation is
osora.kernels.modulate.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMS norm over the last dimension with a learned scale (FLUX's QK norm).

    (..., D) → (..., D): x / sqrt(mean(x², -1) + eps) · weight.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        if dim < 1:
            raise ValueError(f"RMSNorm: dim must be ≥ 1, got {dim}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from osora.kernels import rms_norm  # the fused Triton op on GPUs, torch elsewhere

        return rms_norm(x, self.weight, self.eps)


class ChannelRMSNorm(nn.Module):
    """RMS norm over the channel dimension (dim 1) of a channels-first tensor.

    (B, C, *spatial) → same shape: x / sqrt(mean over C of x² + eps) · weight + bias, with
    weight and bias per channel. Works for any number of spatial dims (2D images, 3D video):
    the reference DC-AE's `rms2d` / `rms3d` norms, bias included.
    """

    def __init__(self, channels: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        if channels < 1:
            raise ValueError(f"ChannelRMSNorm: channels must be ≥ 1, got {channels}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.weight.shape[0]:
            raise ValueError(
                f"ChannelRMSNorm: expected (B, {self.weight.shape[0]}, ...), got {tuple(x.shape)}"
            )
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        xf = xf * torch.rsqrt(xf.square().mean(dim=1, keepdim=True) + self.eps)
        view = (1, -1) + (1,) * (x.ndim - 2)  # broadcast per-channel params over (B, C, ...)
        out = xf.to(x.dtype) * self.weight.view(view)
        if self.bias is not None:
            out = out + self.bias.view(view)
        return out
