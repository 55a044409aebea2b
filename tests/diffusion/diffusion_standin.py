"""Stand-ins with the MMDiT's forward, model(x, t, text, pooled, text_mask=None, cond=None) → v,
for the diffusion tests: a tiny conv net (a real, batch-independent network) and an oracle whose
velocity field is known in closed form."""

from __future__ import annotations

import torch
from torch import nn


class TinyVelocity(nn.Module):
    """A small 3D conv net on [x, cond], its features shifted by projections of t, the pooled
    vector and the (masked) mean text token. No batch statistics: samples are independent."""

    def __init__(self, channels: int = 3, d_txt: int = 8, d_vec: int = 6, width: int = 8):
        super().__init__()
        self.channels = channels
        self.conv_in = nn.Conv3d(2 * channels + 1, width, 3, padding=1)
        self.txt = nn.Linear(d_txt, width)
        self.vec = nn.Linear(d_vec, width)
        self.time = nn.Linear(1, width)
        self.conv_out = nn.Conv3d(width, channels, 3, padding=1)

    def forward(self, x, t, text, pooled, text_mask=None, cond=None):
        if text_mask is None:
            txt = text.mean(1)  # (B, D_txt)
        else:
            m = text_mask.to(text.dtype)[..., None]  # (B, L, 1)
            txt = (text * m).sum(1) / m.sum(1).clamp(min=1)
        if cond is None:
            b, c, t_, h, w = x.shape
            cond = x.new_zeros(b, c + 1, t_, h, w)
        h = self.conv_in(torch.cat([x, cond], 1))  # (B, W, T, H, W)
        emb = self.txt(txt) + self.vec(pooled) + self.time(t[:, None].to(x.dtype))  # (B, W)
        return self.conv_out(torch.tanh(h + emb[:, :, None, None, None]))


class Recorder(nn.Module):
    """Wraps a model and records each call's batch size and whether cond was None."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls: list[dict] = []

    def forward(self, x, t, text, pooled, text_mask=None, cond=None):
        self.calls.append({"batch": x.shape[0], "cond_none": cond is None,
                           "t": t.clone(), "mask_none": text_mask is None})
        return self.model(x, t, text, pooled, text_mask=text_mask, cond=cond)


class Oracle(nn.Module):
    """v = (x − target)/t: the exact velocity of the straight path from noise to `target`, so an
    Euler step from t to t' gives target + (x − target)·t'/t and the last step (t' = 0) lands on
    the target of that step. The target depends on the pass: targets[(prompt, conditioned)],
    prompt = the pooled vector equals `prompt_pooled` (else it is the negative prompt),
    conditioned = the sample's cond is not None and not all zero. Targets: (B, C, T, H, W)."""

    def __init__(self, prompt_pooled, targets: dict):
        super().__init__()
        self.prompt_pooled, self.targets = prompt_pooled, targets

    def forward(self, x, t, text, pooled, text_mask=None, cond=None):
        b = x.shape[0]
        reps = b // self.prompt_pooled.shape[0]
        is_prompt = (pooled == self.prompt_pooled.repeat(reps, 1)).all(1)  # (b,)
        has_cond = torch.zeros(b, dtype=torch.bool) if cond is None else \
            cond.flatten(1).ne(0).any(1)
        target = torch.empty_like(x)
        for i in range(b):
            full = self.targets[(bool(is_prompt[i]), bool(has_cond[i]))]
            target[i] = full[i % full.shape[0]]
        return (x - target) / t[:, None, None, None, None]
