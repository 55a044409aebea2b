"""Export to diffusers and back (osora.weights.diffusers_export, osora.diffusers): a random tiny
MMDiT checkpoint with the tiny DC-AE (and the tiny HunyuanVideo VAE) and the packaged MiniLM.

Independent references: osora's own sampler (`VideoSampler`, `osora sample`) for the frames,
osora's `sampling_timesteps` for the scheduler, osora's HunyuanVAE for diffusers' VAE, the
original checkpoint file for the import."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo, AutoModel, FlowMatchEulerDiscreteScheduler

from osora.cli import main
from osora.config import load_settings
from osora.diffusers import OsoraDCAE, OsoraPipeline, OsoraTransformer
from osora.diffusers.scheduler import set_osora_timesteps
from osora.diffusion.flow import latent_shift
from osora.diffusion.sampler import sampling_timesteps
from osora.models.dcae import DCAE
from osora.models.hunyuan_vae import HUNYUAN_VAE_TINY, HunyuanVAE
from osora.models.lora import add_lora, lora_config
from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.models.text import build_text_encoder, text_encoder_identity
from osora.sample.generate import (
    Guidance,
    VideoSampler,
    to_uint8_frames,
    video_latent_shape,
)
from osora.sample.outputs import write_sample
from osora.weights.autoencoder import load_dcae, save_dcae
from osora.weights.diffusers_export import (
    MMDIT_PREFIX,
    import_diffusers,
    write_diffusers_folder,
)
from osora.weights.lora import merge_lora, save_lora
from osora.weights.mmdit import load_mmdit, save_mmdit
from osora.weights.safetensors_io import load_weights, read_metadata

REPO = Path(__file__).resolve().parents[2]
SETTINGS = load_settings(params_dir=REPO / "params")
TEXT = SETTINGS.dit.text
# 8 frames of 32×32: DC-AE latent (16, 2, 8, 8), 16 tokens a frame at patch 2
SIZE = dict(num_frames=8, height=32, width=32)
CALL = dict(num_inference_steps=3, fps=16, motion_score=4, **SIZE)
PROMPTS = ["a red square moves right", "a blue circle falls"]
SEED = 42


def random_mmdit(dtype=torch.float32) -> MMDiT:
    """The tiny profile's MMDiT with weights large enough that text and time matter."""
    torch.manual_seed(0)
    model = MMDiT(SETTINGS.dit.model)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model.to(dtype)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(checkpoint, DCAE) with the checkpoint's text encoder recorded, as training writes it."""
    folder = tmp_path_factory.mktemp("models")
    ckpt = save_mmdit(random_mmdit(), folder / "dit.safetensors",
                      text_encoder=text_encoder_identity(TEXT))
    torch.manual_seed(1)
    ae = DCAE(SETTINGS.ae.dcae)
    with torch.no_grad():
        for p in ae.parameters():
            p.normal_(0.0, 0.1)  # the init's 0.02 decodes to a flat grey
    save_dcae(ae, folder / "ae.safetensors")
    return ckpt, load_dcae(folder / "ae.safetensors", SETTINGS.ae.dcae)


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    ckpt, ae = models
    return write_diffusers_folder(ckpt, ae, TEXT, tmp_path_factory.mktemp("pipe") / "osora")


@pytest.fixture(scope="module")
def pipe(exported):
    return OsoraPipeline.from_pretrained(exported)


