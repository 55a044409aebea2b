"""osora's MMDiT as a torchtitan model: its args (BaseModelArgs) and the model class
(ModelProtocol) — which is an `osora.models.mmdit.MMDiT`, not a copy of it.

Flavours (`--model.flavor`):
- "tiny": params/dit.yaml's model (the CPU profile: 16 latent channels, patch 1, width 64,
  MiniLM text features).
- "paper": params/profiles/paper/dit.yaml's model, Open-Sora 2.0's 11B MMDiT (MMDIT_11B).
- "paper_d4": the paper's width (3072, 24 heads, T5/CLIP text dims, patch 2 on HunyuanVAE
  latents) with 4 double + 4 single blocks, ≈1.98B parameters: one GPU's worth of the real
  architecture, for throughput and MFU checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn
from torchtitan.protocols.model import BaseModelArgs, ModelProtocol

from osora.models.mmdit import MMDIT_TINY, MMDiT, MMDiTConfig, train_step_flops

PAPER_D4_DEPTH = (4, 4)  # (double, single) blocks of the "paper_d4" flavour


@dataclass
class OsoraMMDiTArgs(BaseModelArgs):
    """An MMDiTConfig plus the bucket shape whose FLOPs per token torchtitan's MFU uses."""

    mmdit: MMDiTConfig = field(default_factory=lambda: MMDIT_TINY)
    latent_frames: int = 4  # latent T, H, W and text tokens L of the MFU shape
    latent_height: int = 8
    latent_width: int = 8
    text_tokens: int = 16

    def update_from_config(self, job_config, **kwargs) -> None:
        """Take the bucket shape from the job's [osora] section (osora.titan.job_config)."""
        from osora.titan.job_config import osora_options

        opts = osora_options(job_config)
        self.latent_frames, self.latent_height = opts.latent_frames, opts.latent_height
        self.latent_width, self.text_tokens = opts.latent_width, opts.text_tokens
        p = self.mmdit.patch_size
        if self.latent_height % p or self.latent_width % p:
            raise ValueError(f"[osora] latent {self.latent_height}×{self.latent_width} is not "
                             f"a multiple of the flavour's patch size {p}")

    @property
    def video_tokens(self) -> int:
        """Video tokens N = T·(H/p)·(W/p) of the bucket."""
        p = self.mmdit.patch_size
        return self.latent_frames * (self.latent_height // p) * (self.latent_width // p)

    def get_nparams_and_flops(self, model: nn.Module, seq_len: int) -> tuple[int, int]:
        """(parameters, training FLOPs per token) — osora's `train_step_flops` of one sample of
        the bucket over its L + N tokens, so torchtitan's tflops / MFU equal osora's own
        (osora.train.throughput). torchtitan's `seq_len` is not used: a token here is a text or
        video token of the [osora] bucket."""
        nparams = sum(p.numel() for p in model.parameters())
        seq = self.video_tokens + self.text_tokens
        flops = train_step_flops(self.mmdit, 1, self.video_tokens, self.text_tokens)
        return nparams, round(flops / seq)  # 6·P_blocks + 12·layers·seq·hidden: an integer


class OsoraMMDiT(ModelProtocol, MMDiT):
    """osora's MMDiT built from OsoraMMDiTArgs: same modules, parameter names, forward and
    initialisation (it is an `MMDiT`, so osora's checkpointing, FSDP units, context-parallel
    forward and weight export apply unchanged)."""

    def __init__(self, model_args: OsoraMMDiTArgs):
        # MMDiT.__init__'s super().__init__() resolves to nn.Module (ModelProtocol's __init__
        # only calls it too): the module tree is exactly MMDiT's.
        MMDiT.__init__(self, model_args.mmdit)
        self.model_args = model_args

    @torch.no_grad()
    def init_weights(self, buffer_device: torch.device | None = None) -> None:
        """osora's training-from-scratch initialisation (MMDiT.init_weights). The MMDiT has no
        buffers (RoPE frequencies are computed per forward), so buffer_device is unused."""
        MMDiT.init_weights(self)


def flavours() -> dict[str, OsoraMMDiTArgs]:
    """The flavours, read from osora's params (module doc)."""
    from osora.config import load_settings

    tiny = load_settings("tiny").dit.model
    paper = load_settings("paper").dit.model
    double, single = PAPER_D4_DEPTH
    paper_d4 = dataclasses.replace(paper, depth_double=double, depth_single=single)
    return {name: OsoraMMDiTArgs(mmdit=cfg)
            for name, cfg in (("tiny", tiny), ("paper", paper), ("paper_d4", paper_d4))}
