"""The offload modes on a CUDA device (osora.sample.placement): pinned host weights, copies on
a side stream, each MMDiT block's weights on the GPU only around its forward. The same videos
in every mode, and less GPU memory held by weights while denoising.

torch and osora's torch-only modules alone: the GPU check (bench/gpu_check.py) runs this file on
machines that have nothing else, so the text encoder is a small byte-level one defined here
(the packaged MiniLM needs transformers), a real module the placement moves like any other."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from osora.models.dcae import DCAE, DCAE_TINY
from osora.models.mmdit import MMDIT_TINY, MMDiT
from osora.models.text import TextEmbedding, TextEncoder
from osora.sample.generate import Guidance, VideoSampler

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
PROMPTS = ["a red square moves right", "a blue circle falls"]


class ByteEncoder(TextEncoder):
    """Prompts → embeddings of their UTF-8 bytes, padded to max_length (a tiny real encoder)."""

    def __init__(self, seq_dim: int, vec_dim: int, max_length: int = 16):
        self.seq_dim, self.vec_dim, self.max_length = seq_dim, vec_dim, max_length
        self.device, self.dtype = torch.device("cpu"), torch.float32
        torch.manual_seed(1)
        self.model = nn.ModuleDict({"bytes": nn.Embedding(256, seq_dim),
                                    "pool": nn.Linear(seq_dim, vec_dim)})

    @property
    def identity(self) -> str:
        return f"bytes-{self.seq_dim}-{self.vec_dim}-{self.max_length}"

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        device = self.model["bytes"].weight.device
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)  # (B, L)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            data = list(p.encode())[: self.max_length]
            ids[i, : len(data)], mask[i, : len(data)] = torch.tensor(data), True
        seq = self.model["bytes"](ids.to(device))  # (B, L, D_seq)
        pooled = self.model["pool"](seq.mean(dim=1))  # (B, D_vec)
        return TextEmbedding(seq, mask.to(device), pooled)


def sampler(mode: str) -> VideoSampler:
    torch.manual_seed(0)
    model = MMDiT(MMDIT_TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)  # the zero-initialised output layer would give zeros
    ae = DCAE(DCAE_TINY).eval()
    with torch.no_grad():
        for p in ae.parameters():
            p.normal_(0.0, 0.1)  # the init's small weights decode to a flat grey
    encoder = ByteEncoder(MMDIT_TINY.text_dim, MMDIT_TINY.vec_dim)
    if mode == "none":  # the caller puts everything on the device (osora/sample/run.py)
        model, ae = model.cuda(), ae.cuda()
        encoder.model.cuda()
    return VideoSampler(model, ae, encoder, device="cuda", offload=mode)


def videos(mode: str) -> tuple[torch.Tensor, int]:
    """(pixels (B, 3, F, H, W), peak GPU bytes while denoising)."""
    s = sampler(mode)
    kw = dict(frames=8, height=64, width=64, fps=16, motion_score=4, guidance=Guidance(steps=3))
    s.latents(PROMPTS, [0, 1], **kw)  # warm-up: kernels and allocator
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    z = s.latents(PROMPTS, [0, 1], **kw)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return s.decode(z).cpu(), peak


def test_every_offload_mode_gives_the_same_videos_on_cuda():
    reference, peak_none = videos("none")
    for mode in ("model", "sequential"):
        found, _ = videos(mode)
        assert torch.equal(found, reference), mode
    assert reference.std() > 0.01  # a picture, not a constant
    assert peak_none > 0


def test_sequential_holds_one_block_at_a_time_on_cuda():
    s = sampler("sequential")
    blocks = [*s.model.double_blocks, *s.model.single_blocks]
    seen: list[set[str]] = []

    def record(module, args):  # which blocks have GPU weights while this one starts
        seen.append({str(i) for i, b in enumerate(blocks)
                     if next(b.parameters()).device.type == "cuda"})

    for block in blocks:
        block.register_forward_pre_hook(record)
    s.latents(PROMPTS[:1], [0], frames=8, height=64, width=64, fps=16, motion_score=4,
              guidance=Guidance(steps=1))
    assert seen and all(len(on) <= 2 for on in seen)  # the running block and the next one
    assert all(next(b.parameters()).device.type == "cpu" for b in blocks)  # all released
    assert all(next(b.parameters()).is_pinned() for b in blocks)
