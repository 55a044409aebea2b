"""Adversarial losses of Video DC-AE phase 2 (docs/recipe.md §2): hinge GAN loss, pure functions.

The hinge loss (Lim & Ye 2017, "Geometric GAN"; used by SAGAN, BigGAN, taming-transformers'
VQGAN and Open-Sora) trains the discriminator to push real logits above +1 and fake logits below
−1 and then stops caring — a margin, so a discriminator that already separates a patch gets no
gradient from it and cannot run its logits off to infinity. The generator (here the autoencoder)
just raises the logits of its reconstructions.

Convention: the discriminator loss is HALVED, 0.5·(E[relu(1 − D(real))] + E[relu(1 + D(fake))]),
as in taming-transformers (`taming/modules/losses/vqperceptual.py`) and Open-Sora
(`opensora/models/vae/losses.py`), whose discriminator learning rate (1e-4) the recipe reuses:
the loss is the mean of its real and fake halves, so it reads 1 at chance (all logits 0) and 0
once every patch is separated by the margin, and its gradient has the scale the recipe's lr was
tuned with. The generator loss is not halved: −E[D(fake)].

Logits are averaged over every element (batch and all patch positions), in float32 at least, so
bf16 logits do not lose the small differences between large sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss, halved: 0.5·(mean(relu(1 − real)) + mean(relu(1 + fake))).

    real_logits / fake_logits: the discriminator's logits for real clips and for (detached)
    reconstructions, any shapes (they may differ). Returns a scalar in [0, ∞): 1 when every
    logit is 0, 0 when every real logit is ≥ 1 and every fake logit ≤ −1.
    """
    loss_real = F.relu(1.0 - _f32(real_logits)).mean()
    loss_fake = F.relu(1.0 + _f32(fake_logits)).mean()
    return 0.5 * (loss_real + loss_fake)


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: −mean(fake_logits), the discriminator's logits for reconstructions
    (not detached: the gradient flows through the discriminator into the autoencoder; only the
    autoencoder's optimizer steps on it). Unbounded below, a scalar."""
    return -_f32(fake_logits).mean()
