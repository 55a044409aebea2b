"""Fused elementwise kernels for the MMDiT's hot paths, each beside its torch reference.

Each op is a `torch.library.custom_op` (`torch.ops.osora.<op>`) with a fake kernel and autograd
whose forward and backward are Triton kernels; the public functions here take the Triton op
where Triton runs (CUDA tensors with triton installed, or TRITON_INTERPRET=1) and the pure-torch
reference elsewhere. Importing this package needs torch only.

    rms_norm(x, weight, eps)            RMSNorm over the last dim (QK norm)
    apply_rope(x, cos, sin, layout)     rotary embedding, "interleaved" or "rotate_half" pairs
    modulate(x, shift, scale, eps)      LayerNorm (no affine) then x · (1 + scale) + shift

The functions shadow their modules' names as attributes of this package: reach a module with
`from osora.kernels.rms_norm import ...` or importlib.import_module("osora.kernels.rms_norm").
"""

from osora.kernels.modulate import modulate, modulate_reference
from osora.kernels.rms_norm import rms_norm, rms_norm_reference
from osora.kernels.rope import apply_rope, apply_rope_reference

__all__ = ["apply_rope", "apply_rope_reference", "modulate", "modulate_reference", "rms_norm",
           "rms_norm_reference"]
