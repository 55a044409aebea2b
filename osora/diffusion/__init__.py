"""Flow matching, conditioning, guidance and sampling of the MMDiT (docs/recipe.md §4–§5).

- flow: the resolution-dependent time shift α, logit-normal training timesteps, the noisy latent
  and the velocity loss. One shift function serves training and inference for any patch size.
- conditioning: the t2v / i2v / v2v frame masks, the [mask, mask·latent] condition tensor, the
  condition-kind draw and the image-condition and text dropouts of training.
- guidance: decoupled image/text guidance, its oscillation and the dynamic (per-frame) image scale.
- sampler: Euler on the shifted schedule with the guidance passes batched into one model call.

Pure functions with explicit generators; imports only torch.
"""