@pytest.fixture(scope="module")
def text_encoder():
    return build_text_encoder(TEXT)


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_folder_is_diffusers_layout_with_osora_classes(exported, models):
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == "OsoraPipeline"
    assert index["transformer"] == ["osora.diffusers.transformer", "OsoraTransformer"]
    assert index["vae"] == ["osora.diffusers.autoencoders", "OsoraDCAE"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["text_encoder_params"] == TEXT.model_dump()
    config = json.loads((exported / "transformer" / "config.json").read_text())
    assert config["text_encoder"] == text_encoder_identity(TEXT)
    assert MMDiTConfig(**{f.name: config[f.name] for f in dataclasses.fields(MMDiTConfig)}) \
        == SETTINGS.dit.model
    # osora's tensor names under the wrapper's submodule, values as in the checkpoint
    weights = load_weights(exported / "transformer" / "diffusion_pytorch_model.safetensors")
    original = load_weights(models[0])
    assert sorted(weights) == sorted(MMDIT_PREFIX + k for k in original)
    assert all(torch.equal(weights[MMDIT_PREFIX + k], v) for k, v in original.items())


def test_transformer_config_has_every_mmdit_field():
    """OsoraTransformer spells MMDiTConfig's fields out (diffusers reads its signature): none
    missing, none extra but the text encoder identity."""
    params = list(inspect.signature(OsoraTransformer.__init__).parameters)[1:]
    assert params == [f.name for f in dataclasses.fields(MMDiTConfig)] + ["text_encoder"]


def test_pipeline_gives_the_frames_of_osora_sampler_bit_for_bit(pipe, models, text_encoder):
    ckpt, ae = models
    out = pipe(PROMPTS, generator=generators([SEED, SEED + 1]), **CALL).frames
    sampler = VideoSampler(load_mmdit(ckpt), ae, text_encoder)
    z = sampler.latents(PROMPTS, [SEED, SEED + 1], frames=8, height=32, width=32, fps=16,
                        motion_score=4, guidance=Guidance(steps=3))
    reference = to_uint8_frames(sampler.decode(z)).numpy()  # (B, F, H, W, 3)
    assert out.dtype == np.uint8 and out.shape == (2, 8, 32, 32, 3)
    assert np.array_equal(out, reference)
    assert len(np.unique(out)) > 50  # a picture, not a constant
    # a batch of one, one generator: the sampler's latents for that seed
    latent = pipe(PROMPTS[1], generator=torch.Generator().manual_seed(SEED + 1),
                  output_type="latent", **CALL).frames
    alone = sampler.latents(PROMPTS[1:], [SEED + 1], frames=8, height=32, width=32, fps=16,
                            motion_score=4, guidance=Guidance(steps=3))
    assert torch.equal(latent, alone)


def test_pipeline_video_is_the_one_osora_sample_writes(pipe, models, tmp_path):
    """The real command: its mp4 is the encoding of the pipeline's frames (same bytes)."""
    ckpt, ae_path = models[0], models[0].parent / "ae.safetensors"
    assert main(["sample", "--checkpoint", str(ckpt), "--autoencoder", str(ae_path), "--out",
                 str(tmp_path / "cli"), "--prompt", PROMPTS[0], "--steps", "3", "--frames", "8",
                 "--height", "32", "--width", "32", "--fps", "16", "--motion-score", "4",
                 "--seed", str(SEED), "--no-progress"]) == 0
    frames = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(SEED), **CALL).frames
    ours = write_sample(tmp_path / "pipe", PROMPTS[0], 0, frames[0], 16, {})
    assert ours.read_bytes() == (tmp_path / "cli" / ours.name).read_bytes()


def test_pipeline_loaded_in_bfloat16_runs_close_to_float32(exported, pipe):
    half = OsoraPipeline.from_pretrained(exported, dtype=torch.bfloat16)
    assert half.transformer.dtype == half.vae.dtype == torch.bfloat16
    low, full = (p(PROMPTS[0], generator=torch.Generator().manual_seed(SEED), **CALL).frames
                 for p in (half, pipe))
    assert np.abs(low.astype(int) - full).mean() < 1.0  # of 255 levels (measured 0.13)


@pytest.mark.parametrize("latent", [(2, 8, 8), (33, 32, 32)])
def test_scheduler_sigmas_are_osora_schedule(pipe, latent):
    alpha = latent_shift(latent, patch_size=2)
    set_osora_timesteps(pipe.scheduler, 25, alpha)
    expected = sampling_timesteps(25, alpha)  # (26,) float64
    torch.testing.assert_close(pipe.scheduler.sigmas, expected.float(), rtol=0, atol=1.2e-7)


