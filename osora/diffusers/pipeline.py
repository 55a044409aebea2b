"""`OsoraPipeline`: `osora sample`'s text-to-video as a diffusers `DiffusionPipeline`.

Components (model_index.json): `transformer` (OsoraTransformer), `vae` (OsoraDCAE, or
diffusers' AutoencoderKLHunyuanVideo), `scheduler` (FlowMatchEulerDiscreteScheduler in osora's
configuration, osora.diffusers.scheduler). The text encoder is kept by reference:
`text_encoder_params` in model_index.json is params/dit.yaml:text (osora.config.dit.TextParams),
and the encoder is built from it with osora's `build_text_encoder` on first use (local folders;
pass `text_encoder_params=` to `from_pretrained` to point elsewhere). The encoder must be the one
the transformer was trained with (its config's `text_encoder` identity).

A call does what `osora sample` does for t2v — the prompt in the training format
(`conditioned_text`: fps and motion score appended), the negative prompt, osora's sampler
(`osora.diffusion.sampler.sample`, decoupled guidance, shift α of the latent shape) and the AE's
decode — so the same noise gives the same frames. Noise: `torch.randn((C, T, h, w),
generator=g)` per video, which for g = torch.Generator().manual_seed(s) is osora's
`make_noise(shape, s)`, i.e. `osora sample`'s video for seed s. The scheduler is set to the
same schedule (`scheduler.sigmas` after a call are the times used, in float32); the steps run
in osora's sampler, whose float64 times make the result bit-identical to `osora sample`.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKLHunyuanVideo, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput

from osora.config.dit import TextParams
from osora.diffusers.autoencoders import HunyuanVideoVAEView, OsoraDCAE
from osora.diffusers.scheduler import check_scheduler, set_osora_timesteps
from osora.diffusers.transformer import OsoraTransformer
from osora.diffusion.flow import latent_shift
from osora.models.text import EmbeddingCache, TextEncoder, build_text_encoder
from osora.sample.generate import Guidance, VideoSampler, to_uint8_frames, video_latent_shape

OUTPUT_TYPES = ("np", "pt", "latent")


class OsoraPipelineOutput(BaseOutput):
    """frames: "np" (B, F, H, W, 3) uint8 numpy — the frames `osora sample` encodes; "pt" the
    same as a torch tensor; "latent" the DiT-scale latents (B, C, T, h, w)."""

    frames: np.ndarray | torch.Tensor


class OsoraPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "transformer->vae"

    def __init__(self, transformer: OsoraTransformer,
                 vae: OsoraDCAE | AutoencoderKLHunyuanVideo,
                 scheduler: FlowMatchEulerDiscreteScheduler,
                 text_encoder_params: dict | None = None):
        super().__init__()
        check_scheduler(scheduler)
        if isinstance(vae, AutoencoderKLHunyuanVideo):
            # osora decodes the whole clip; diffusers' default temporal windows would blend
            # overlapping windows and give other frames (set it back to save memory)
            vae.use_framewise_decoding = False
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler)
        self.register_to_config(text_encoder_params=text_encoder_params)
        self._text_encoder: TextEncoder | None = None  # built on first use
        self._embeddings = EmbeddingCache()  # keyed by the encoder's identity

    @property
    def autoencoder(self):
        """The vae as osora's `VideoAutoencoder` (encode/decode raw latents, to_dit/from_dit)."""
        return self.vae if isinstance(self.vae, OsoraDCAE) else HunyuanVideoVAEView(self.vae)

    def text_encoder_on(self, device: torch.device) -> TextEncoder:
        """osora's text encoder from `text_encoder_params`, built once (on `device`)."""
        encoder = self._text_encoder
        if encoder is None or encoder.device != torch.device(device):
            if self.config.text_encoder_params is None:
                raise ValueError("this pipeline has no text_encoder_params: pass "
                                 "text_encoder_params=<params/dit.yaml:text as a dict> to "
                                 "from_pretrained (`osora weights export diffusers` writes it)")
            params = TextParams.model_validate(self.config.text_encoder_params)
            encoder = build_text_encoder(params, device)
            trained_with = self.transformer.config.text_encoder
            if trained_with is not None and trained_with != encoder.identity:
                raise ValueError(f"the transformer was trained with text encoder {trained_with}; "
                                 f"text_encoder_params give {encoder.identity}: point them at "
                                 "that encoder's folders")
            self._text_encoder = encoder
        return encoder

    def prepare_noise(self, shape: tuple[int, ...], batch: int,
                      generator: torch.Generator | list[torch.Generator] | None
                      ) -> torch.Tensor:
        """(B, C, T, h, w) float32: video i is randn(shape) from generator[i] (one generator:
        drawn video after video; None: torch's global generator)."""
        generators = generator if isinstance(generator, list) else [generator] * batch
        if len(generators) != batch:
            raise ValueError(f"give one generator per prompt: {batch} prompts, "
                             f"{len(generators)} generators")
        return torch.stack([torch.randn(shape, generator=g,
                                        device=g.device if g is not None else "cpu")
                            for g in generators])  # (B, C, T, h, w)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, num_frames: int, height: int, width: int,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 image_guidance_scale: float = 3.0, negative_prompt: str = "",
                 oscillation: bool = True, dynamic_image: bool = True, fps: float = 24,
                 motion_score: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "np", return_dict: bool = True):
        """Text → video, as `osora sample` (t2v): guidance_scale is the text scale g_txt,
        image_guidance_scale g_img (used by conditioned models' image pass; t2v runs classic
        CFG), oscillation / dynamic_image as params/dit.yaml:sample; fps and motion_score are
        stated in the prompt (the training format). Returns `OsoraPipelineOutput(frames)` (see
        its doc for output_type), or (frames,) when return_dict is False."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r}: use one of {OUTPUT_TYPES}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = self._execution_device
        encoder, cache = self.text_encoder_on(device), self._embeddings
        # checks the AE's latent channels and the encoder's widths against the transformer
        sampler = VideoSampler(self.transformer.mmdit, self.autoencoder, encoder, device=device,
                               cache=cache)
        shape = video_latent_shape(sampler.ae, num_frames, height, width)  # (C, T, h, w)
        noise = self.prepare_noise(shape, len(prompts), generator).to(device)
        alpha = latent_shift(noise.shape, self.transformer.mmdit_config.patch_size)
        set_osora_timesteps(self.scheduler, num_inference_steps, alpha, device)
        guidance = Guidance(num_inference_steps, image_guidance_scale, guidance_scale,
                            oscillation, dynamic_image, negative_prompt)
        with self.progress_bar(total=num_inference_steps) as bar:
            latents = sampler.latents(prompts, frames=num_frames, height=height, width=width,
                                      fps=fps, motion_score=motion_score, guidance=guidance,
                                      noise=noise, progress=lambda info: bar.update())
        if output_type == "latent":
            frames = latents
        else:
            # the latents in the vae's dtype (a pipeline loaded with dtype=bfloat16)
            pixels = sampler.decode(latents.to(self.vae.dtype))  # (B, 3, F, H, W)
            frames = to_uint8_frames(pixels)  # (B, F, H, W, 3) uint8
            if output_type == "np":
                frames = frames.numpy()
        self.maybe_free_model_hooks()
        return OsoraPipelineOutput(frames=frames) if return_dict else (frames,)
