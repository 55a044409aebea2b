"""Model, flow objective, shift schedule and sampler agree: a tiny MMDiT overfit on two latent
clips through the one training loop regenerates each from its own text with the sampler."""

import pytest
import torch

from osora.diffusion.sampler import make_noise, sample
from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.train.flow_objective import FlowObjective, LatentBatch
from osora.train.loop import LoopSettings, train

# A 4-channel latent keeps memorisation quick; two double and two single blocks.
CONFIG = MMDiTConfig(in_channels=4, patch_size=1, cond_channels=0, hidden_size=64, num_heads=4,
                     depth_double=2, depth_single=2, text_dim=32, vec_dim=32, axes_dims=(4, 6, 6))
STEPS = 500
pytestmark = pytest.mark.slow  # ~75 s on 2 cores


def clips_and_texts():
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, CONFIG.in_channels, 2, 4, 4, generator=g)  # (B, C, T, H, W)
    text = torch.randn(2, 4, CONFIG.text_dim, generator=g)  # (B, L, D)
    pooled = torch.randn(2, CONFIG.vec_dim, generator=g)
    return latents, text, pooled


def test_overfit_model_regenerates_its_clips_through_the_sampler():
    latents, text, pooled = clips_and_texts()
    torch.manual_seed(0)
    model = MMDiT(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.999), eps=1e-15,
                                  weight_decay=0.0)
    objective = FlowObjective(model, optimizer, patch_size=CONFIG.patch_size)
    batch = LatentBatch(latents, text, pooled)
    logged = []
    train(objective, lambda step: batch,
          LoopSettings(steps=STEPS, grad_clip=1.0, log_every=50, checkpoint_every=10**6,
                       warmup_steps=20, schedule="cosine"),
          log=lambda m, s: logged.append(m["dit/loss"]))
    assert logged[-1] < 0.2 * logged[0], logged

    model.eval()
    noise = make_noise(latents.shape[1:], [11, 12], device="cpu", dtype=torch.float32)
    with torch.no_grad():
        out = sample(model, noise, text, pooled, neg_text=torch.zeros_like(text),
                     neg_pooled=torch.zeros_like(pooled), steps=30, g_txt=1.0, g_img=1.0,
                     oscillation=False, dynamic_image=False,
                     patch_size=CONFIG.patch_size)  # (2, 4, 2, 4, 4)
    for i in range(2):
        own = (out[i] - latents[i]).norm() / latents[i].norm()
        other = (out[i] - latents[1 - i]).norm() / latents[1 - i].norm()
        assert own < 0.35 and own < 0.5 * other, (i, float(own), float(other))
