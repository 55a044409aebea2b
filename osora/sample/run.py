"""One sampling run from params (`osora sample`, and the training engine's sample stage):
load the checkpoint, its AE and text encoder, make each prompt's condition, sample, decode and
write `{prompt}-{index}.mp4` + sidecar for every prompt × seed.

Kinds: t2v; i2v_head / i2v_tail / i2v_loop from an image (or a video's first/last frame);
v2v_head / v2v_tail from a video; t2i2v: a first frame from params/dit.yaml:sample.first_frame,
then i2v_head. Sample i of a prompt uses seed + i (its noise depends on nothing else).
With sample.offload model / sequential the models load into CPU memory and visit the device per
phase (osora.sample.placement); every prompt is encoded up front, so the text encoder visits once.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from osora.models.tiling import TileSpec
from osora.progress import progress_bar
from osora.sample.conditions import IMAGE_KINDS, VIDEO_KINDS, media_condition, read_media
from osora.sample.first_frame import FluxFirstFrame, MMDiTFirstFrame
from osora.sample.generate import Guidance, VideoSampler, to_uint8_frames, video_latent_shape
from osora.sample.outputs import sample_stem, write_sample

KINDS = ("t2v", *IMAGE_KINDS, *VIDEO_KINDS, "t2i2v")


@dataclass
class SampleRequest:
    prompts: list[str]
    checkpoint: Path
    out_dir: Path
    kind: str = "t2v"
    media: Path | None = None  # the image or video of i2v_* / v2v_*
    autoencoder: Path | None = None  # None: params/ae.yaml's, else ae_train's DC-AE
    overrides: dict = field(default_factory=dict)  # fields of params/dit.yaml:sample


def check_request(request: SampleRequest) -> None:
    if request.kind not in KINDS:
        raise ValueError(f"unknown sampling kind {request.kind!r}; use one of {KINDS}")
    needs_media = request.kind in IMAGE_KINDS + VIDEO_KINDS
    if needs_media and request.media is None:
        flag = "--image" if request.kind in IMAGE_KINDS else "--video"
        raise ValueError(f"kind {request.kind} needs condition media: give {flag} FILE")
    if not needs_media and request.media is not None:
        raise ValueError(f"kind {request.kind} takes no condition media; for an image give "
                         "--kind i2v_head (or i2v_tail, i2v_loop), for a video v2v_head/v2v_tail")
    if not request.prompts:
        raise ValueError("give at least one prompt (--prompt TEXT or --prompts-file FILE)")
    for p in request.prompts:
        sample_stem(p, 0)  # fail before loading any model
    if not Path(request.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {request.checkpoint}: no such file; give an osora "
                                "MMDiT .safetensors (training writes one; `osora weights "
                                "import` converts released weights)")


def default_autoencoder(settings, root: Path) -> Path:
    """The AE weights sampling decodes with when none is given: params/ae.yaml's, else the
    DC-AE of the ae_train stage."""
    return Path(settings.ae.autoencoder.weights or root / "models" / "ae" / "dcae.safetensors")


def run_sampling(settings, request: SampleRequest, *, root: Path, progress: bool = True
                 ) -> list[Path]:
    """Render every prompt × num_samples; returns the mp4 paths in order."""
    from osora.config.dit import SampleParams
    from osora.fileio import file_sha256
    from osora.models.text import EmbeddingCache, build_text_encoder
    from osora.prompts import conditioned_text
    from osora.weights.autoencoder import load_autoencoder
    from osora.weights.mmdit import load_mmdit, saved_text_encoder

    check_request(request)
    params = SampleParams.model_validate({**settings.dit.sample.model_dump(),
                                          **request.overrides})
    device = params.device
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("params/dit.yaml:sample.device is cuda but no GPU is visible; "
                           "set it to cpu (or OSORA_DIT__SAMPLE__DEVICE=cpu)")
    # offloading: the weights load into CPU memory; the placement moves them per phase
    load_device = device if params.offload == "none" else "cpu"
    text_encoder = build_text_encoder(settings.dit.text, load_device)
    trained_with = saved_text_encoder(request.checkpoint)
    if trained_with is not None and trained_with != text_encoder.identity:
        raise ValueError(f"{request.checkpoint} was trained with text encoder {trained_with}, "
                         f"params/dit.yaml:text gives {text_encoder.identity}; set it to that "
                         "encoder")
    ae_path = request.autoencoder or default_autoencoder(settings, root)
    ae = load_autoencoder(settings.ae, ae_path, load_device)
    model = load_mmdit(request.checkpoint, device=load_device)
    sampler = VideoSampler(model, ae, text_encoder, device=device, precision=params.precision,
                           cache=EmbeddingCache(settings.dit.text.cache),
                           offload=params.offload, decode_tile=decode_tile_spec(params))
    sampler.encode_ahead([conditioned_text(p, params.fps, params.motion_score)
                          for p in request.prompts] + [params.negative_prompt],
                         batch_size=params.batch_size)
    guidance = Guidance(params.steps, params.g_img, params.g_txt, params.oscillation,
                        params.dynamic_image and request.kind not in VIDEO_KINDS,
                        params.negative_prompt)
    shape = video_latent_shape(ae, params.frames, params.height, params.width)
    v2v_frames = settings.dit.conditioning.v2v_frames
    if request.kind in VIDEO_KINDS and v2v_frames is None:
        raise ValueError(f"{request.kind} needs params/dit.yaml:conditioning.v2v_frames")

    def condition(kind: str, pixels: torch.Tensor) -> torch.Tensor:
        return media_condition(kind, pixels, sampler.encode_pixels, ae, shape,
                               v2v_frames=v2v_frames)

    media_cond = None
    if request.media is not None:
        pixels = read_media(request.media, params.height, params.width,
                            max_frames=1 if request.kind == "i2v_head" else None)
        media_cond = condition(request.kind, pixels)
    first_frame = first_frame_model(settings, params, sampler, device) \
        if request.kind == "t2i2v" else None

    common = {
        "kind": request.kind,
        "settings": params.model_dump(mode="json"),
        "checkpoint": {"path": str(request.checkpoint),
                       "sha256": file_sha256(request.checkpoint)},
        "autoencoder": {"kind": settings.ae.autoencoder.kind, "path": str(ae_path)},
        "text_encoder": text_encoder.identity,
    }
    if request.media is not None:
        common["condition_media"] = {"path": str(request.media),
                                     "sha256": file_sha256(request.media)}
    jobs = [(prompt, index) for prompt in request.prompts for index in range(params.num_samples)]
    # t2i2v makes each video's first frame on its own; the rest sample batch_size together
    size = 1 if first_frame is not None else params.batch_size
    written = []
    for at in range(0, len(jobs), size):
        batch = jobs[at:at + size]
        prompts, seeds = [p for p, _ in batch], [params.seed + i for _, i in batch]
        start = time.perf_counter()
        cond, extra = media_cond, {}
        if first_frame is not None:
            with _progress_bar(params.first_frame.steps, f"{prompts[0][:32]} first frame",
                               progress) as bar:
                image = first_frame.generate(prompts, seeds, params.height, params.width,
                                             progress=bar)
            cond = condition("i2v_head", image)
            extra["first_frame"] = params.first_frame.model_dump(mode="json")
        label = f"{prompts[0][:32]} #{batch[0][1]}" + (f" (+{len(batch) - 1})" if len(batch) > 1
                                                     else "")
        with _progress_bar(params.steps, label, progress) as bar:
            z = sampler.latents(prompts, seeds, frames=params.frames, height=params.height,
                                width=params.width, fps=params.fps,
                                motion_score=params.motion_score, guidance=guidance, cond=cond,
                                progress=bar)
        videos = to_uint8_frames(sampler.decode(z))  # (B, F, H, W, 3)
        seconds = round((time.perf_counter() - start) / len(batch), 3)  # per video
        for (prompt, index), seed, video in zip(batch, seeds, videos, strict=True):
            sidecar = {
                "text_as_seen": conditioned_text(prompt, params.fps, params.motion_score),
                "seed": seed, **common, **extra, "seconds": seconds,
            }
            written.append(write_sample(request.out_dir, prompt, index, video.numpy(),
                                        params.fps, sidecar))
    return written


def decode_tile_spec(params) -> TileSpec | None:
    """params/dit.yaml:sample.decode_tile; None when it tiles no axis."""
    tile = params.decode_tile
    if tile.spatial is None and tile.temporal is None:
        return None
    return tile


def first_frame_model(settings, params, sampler: VideoSampler, device):
    """The image model of t2i2v that params/dit.yaml:sample.first_frame chooses."""
    from osora.weights.mmdit import load_mmdit

    ff = params.first_frame
    if ff.kind == "flux":
        dtype = torch.bfloat16 if params.precision == "bf16" and device == "cuda" else None
        return FluxFirstFrame.from_paths(ff.checkpoint, ff.flux_vae, sampler.text_encoder,
                                         steps=ff.steps, guidance=ff.guidance, device=device,
                                         dtype=dtype or torch.float32, offload=params.offload)
    image_sampler = sampler
    if ff.checkpoint is not None:
        load_device = device if params.offload == "none" else "cpu"
        image_sampler = VideoSampler(load_mmdit(ff.checkpoint, device=load_device), sampler.ae,
                                     sampler.text_encoder, device=device,
                                     precision=params.precision, cache=sampler.cache,
                                     offload=params.offload, decode_tile=sampler.decode_tile)
    return MMDiTFirstFrame(image_sampler, Guidance(ff.steps, g_img=1.0, g_txt=ff.guidance,
                                                   negative_prompt=params.negative_prompt),
                           fps=params.fps)


@contextmanager
def _progress_bar(total: int, desc: str, enabled: bool):
    """The sampler's per-step callback, advancing a progress display on stderr (None when
    off)."""
    if not enabled:
        yield None
        return
    with progress_bar(total, desc) as bar:
        yield lambda info: bar.update()
