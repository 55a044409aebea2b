"""`osora sample` end to end on the tiny default: a random tiny MMDiT checkpoint and DC-AE
written here, the packaged MiniLM text encoder, real ffmpeg output. What is checked against an
independent reference: the condition frames against the AE's own encoding of ffmpeg-scaled
pixels, the seeds against `make_noise`, the outputs against ffprobe."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from osora.cli import main
from osora.config import load_settings
from osora.diffusion.conditioning import CONDITION_KINDS
from osora.fileio import file_sha256
from osora.media.ffmpeg import ffmpeg_exe
from osora.media.probe import probe
from osora.models.text import build_text_encoder
from osora.sample.conditions import media_condition, read_media
from osora.sample.generate import Guidance, VideoSampler, video_latent_shape
from osora.sample.outputs import read_sidecar, sample_stem
from osora.weights.autoencoder import load_dcae
from osora.weights.mmdit import load_mmdit

REPO = Path(__file__).resolve().parents[2]
SETTINGS = load_settings(params_dir=REPO / "params")
SAMPLE = SETTINGS.dit.sample  # 16 frames of 80×80 → latent (16, 4, 20, 20)


@pytest.fixture(scope="module")
def sampler(models):
    ckpt, ae = models
    return VideoSampler(load_mmdit(ckpt), load_dcae(ae, SETTINGS.ae.dcae),
                        build_text_encoder(SETTINGS.dit.text))


def sample_cli(models, out, *extra) -> int:
    ckpt, ae = models
    return main(["sample", "--checkpoint", str(ckpt), "--autoencoder", str(ae), "--out",
                 str(out), "--steps", "3", "--no-progress", *extra])


def ffmpeg_image(path: Path, size: str, frames: int = 1) -> Path:
    """testsrc (colour bars, a moving counter) from ffmpeg itself: a png, or an mp4 clip."""
    args = ["-frames:v", str(frames)] + (["-pix_fmt", "yuv420p"] if frames > 1 else [])
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size={size}:rate=24", *args, str(path)], check=True)
    return path


def test_cli_writes_vbench_named_videos_and_sidecars(models, tmp_path):
    prompts = ["a red square moves right", "a blue circle falls"]
    assert sample_cli(models, tmp_path, "--prompt", prompts[0], "--prompt", prompts[1],
                      "--num-samples", "2", "--motion-score", "6") == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{p}-{i}.{ext}" for p in prompts for i in (0, 1)
                           for ext in ("mp4", "json"))
    for p in prompts:
        for i in (0, 1):
            video = tmp_path / f"{p}-{i}.mp4"
            info = probe(video)
            assert (info.num_frames, info.width, info.height) == (SAMPLE.frames, SAMPLE.width,
                                                                  SAMPLE.height)
            assert info.fps == pytest.approx(SAMPLE.fps)
            side = read_sidecar(video)
            assert side["prompt"] == p and side["index"] == i and side["kind"] == "t2v"
            assert side["seed"] == SAMPLE.seed + i
            assert side["text_as_seen"] == f"{p} {SAMPLE.fps} FPS, 6 motion score."
            assert side["settings"]["steps"] == 3 and side["settings"]["motion_score"] == 6
            assert side["checkpoint"]["sha256"] == file_sha256(models[0])
    # the prompt reaches the model: different prompts, same seed → different videos
    a = (tmp_path / f"{prompts[0]}-0.mp4").read_bytes()
    assert a != (tmp_path / f"{prompts[1]}-0.mp4").read_bytes()


def test_same_seed_same_video_and_batch_does_not_matter(sampler):
    kw = dict(frames=SAMPLE.frames, height=SAMPLE.height, width=SAMPLE.width, fps=24,
              motion_score=4, guidance=Guidance(steps=3))
    both = sampler.latents(["a cat", "a dog"], [7, 8], **kw)  # (2, C, T, h, w)
    alone = sampler.latents(["a dog"], [8], **kw)
    torch.testing.assert_close(both[1:], alone, rtol=1e-5, atol=1e-5)
    other_seed = sampler.latents(["a dog"], [9], **kw)
    assert (other_seed - alone).abs().mean() > 0.1


def test_image_condition_is_the_aes_encoding_of_the_image_as_ffmpeg_scales_it(
        sampler, tmp_path):
    png = ffmpeg_image(tmp_path / "bars.png", "64x48")
    h, w = SAMPLE.height, SAMPLE.width
    pixels = read_media(png, h, w)  # (1, 3, 1, h, w)
    # ffmpeg's own cover-and-crop of the same image
    scale = max(h / 48, w / 64)
    sh, sw = max(h, round(48 * scale)), max(w, round(64 * scale))
    ref = subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", "-i", str(png), "-vf",
         f"scale={sw}:{sh}:flags=bicubic,crop={w}:{h}:{(sw - w) // 2}:{(sh - h) // 2}",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    ref = torch.from_numpy(np.frombuffer(ref, np.uint8).reshape(h, w, 3).copy())
    ours = ((pixels[0, :, 0].permute(1, 2, 0) + 1) * 127.5)
    assert (ours - ref.float()).abs().mean() < 6.0  # two bicubic resamplers, one picture

    shape = video_latent_shape(sampler.ae, SAMPLE.frames, SAMPLE.height, SAMPLE.width)
    cond = media_condition("i2v_head", pixels, sampler.encode_pixels, sampler.ae, shape)
    assert cond.shape == (1, shape[0] + 1, *shape[1:])
    image_latent = sampler.ae.to_dit(sampler.ae.encode(pixels))  # (1, C, 1, h, w)
    torch.testing.assert_close(cond[:, 1:, :1], image_latent)
    assert bool((cond[:, 0, 0] == 1).all()) and bool((cond[:, :, 1:] == 0).all())
    z = sampler.latents(["a dog"], [1], frames=SAMPLE.frames, height=SAMPLE.height,
                        width=SAMPLE.width, fps=24, motion_score=4,
                        guidance=Guidance(steps=3), cond=cond)
    torch.testing.assert_close(z[:, :, :1], image_latent)  # the given frame is kept


def test_v2v_condition_gives_the_first_latent_frames_of_the_video(sampler, tmp_path):
    clip = ffmpeg_image(tmp_path / "clip.mp4", "32x32", frames=12)
    pixels = read_media(clip, SAMPLE.height, SAMPLE.width)  # (1, 3, 12, 32, 32)
    shape = video_latent_shape(sampler.ae, SAMPLE.frames, SAMPLE.height, SAMPLE.width)
    cond = media_condition("v2v_head", pixels, sampler.encode_pixels, sampler.ae, shape,
                           v2v_frames=1)
    torch.testing.assert_close(cond[:, 1:, :1], sampler.encode_pixels(pixels[:, :, :4]))
    tail = media_condition("v2v_tail", pixels, sampler.encode_pixels, sampler.ae, shape,
                           v2v_frames=1)
    torch.testing.assert_close(tail[:, 1:, -1:], sampler.encode_pixels(pixels[:, :, -4:]))
    with pytest.raises(ValueError, match="at least 8 frames"):
        media_condition("v2v_head", pixels[:, :, :5], sampler.encode_pixels, sampler.ae,
                        (16, 3, 4, 4), v2v_frames=2)


@pytest.mark.parametrize("kind", ["i2v_head", "i2v_tail", "t2i2v"])
def test_cli_image_kinds(models, tmp_path, kind):
    extra = ["--kind", kind]
    if kind != "t2i2v":
        extra += ["--image", str(ffmpeg_image(tmp_path / "bars.png", "64x48"))]
    out = tmp_path / "out"
    assert sample_cli(models, out, "--prompt", "a dog runs", *extra) == 0
    side = read_sidecar(out / "a dog runs-0.mp4")
    assert side["kind"] == kind
    assert ("first_frame" in side) == (kind == "t2i2v")
    assert ("condition_media" in side) == (kind != "t2i2v")


def test_bad_requests_name_the_fix(models, tmp_path, capsys):
    cases = [
        (["--prompt", "a/b"], "cannot be a file name"),
        (["--prompt", "x", "--kind", "i2v_head"], "give --image"),
        (["--prompt", "x", "--kind", "fly"], "unknown sampling kind"),
        (["--prompt", "x", "--image", str(tmp_path / "none.png")], "no such file"),
        (["--prompt", "x", "--kind", "v2v_head", "--video", str(models[0])], "v2v_frames"),
        ([], "at least one prompt"),
    ]
    for args, message in cases:
        assert sample_cli(models, tmp_path, *args) == 2, args
        assert message in capsys.readouterr().err, args
    # a checkpoint without osora's config metadata: released weights need the importer
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(foreign))
    assert main(["sample", "--checkpoint", str(foreign), "--prompt", "x", "--autoencoder",
                 str(models[1]), "--no-progress"]) == 2
    assert "osora weights import" in capsys.readouterr().err


def test_sample_stem_is_vbench_naming():
    assert sample_stem("A panda playing guitar.", 3) == "A panda playing guitar.-3"
    long = "é" * 200  # 400 bytes
    stem = sample_stem(long, 12)
    assert len((stem + ".json").encode()) <= 255 and stem.endswith("-12")
    assert stem != sample_stem(long + "!", 12) and stem.startswith("é" * 100)


def test_config_condition_kinds_are_the_samplers():
    from typing import get_args

    from osora.config.dit import ConditionKind

    assert get_args(ConditionKind) == CONDITION_KINDS


def test_paper_profile_is_the_11b_model_on_t5_clip():
    from osora.models.mmdit import MMDIT_11B

    paper = load_settings("paper", params_dir=REPO / "params").dit
    assert paper.model == MMDIT_11B
    assert paper.text.kind == "t5_clip" and paper.text.max_length == 512
    s = paper.sample
    assert (s.steps, s.g_img, s.g_txt, s.oscillation, s.dynamic_image) == (50, 3.0, 7.5, True,
                                                                          True)
    assert json.loads(json.dumps(paper.sample.first_frame.model_dump()))["kind"] == "flux"


def test_batched_sampling_gives_the_videos_of_one_by_one(models, tmp_path):
    """Sample i of a prompt depends on its seed only: two prompts × two seeds sampled three at a
    time decode to the videos sampled one at a time (float round-off aside)."""
    from osora.media.frames import read_video

    prompts = ["a red square moves right", "a blue circle falls"]
    for batch in (1, 3):
        assert sample_cli(models, tmp_path / str(batch), "--prompt", prompts[0], "--prompt",
                          prompts[1], "--num-samples", "2", "--batch-size", str(batch)) == 0
    for p in prompts:
        for i in (0, 1):
            one = read_video(tmp_path / "1" / f"{p}-{i}.mp4").astype(int)
            three = read_video(tmp_path / "3" / f"{p}-{i}.mp4").astype(int)
            assert np.abs(one - three).mean() < 0.5, (p, i)
