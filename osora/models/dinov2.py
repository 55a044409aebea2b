"""DINOv2 latent distillation for the Video DC-AE (docs/recipe.md §2): teacher, features, loss.

Open-Sora 2.0 aligns the encoder's third-stage features with DINOv2 features, so the latent
space picks up semantic structure a diffusion model learns faster on (the idea of VA-VAE, Yao
et al. 2025, "Reconstruction vs. Generation", and of REPA for DiT features). Here:

- the teacher is a frozen Hugging Face DINOv2 (`Dinov2Model`, or `Dinov2WithRegistersModel`)
  loaded from a local folder (`load_dinov2`); nothing is downloaded;
- `dinov2_patch_features` turns frames in [-1, 1] into its patch-token grid (N, D, h, w);
- `LatentDistillation` projects the student's stage features to the teacher's width with a
  learnable 1×1×1 conv (VA-VAE's "reverse projection": AE width → foundation-model width, so the
  latent itself is not forced to the teacher's width) and returns 1 − cosine similarity per
  space-time position, averaged. Cosine (not L2) aligns the direction of the features and leaves
  their scale to the reconstruction losses. VA-VAE's margin variant relu(1 − m − cos) is this with
  m = 0 (its first, "full alignment" phase).

Transformers is imported inside `load_dinov2` only: this module imports with torch alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# DINOv2 was trained on ImageNet-normalised RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


def load_dinov2(path: str | os.PathLike) -> nn.Module:
    """A frozen DINOv2 teacher (eval mode, no gradients) from a LOCAL Hugging Face folder.

    The folder is a `save_pretrained` layout (config.json + model.safetensors) of a `Dinov2Model`
    ("dinov2") or `Dinov2WithRegistersModel` ("dinov2_with_registers"). Make it once where the
    weights are, e.g. `Dinov2Model.from_pretrained("facebook/dinov2-base").save_pretrained(dir)`.
    Raises FileNotFoundError when the folder is missing, ValueError when it is not a DINOv2.
    """
    folder = Path(path)
    fix = (
        "give the local folder of a Hugging Face Dinov2Model saved with save_pretrained "
        "(config.json + model.safetensors); weights are never downloaded at run time"
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"DINOv2 teacher: no folder at {folder}; {fix}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"DINOv2 teacher: {folder} has no config.json, so it is no model; {fix}")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"DINOv2 teacher: cannot read {config_file}: {err}; {fix}") from None
    if model_type not in DINOV2_MODEL_TYPES:
        raise ValueError(
            f"DINOv2 teacher: {folder} holds a {model_type!r} model, not one of "
            f"{DINOV2_MODEL_TYPES}; {fix}"
        )

    import transformers

    cls = transformers.Dinov2Model
    if model_type == "dinov2_with_registers":
        cls = transformers.Dinov2WithRegistersModel
    try:
        # safetensors only: no pickle from outside is ever unpickled
        model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except OSError as err:
        raise ValueError(
            f"DINOv2 teacher: cannot load weights from {folder}: {err}; {fix}"
        ) from None
    model.requires_grad_(False)
    return model.eval()


def _patch_size(teacher: nn.Module) -> int:
    p = teacher.config.patch_size
    p = p if isinstance(p, int) else p[0]  # square patches in every released DINOv2
    return int(p)


def dinov2_patch_features(
    teacher: nn.Module, frames: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Frames (N, 3, H, W) in [-1, 1] → DINOv2 patch features (N, D, h, w).

    Frames are mapped to [0, 1], ImageNet-normalised and resized (bilinear, antialiased) to
    `size` = (H_s, W_s), multiples of the patch size p. Default size: H and W each rounded to the
    nearest multiple of p (at least p) — the least resampling that fits the patch grid, keeping
    the frames at the scale they came in (e.g. 256 → 252 with p = 14: an 18×18 grid). Pass
    `size` = (H'·p, W'·p) instead to get the student's grid directly (448 px for a 32×32 grid, at
    over 3× the teacher's tokens). DINOv2 interpolates its
    position embeddings to any grid. The result is the last layer's (layer-normed) patch tokens:
    the CLS token and any register tokens are dropped, the rest laid out as (h, w) = (H_s/p, W_s/p).
    Gradients flow to `frames` unless the caller wraps this in no_grad (LatentDistillation does).
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(
            f"dinov2_patch_features: expected RGB frames (N, 3, H, W) in [-1, 1], got shape "
            f"{tuple(frames.shape)}; fold time into the batch first"
        )
    p = _patch_size(teacher)
    H, W = frames.shape[-2:]
    if size is None:
        size = (max(p, round(H / p) * p), max(p, round(W / p) * p))
    hs, ws = size
    if hs < p or ws < p or hs % p or ws % p:
        raise ValueError(
            f"dinov2_patch_features: size {size} must be multiples of the teacher's patch size {p}"
        )
    param = next(teacher.parameters())
    x = frames.to(device=param.device, dtype=torch.float32)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = ((x + 1) / 2 - mean) / std  # (N, 3, H, W), ImageNet-normalised
    if (H, W) != (hs, ws):
        x = F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=False, antialias=True)
    tokens = teacher(pixel_values=x.to(param.dtype)).last_hidden_state  # (N, 1 + R + h·w, D)
    registers = getattr(teacher.config, "num_register_tokens", 0)
    patches = tokens[:, 1 + registers :]  # (N, h·w, D)
    h, w = hs // p, ws // p
    return patches.transpose(1, 2).reshape(patches.shape[0], -1, h, w)  # (N, D, h, w)


def encoder_stage_channels(widths: Sequence[int], stage: int) -> int:
    """Channels of DC-AE encoder stage `stage`'s output (`DCAE.encode_with_features`), given the
    DC-AE's `widths`: widths[stage + 1], since every stage but the last ends with a down block to
    the next width; widths[-1] for the last stage. The paper config's third stage (2): 512."""
    if not 0 <= stage < len(widths):
        raise ValueError(
            f"encoder_stage_channels: stage must be in [0, {len(widths) - 1}], got {stage}"
        )
    return int(widths[min(stage + 1, len(widths) - 1)])