def test_a_call_leaves_its_schedule_on_the_scheduler(pipe):
    pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), output_type="latent", **CALL)
    alpha = latent_shift((16, 2, 8, 8), patch_size=2)
    torch.testing.assert_close(pipe.scheduler.sigmas, sampling_timesteps(3, alpha).float(),
                               rtol=0, atol=1.2e-7)


def test_pipeline_refuses_a_scheduler_with_another_shift(pipe):
    other = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)  # exponential
    with pytest.raises(ValueError, match="time_shift_type"):
        OsoraPipeline(pipe.transformer, pipe.vae, other, text_encoder_params=TEXT.model_dump())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_import_gives_the_original_checkpoint_back(dtype, models, tmp_path):
    original = save_mmdit(random_mmdit(dtype), tmp_path / "dit.safetensors",
                          text_encoder=text_encoder_identity(TEXT))
    folder = write_diffusers_folder(original, models[1], TEXT, tmp_path / "exported")
    exported = load_weights(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in exported.values()} == {dtype}  # exported in the checkpoint's dtype
    back = import_diffusers(folder, tmp_path / "back.safetensors")
    assert read_metadata(back) == read_metadata(original)
    a, b = load_weights(original), load_weights(back)
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert original.read_bytes() == back.read_bytes()


def test_a_folder_diffusers_saved_again_in_shards_imports_too(pipe, models, tmp_path):
    pipe.save_pretrained(tmp_path / "again", max_shard_size="1MB")
    shards = list((tmp_path / "again" / "transformer").glob("*.safetensors"))
    assert len(shards) > 1  # diffusers' sharded layout, with its index
    back = import_diffusers(tmp_path / "again", tmp_path / "back.safetensors")
    assert models[0].read_bytes() == back.read_bytes()


def test_cli_exports_and_imports(models, tmp_path):
    ckpt = models[0]
    out = tmp_path / "exported"
    assert main(["weights", "export", "diffusers", str(ckpt), str(out), "--autoencoder",
                 str(ckpt.parent / "ae.safetensors")]) == 0
    assert (out / "model_index.json").is_file() and (out / "vae" / "config.json").is_file()
    assert main(["weights", "import", "diffusers", str(out), str(tmp_path / "back.safetensors")]
                ) == 0
    assert ckpt.read_bytes() == (tmp_path / "back.safetensors").read_bytes()


def test_export_refuses_a_profile_with_another_text_encoder(models, tmp_path):
    other = TEXT.model_copy(update={"max_length": TEXT.max_length + 1})
    with pytest.raises(ValueError, match="trained with text encoder"):
        write_diffusers_folder(models[0], models[1], other, tmp_path / "x")


