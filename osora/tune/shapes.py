"""What a probe trains on: for each bucket of a stage (its frame count in params/buckets.yaml),
one sample's latent shape at the stage's latent set, and the text length.

A bucket's spatial size is the largest-area size of the set's aspect ratios (every ratio has
area ≈ resolution², but rounding to whole patches differs): the batch that fits it fits every
ratio of the bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

from osora.train.buckets import bucket_size, parse_ratio


@dataclass(frozen=True)
class ProbeShape:
    frames: int  # the bucket's pixel frame count (its key in params/buckets.yaml; 1: images)
    latent: tuple[int, int, int, int]  # (C, T, h, w) of one sample, in latent units
    patch: int  # the DiT's spatial patch
    text_tokens: int

    @property
    def video_tokens(self) -> int:
        _, t, h, w = self.latent
        return t * (h // self.patch) * (w // self.patch)

    @property
    def tokens(self) -> int:
        return self.video_tokens + self.text_tokens


def bucket_shapes(settings, stage: str) -> list[ProbeShape]:
    """The shapes of `stage`'s buckets, most tokens first (the first is the reference)."""
    from osora.data.latents import autoencoder_spec
    from osora.sample.generate import video_latent_shape

    if stage not in settings.buckets.stages:
        raise ValueError(f"params/buckets.yaml has no stage {stage!r} to tune "
                         f"({', '.join(settings.buckets.stages)})")
    latent_set = settings.ae.latents.sets[settings.dit.train.stages[stage].latents]
    spec = autoencoder_spec(settings.ae)
    patch = settings.ae.autoencoder.dit_patch
    ratios = [parse_ratio(r) for r in latent_set.aspect_ratios or ["1:1"]]
    sizes = [bucket_size(1, 1, latent_set.resolution, spec.spatial_down * patch, r)
             for r in ratios]
    height, width = max(sizes, key=lambda hw: hw[0] * hw[1])
    shapes = [ProbeShape(frames, video_latent_shape(spec, frames, height, width), patch,
                         settings.dit.text.max_length)
              for frames in settings.buckets.stages[stage]]
    return sorted(shapes, key=lambda s: (-s.tokens, s.frames))
