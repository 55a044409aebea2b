"""The FLUX first frame of text→image→video: a tiny random FLUX checkpoint in FLUX's naming and a
tiny diffusers AutoencoderKL, against FLUX's own sampling loop written out here from
black-forest-labs/flux `sampling.py` (get_schedule: μ on the line (256, 0.5)–(4096, 1.15),
t ↦ e^μ / (e^μ + 1/t − 1); denoise: img += (t_prev − t_curr)·pred with the guidance vector) and
diffusers' decode with FLUX's latent scale and shift."""

import dataclasses
import math

import diffusers
import pytest
import torch
from safetensors.torch import save_file

from osora.diffusion.sampler import make_noise
from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.models.text import MiniLMEncoder
from osora.sample.first_frame import FluxFirstFrame, flux_shift
from osora.sample.placement import OFFLOAD_MODES
from osora.weights.flux import flux_key_map

TINY_FLUX = MMDiTConfig(in_channels=16, patch_size=2, cond_channels=0, hidden_size=64,
                        num_heads=4, depth_double=1, depth_single=1, text_dim=384, vec_dim=384,
                        axes_dims=(4, 6, 6), guidance_embed=True, rope_layout="interleaved")


def flux_schedule(steps: int, tokens: int) -> list[float]:
    m = (1.15 - 0.5) / (4096 - 256)
    mu = m * tokens + (0.5 - m * 256)
    ts = torch.linspace(1, 0, steps + 1).tolist()
    return [math.exp(mu) / (math.exp(mu) + (1 / t - 1)) if t > 0 else 0.0 for t in ts]


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux")
    torch.manual_seed(0)
    model = MMDiT(TINY_FLUX)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    state = model.state_dict()
    save_file({src[0]: state[name].contiguous() for name, src in
               flux_key_map(TINY_FLUX).items()}, str(folder / "flux1-tiny.safetensors"))
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=16, norm_num_groups=4,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False)
    vae.save_pretrained(folder / "vae")
    return model.eval(), folder


def test_flux_first_frame_is_fluxs_own_loop(flux_files):
    model, folder = flux_files
    text = MiniLMEncoder(max_length=16)
    ff = FluxFirstFrame.from_paths(folder / "flux1-tiny.safetensors", folder / "vae", text,
                                   TINY_FLUX, steps=4, guidance=3.5)
    image = ff.generate(["a red apple"], [5], 16, 16)  # (1, 3, 1, 16, 16)
    assert image.shape == (1, 3, 1, 16, 16)

    # FLUX's loop, by hand: noise of the seed, 2×2-patch tokens = (16/2 / 2)² = 16
    emb = text.encode(["a red apple"])
    x = make_noise((16, 1, 8, 8), [5])
    ts = flux_schedule(4, 16)
    with torch.no_grad():
        for t_curr, t_prev in zip(ts[:-1], ts[1:]):
            v = model(x, torch.full((1,), t_curr), emb.seq, emb.pooled,
                      guidance=torch.full((1,), 3.5))
            x = x + (t_prev - t_curr) * v
        vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae")
        ref = vae.decode(x[:, :, 0] / 0.3611 + 0.1159).sample.clamp(-1, 1)
    torch.testing.assert_close(image[:, :, 0], ref, rtol=1e-4, atol=1e-4)


def test_flux_shift_is_fluxs_mu():
    assert flux_shift(256) == pytest.approx(math.exp(0.5))
    assert flux_shift(4096) == pytest.approx(math.exp(1.15))


def test_flux_first_frame_needs_a_guidance_distilled_model(flux_files, tmp_path):
    _, folder = flux_files
    with pytest.raises(ValueError, match="guidance embedding"):
        FluxFirstFrame(MMDiT(dataclasses.replace(TINY_FLUX, guidance_embed=False)),
                       diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
                       MiniLMEncoder(max_length=16), steps=2, guidance=3.5)
    with pytest.raises(FileNotFoundError, match="diffusers AutoencoderKL folder"):
        FluxFirstFrame.from_paths(folder / "flux1-tiny.safetensors", tmp_path, None,
                                  TINY_FLUX, steps=2, guidance=3.5)


def test_flux_first_frame_is_the_same_in_every_offload_mode(flux_files):
    """Offloading (osora.sample.placement) moves FLUX's transformer and VAE per phase; the
    image is bitwise the same."""
    _, folder = flux_files
    images = {}
    for mode in OFFLOAD_MODES:
        ff = FluxFirstFrame.from_paths(folder / "flux1-tiny.safetensors", folder / "vae",
                                       MiniLMEncoder(max_length=16), TINY_FLUX, steps=2,
                                       guidance=3.5, offload=mode)
        images[mode] = ff.generate(["a red apple", "a green pear"], [5, 6], 16, 16)
    assert torch.equal(images["model"], images["none"])
    assert torch.equal(images["sequential"], images["none"])
