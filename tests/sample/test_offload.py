"""Sampling with the components offloaded (osora.sample.placement) on the tiny default, CPU: the
same seed gives bitwise the same latents and pixels in every offload mode (the CPU "device"
copies are real clones, so the swap bookkeeping is what is tested); the hooks keep each block's
copy only during its forward; the text encoder leaves the device before the MMDiT's first
forward; the sampler's tiled decode is tiling.tiled_decode's."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import torch

from osora.cli import main
from osora.config import load_settings
from osora.diffusion.conditioning import build_cond, condition_mask
from osora.media.frames import read_video
from osora.models.text import build_text_encoder
from osora.models.tiling import TileSpec, tiled_decode
from osora.sample.generate import Guidance, VideoSampler, video_latent_shape
from osora.sample.placement import OFFLOAD_MODES
from osora.weights.autoencoder import load_dcae
from osora.weights.mmdit import load_mmdit

REPO = Path(__file__).resolve().parents[2]
SETTINGS = load_settings(params_dir=REPO / "params")
SAMPLE = SETTINGS.dit.sample  # 16 frames of 80×80 → latent (16, 4, 20, 20)
PROMPTS = ["a red square moves right", "a blue circle falls"]


def make_sampler(models, offload: str, decode_tile: TileSpec | None = None) -> VideoSampler:
    ckpt, ae = models
    return VideoSampler(load_mmdit(ckpt), load_dcae(ae, SETTINGS.ae.dcae),
                        build_text_encoder(SETTINGS.dit.text), offload=offload,
                        decode_tile=decode_tile)


def condition(sampler: VideoSampler) -> torch.Tensor:
    """An i2v_head condition (1, C+1, T, h, w) from a fixed random first latent frame."""
    c, t, h, w = video_latent_shape(sampler.ae, SAMPLE.frames, SAMPLE.height, SAMPLE.width)
    latent = torch.zeros(1, c, t, h, w)
    latent[:, :, :1] = torch.randn(1, c, 1, h, w, generator=torch.Generator().manual_seed(3))
    return build_cond(latent, condition_mask("i2v_head", t))


def run(sampler: VideoSampler, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    z = sampler.latents(PROMPTS, [7, 8], frames=SAMPLE.frames, height=SAMPLE.height,
                        width=SAMPLE.width, fps=24, motion_score=4, guidance=Guidance(steps=2),
                        cond=cond)
    return z, sampler.decode(z)


def test_every_offload_mode_gives_bitwise_the_same_videos(models):
    outputs = {}
    for mode in OFFLOAD_MODES:
        sampler = make_sampler(models, mode)
        cond = condition(sampler)
        outputs[mode] = run(sampler, None) + run(sampler, cond)
    for mode in ("model", "sequential"):
        for got, want in zip(outputs[mode], outputs["none"], strict=True):
            assert torch.equal(got, want), mode
    t2v, i2v = outputs["none"][1], outputs["none"][3]
    assert (t2v - i2v).abs().mean() > 1e-3  # the condition reached the model


def test_sequential_blocks_hold_a_device_copy_only_in_their_forward(models):
    sampler = make_sampler(models, "sequential")
    placement = sampler.placement
    blocks = [*sampler.model.double_blocks, *sampler.model.single_blocks]
    weights = placement.streamer.weights
    seen, rest_on_device, copies = [], [], []

    def during(i):
        def hook(module, args):  # registered after the streamer's: the copy is in place
            others = [w.holds_host_tensors() for j, w in enumerate(weights) if j != i]
            seen.append((i, weights[i].holds_host_tensors(), all(others)))
            copies.append(weakref.ref(next(module.parameters()).data))
        return hook

    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(during(i))
    rest = placement.model_weights  # embedders and final layer: on the device while denoising
    sampler.model.register_forward_pre_hook(
        lambda m, a: rest_on_device.append(all(not w.holds_host_tensors() for w in rest)))
    run(sampler, None)
    model_calls = 2  # two steps, one call each
    assert [i for i, _, _ in seen] == list(range(len(blocks))) * model_calls
    assert all(not own and others for _, own, others in seen)
    assert rest_on_device == [True] * model_calls
    assert all(w.holds_host_tensors() for w in weights + rest)  # after the run
    gc.collect()
    assert all(ref() is None for ref in copies)  # every device copy was freed


def test_model_mode_moves_one_component_at_a_time(models):
    sampler = make_sampler(models, "model")
    p = sampler.placement
    events = []

    def record(name):
        def hook(module, args):
            events.append((name, {
                "text": not all(w.holds_host_tensors() for w in p.text),
                "mmdit": not p.model_weights[0].holds_host_tensors(),
                "ae": not p.ae_weights.holds_host_tensors(),
            }))
        return hook

    sampler.text_encoder.model.register_forward_pre_hook(record("text"))
    sampler.model.register_forward_pre_hook(record("mmdit"))
    sampler.ae.decoder.register_forward_pre_hook(record("ae"))
    run(sampler, None)
    names = [name for name, _ in events]
    assert names[0] == "text" and names[-1] == "ae" and names.count("mmdit") == 2
    assert names.index("mmdit") > max(i for i, n in enumerate(names) if n == "text")
    for name, on_device in events:  # the component computing is the only one on the device
        assert on_device == {k: k == name for k in on_device}, (name, on_device)
    assert not any(w.loaded for w in [*p.text, *p.model_weights, p.ae_weights])

    # prompts already in the cache move nothing: the text encoder stays off the device
    events.clear()
    run(sampler, None)
    assert "text" not in [name for name, _ in events]


def test_tiled_decode_through_the_sampler_is_tiling_tiled_decode(models):
    tile = TileSpec(spatial=32, temporal=None, overlap=0.25)  # 8 latents, stride 6
    tiled = make_sampler(models, "model", decode_tile=tile)
    shape = video_latent_shape(tiled.ae, SAMPLE.frames, SAMPLE.height, SAMPLE.width)
    z = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))  # DiT scale
    got = tiled.decode(z)  # (2, 3, F, H, W)
    with torch.no_grad():
        want = torch.cat([tiled_decode(tiled.ae, tiled.ae.from_dit(z[i:i + 1]), tile)
                          for i in range(2)])
        untiled = tiled.ae.decode(tiled.ae.from_dit(z))
        hard = torch.cat([tiled_decode(tiled.ae, tiled.ae.from_dit(z[i:i + 1]),
                                       TileSpec(32, None, 0.0)) for i in range(2)])
    assert torch.equal(got, want)
    err, seams = (got - untiled).abs().mean(), (hard - untiled).abs().mean()
    assert err < 0.05 * untiled.abs().mean()  # close to one pass
    assert err < 0.8 * seams  # and blending beats hard seams
    image = z[:, :, :1]  # one latent frame: t2i2v's first frame decodes in one pass
    with torch.no_grad():
        one_pass = torch.cat([tiled.ae.decode(tiled.ae.from_dit(image[i:i + 1]))
                              for i in range(2)])
    assert torch.equal(tiled.decode(image), one_pass)


def test_cli_offload_sequential_writes_the_videos_of_none(models, tmp_path):
    ckpt, ae = models
    for mode in ("none", "sequential"):
        assert main(["sample", "--checkpoint", str(ckpt), "--autoencoder", str(ae), "--out",
                     str(tmp_path / mode), "--steps", "2", "--no-progress", "--offload", mode,
                     "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]) == 0
    for p in PROMPTS:
        assert (read_video(tmp_path / "none" / f"{p}-0.mp4")
                == read_video(tmp_path / "sequential" / f"{p}-0.mp4")).all()