class LatentDistillation(nn.Module):
    """1 − cos(proj(student features), DINOv2 features), per position, averaged.

    student_channels: width of the aligned encoder stage's output (`DCAE.encode_with_features`):
    `encoder_stage_channels(widths, stage)` — widths[stage + 1], not widths[stage].
    teacher_channels: the teacher's hidden size (`teacher.config.hidden_size`: 768 for DINOv2-B).

    The teacher is an argument of forward, not a submodule: it stays out of this module's state
    dict and optimizer, and one frozen teacher can serve several losses.
    """

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        if student_channels < 1 or teacher_channels < 1:
            raise ValueError(
                f"LatentDistillation: channel counts must be ≥ 1, got {student_channels} → "
                f"{teacher_channels}"
            )
        self.proj = nn.Conv3d(student_channels, teacher_channels, kernel_size=1)

    @staticmethod
    def frame_indices(student_frames: int, frames: int) -> torch.Tensor:
        """Which video frames the student's time steps are compared with.

        T' == T: every frame. T' < T (the stage halved time): the first frame of each group of
        s = T // T' frames, i.e. frames 0, s, 2s, … — the frame each latent step starts at.
        """
        if not 1 <= student_frames <= frames:
            raise ValueError(
                f"LatentDistillation: the student features have {student_frames} time steps but "
                f"the video has {frames} frames; an encoder stage cannot have more steps than "
                f"frames (pass the video the features came from)"
            )
        return torch.arange(student_frames) * (frames // student_frames)

    def forward(
        self, stage_features: torch.Tensor, video: torch.Tensor, teacher: nn.Module
    ) -> torch.Tensor:
        """stage_features (B, C, T', H', W'), video (B, 3, T, H, W) in [-1, 1] → scalar in [0, 2].

        Teacher features come per frame under no_grad, on the frames `frame_indices` picks, and
        are resized (bilinear) from the teacher's patch grid to (H', W').
        """
        if stage_features.ndim != 5 or stage_features.shape[1] != self.proj.in_channels:
            raise ValueError(
                f"LatentDistillation: expected stage features (B, {self.proj.in_channels}, T', H', "
                f"W'), got shape {tuple(stage_features.shape)}"
            )
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[0] != stage_features.shape[0]:
            raise ValueError(
                f"LatentDistillation: expected the video (B, 3, T, H, W) the features came from, "
                f"got {tuple(video.shape)} for features {tuple(stage_features.shape)}"
            )
        hidden = teacher.config.hidden_size
        if hidden != self.proj.out_channels:
            raise ValueError(
                f"LatentDistillation projects to {self.proj.out_channels} channels but the "
                f"teacher's hidden size is {hidden}; build it with teacher_channels={hidden}"
            )
        B, _, Tp, Hp, Wp = stage_features.shape
        idx = self.frame_indices(Tp, video.shape[2]).to(video.device)
        frames = video.index_select(2, idx).transpose(1, 2).flatten(0, 1)  # (B·T', 3, H, W)
        with torch.no_grad():
            target = dinov2_patch_features(teacher, frames).float()  # (B·T', D, h, w)
            if target.shape[-2:] != (Hp, Wp):
                target = F.interpolate(target, size=(Hp, Wp), mode="bilinear", align_corners=False)
            target = target.unflatten(0, (B, Tp)).transpose(1, 2)  # (B, D, T', H', W')
        student = self.proj(stage_features)  # (B, D, T', H', W')
        target = target.to(student.device)
        cos = F.cosine_similarity(student.float(), target, dim=1, eps=1e-8)  # (B, T', H', W')
        return (1.0 - cos).mean()