def test_diffusers_loads_the_transformer_on_its_own(exported, models):
    expected = load_mmdit(models[0]).state_dict()
    for model in (OsoraTransformer.from_pretrained(exported / "transformer"),
                  AutoModel.from_pretrained(str(exported), subfolder="transformer")):
        assert isinstance(model, OsoraTransformer)
        state = model.mmdit.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_dcae_component_is_osoras_dcae(pipe, models):
    assert isinstance(pipe.vae, OsoraDCAE)
    z = torch.randn(1, 16, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(pipe.vae.decode(z), models[1].decode(z))


# --------------------------------------------------------------------------------------------
# The HunyuanVideo VAE: diffusers' own AutoencoderKLHunyuanVideo in vae/


@pytest.fixture(scope="module")
def hunyuan_vae():
    torch.manual_seed(2)
    model = HunyuanVAE(HUNYUAN_VAE_TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def hunyuan_export(models, hunyuan_vae, tmp_path_factory):
    return write_diffusers_folder(models[0], hunyuan_vae, TEXT,
                                  tmp_path_factory.mktemp("hunyuan") / "osora")


def test_hunyuan_vae_loads_in_diffusers_and_decodes_as_osoras(hunyuan_export, hunyuan_vae):
    index = json.loads((hunyuan_export / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKLHunyuanVideo"]
    vae = AutoencoderKLHunyuanVideo.from_pretrained(hunyuan_export / "vae").double()
    vae.use_framewise_decoding = False  # osora decodes the clip whole
    ours = HunyuanVAE(HUNYUAN_VAE_TINY).double().eval()
    ours.load_state_dict(hunyuan_vae.state_dict())
    z = torch.randn(1, 16, 3, 4, 4, dtype=torch.float64)
    x = torch.rand(1, 3, 9, 32, 32, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z).sample, ours.decode(z))
        torch.testing.assert_close(vae.encode(x).latent_dist.mean, ours.encode(x))


def test_pipeline_with_hunyuan_vae_samples_as_osora(hunyuan_export, hunyuan_vae, models,
                                                     text_encoder):
    pipe = OsoraPipeline.from_pretrained(hunyuan_export)
    call = dict(CALL, num_frames=9)  # causal: 1 + 4k frames → latent (16, 3, 4, 4)
    latents = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(SEED),
                   output_type="latent", **call).frames
    frames = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(SEED), **call).frames
    sampler = VideoSampler(load_mmdit(models[0]), hunyuan_vae, text_encoder)
    assert video_latent_shape(hunyuan_vae, 9, 32, 32) == latents.shape[1:]
    z = sampler.latents(PROMPTS[:1], [SEED], frames=9, height=32, width=32, fps=16,
                        motion_score=4, guidance=Guidance(steps=3))
    assert torch.equal(latents, z)  # the same transformer and sampler
    reference = to_uint8_frames(sampler.decode(z)).numpy()
    # two VAE implementations in float32: the same frames up to one level of rounding
    assert frames.shape == reference.shape == (1, 9, 32, 32, 3)
    assert np.abs(frames.astype(int) - reference).max() <= 1


def test_a_merged_lora_fine_tune_exports_the_same_way(models, text_encoder, tmp_path):
    """A fine-tune's adapter merged into its base (what dit_finetune writes) exports and
    samples like any checkpoint: the pipeline's frames are the adapted model's."""
    base, ae = models
    adapted = add_lora(load_mmdit(base), lora_config(4, 8.0, 0.0, r".*_blocks\.\d+\..*qkv"))
    torch.manual_seed(3)
    with torch.no_grad():  # peft starts B at zero: give the adapters something to change
        for name, p in adapted.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    save_lora(adapted, tmp_path / "lora", base=base, text_encoder=text_encoder_identity(TEXT))
    merged = merge_lora(base, tmp_path / "lora", tmp_path / "merged.safetensors")
    folder = write_diffusers_folder(merged, ae, TEXT, tmp_path / "exported")
    frames = OsoraPipeline.from_pretrained(folder)(
        PROMPTS[0], generator=torch.Generator().manual_seed(SEED), output_type="latent",
        **CALL).frames
    sampler = VideoSampler(adapted.eval(), ae, text_encoder)  # the unmerged adapters
    reference = sampler.latents(PROMPTS[:1], [SEED], frames=8, height=32, width=32, fps=16,
                                motion_score=4, guidance=Guidance(steps=3))
    torch.testing.assert_close(frames, reference, rtol=1e-4, atol=1e-4)
    unadapted = VideoSampler(load_mmdit(base), ae, text_encoder).latents(
        PROMPTS[:1], [SEED], frames=8, height=32, width=32, fps=16, motion_score=4,
        guidance=Guidance(steps=3))
    assert (frames - unadapted).abs().max() > 1e-2  # the fine-tune is in the export
    assert import_diffusers(folder, tmp_path / "back.safetensors").read_bytes() \
        == merged.read_bytes()
