"""The five score filters on the synthetic set, each against an independent computation or
the set's ground truth: blur (numpy Laplacian), motion (numpy VMAF motion and ffmpeg's own
log), jitter (OpenCV HSV differences), OCR (truth text boxes), aesthetic (a tiny random CLIP
and head, recomputed by hand in float64)."""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from osora.config import load_settings
from osora.config.data import AestheticParams, BlurParams, MotionParams
from osora.config.store import StoreSettings
from osora.data.operator import OperatorError
from osora.data.scores import SCORERS, AestheticScorer, BlurScorer, MotionScorer
from osora.data.scores.ocr import text_coverage
from osora.data.synth import SynthVideo, render_frames
from osora.media.ffmpeg import encode_frames, run_ffmpeg
from osora.media.frames import spaced_indices
from osora.schemas import schema_of

REPO = Path(__file__).resolve().parents[2]
SCORES = load_settings(params_dir=REPO / "params").data.scores
SEED = 1234
CLEAN = ("clean_00", "clean_01", "clean_02", "clean_03", "clean_04", "clean_05")


# -- helpers ---------------------------------------------------------------------------------


def clip_row(path: Path, video: SynthVideo, uri: str | None = None) -> dict:
    """A clips-table row for a synthetic video used as a clip file."""
    return {
        "id": f"{video.stem}-0", "video_id": video.stem, "uri": uri or str(path),
        "start_frame": 0, "end_frame": video.num_frames, "fps": float(video.fps),
        "width": video.width, "height": video.height, "num_frames": video.num_frames,
        "duration_s": video.duration_s,
    }


def decode(path: Path, fmt: str = "rgb24", width: int | None = None) -> list[np.ndarray]:
    """Every frame, independently of osora: PyAV straight to arrays."""
    import av

    with av.open(str(path)) as container:
        out = []
        for f in container.decode(video=0):
            size = {} if width is None else {"width": width,
                                             "height": round(f.height * width / f.width)}
            out.append(f.to_ndarray(format=fmt, **size))
    return out


def luma_planes(path: Path) -> np.ndarray:
    """The Y plane of every frame (T, H, W) uint8, straight from the decoder (no conversion)."""
    import av

    planes = []
    with av.open(str(path)) as container:
        for f in container.decode(video=0):
            y = f.planes[0]
            rows = np.frombuffer(bytes(y), np.uint8).reshape(y.height, y.line_size)
            planes.append(rows[:, : y.width])
    return np.stack(planes)


def valid_row(scorer, row: dict) -> dict:
    """The row must be exactly one row of the scorer's table."""
    schema = schema_of(scorer.output_table)
    assert list(row) == schema.names
    pa.Table.from_pylist([row], schema=schema)
    return row


@pytest.fixture(scope="module")
def synth(synth_set):
    folder, videos = synth_set
    return folder, {v.stem: v for v in videos}


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> StoreSettings:
    return StoreSettings(uri=str(tmp_path_factory.mktemp("store")))


def score(scorer, synth, name: str) -> dict:
    folder, videos = synth
    video = videos[name]
    [row] = scorer.process(clip_row(folder / video.file, video))
    return valid_row(scorer, row)


# -- the registry and the contract -----------------------------------------------------------


def test_one_scorer_per_params_section_and_table():
    assert set(SCORERS) == set(type(SCORES).model_fields)
    for name, cls in SCORERS.items():
        assert cls.name == name
        assert schema_of(cls.output_table).names == ["id", *cls.score_columns]


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_pickle_before_setup_and_describe_without_secrets(name, s3_server):
    settings = s3_server.store_settings("tests/describe")
    scorer = SCORERS[name](getattr(SCORES, name), settings)
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone.describe()["params"] == getattr(SCORES, name)
    described = json.dumps(scorer.describe(), default=lambda v: v.model_dump(mode="json"))
    assert s3_server.secret_access_key not in described
    assert s3_server.endpoint_url not in described  # where clips are read does not matter


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_broken_or_missing_clip_is_quarantined_naming_it(name, synth, local_store, request):
    folder, videos = synth
    params = request.getfixturevalue("tiny_clip") if name == "aesthetic" else getattr(SCORES, name)
    scorer = SCORERS[name](params, local_store)
    if name == "ocr":
        scorer.load = lambda: None  # decoding fails before OCR runs; spare the model load
    video = videos["unreadable"]
    with pytest.raises(OperatorError, match=rf"^{name}: clip unreadable-0 \(.*unreadable.mp4\)"):
        scorer.process(clip_row(folder / video.file, video))
    missing = clip_row(folder / "nowhere.mp4", videos["clean_00"])
    with pytest.raises(OperatorError, match=rf"^{name}: clip clean_00-0: no file at .*nowhere.mp4"):
        scorer.process(missing)


# -- blur ------------------------------------------------------------------------------------


def numpy_laplacian_variance(rgb: np.ndarray) -> float:
    """The 3×3 Laplacian with reflect-101 borders in numpy, on OpenCV's gray (BT.601 luma; its
    fixed-point rounding differs between OpenCV versions, so it is taken from OpenCV)."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)  # (H, W)
    p = np.pad(gray, 1, mode="reflect")  # numpy's "reflect" is OpenCV's BORDER_REFLECT_101
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * p[1:-1, 1:-1]
    return float(lap.var())


def test_blur_matches_numpy_laplacian_and_flags_the_blurred_video(synth, local_store):
    folder, videos = synth
    scorer = BlurScorer(SCORES.blur, local_store)
    values = {}
    for name in (*CLEAN, "blurred"):
        values[name] = score(scorer, synth, name)["laplacian_var"]
        frames = decode(folder / videos[name].file)
        picked = spaced_indices(videos[name].num_frames, SCORES.blur.num_frames)
        expected = [numpy_laplacian_variance(frames[i]) for i in picked]
        assert values[name] == pytest.approx(expected, rel=1e-9)
    assert len(values["blurred"]) == SCORES.blur.num_frames
    sharpest_blurred = max(values["blurred"])
    assert sharpest_blurred < 30  # the tiny profile's threshold
    assert all(min(values[n]) > 5 * sharpest_blurred for n in CLEAN)


def test_blur_on_a_clip_in_the_store(store, synth, s3_server_if_s3):
    """The same numbers whether the clip is a local file or an object in S3."""
    folder, videos = synth
    video = videos["clean_01"]
    uri = store.put_file(folder / video.file, f"clips/{video.stem}/{video.stem}-0.mp4")
    settings = (s3_server_if_s3.store_settings("tests/scores") if s3_server_if_s3
                else StoreSettings(uri=store.root))
    scorer = BlurScorer(BlurParams(num_frames=3), settings)
    [row] = scorer.process(clip_row(folder / video.file, video, uri=uri))
    [local] = BlurScorer(BlurParams(num_frames=3), settings).process(
        clip_row(folder / video.file, video))
    assert valid_row(scorer, row)["laplacian_var"] == local["laplacian_var"]
    gone = clip_row(folder / video.file, video, uri=uri.replace(video.stem + "-0", "gone"))
    with pytest.raises(OperatorError, match=r"blur: clip clean_01-0: no file at .*gone\.mp4"):
        scorer.process(gone)


@pytest.fixture
def s3_server_if_s3(store, request):
    return request.getfixturevalue("s3_server") if store.root.startswith("s3://") else None


# -- motion ----------------------------------------------------------------------------------

# VMAF's 5-tap Gaussian (libvmaf's FILTER_5, as ffmpeg's vmafmotion uses it in fixed point).
VMAF_FILTER = np.array([0.054488685, 0.244201342, 0.402619947, 0.244201342, 0.054488685])


def numpy_vmaf_motion(luma: np.ndarray) -> float:
    """Mean over frames of mean |blur(Y_t) − blur(Y_t−1)| (0 for the first frame), in float."""
    y = luma.astype(np.float64)  # (T, H, W)
    for axis in (1, 2):
        padded = np.pad(y, [(2, 2) if a == axis else (0, 0) for a in range(3)], mode="reflect")
        n = y.shape[axis]
        y = sum(w * np.take(padded, np.arange(k, k + n), axis=axis)
                for k, w in enumerate(VMAF_FILTER))
    per_frame = np.abs(np.diff(y, axis=0)).mean(axis=(1, 2))  # (T-1,)
    return float(per_frame.sum() / len(y))


def ffmpeg_logged_motion(path: Path) -> float:
    proc = run_ffmpeg(["-i", path, "-vf", "vmafmotion", "-an", "-f", "null", "-"],
                      loglevel="info")
    return float(re.search(r"VMAF Motion avg: ([0-9.]+)", proc.stderr.decode()).group(1))


@pytest.fixture(scope="module")
def speeds(synth, tmp_path_factory) -> dict[str, tuple[Path, SynthVideo]]:
    """clean_00's scene, 1 s long, with its shape static, at its own speed and 2.5× faster."""
    _, videos = synth
    base = videos["clean_00"]
    shot, n = base.shots[0], base.fps
    out = tmp_path_factory.mktemp("speeds")
    made = {}
    for name, factor in (("static", 0.0), ("slow", 1.0), ("fast", 2.5)):
        vx, vy = shot.velocity[0] * factor, shot.velocity[1] * factor
        h, w = base.picture_size
        moving = replace(shot, num_frames=n, speed_px_per_frame=shot.speed_px_per_frame * factor,
                         velocity=(vx, vy),
                         start_xy=(w / 2 - vx * (n - 1) / 2, h / 2 - vy * (n - 1) / 2))
        video = replace(base, file=f"{name}.mp4", num_frames=n, duration_s=1.0, shots=(moving,))
        encode_frames(render_frames(video, SEED), out / video.file, video.fps, crf=base.crf,
                      keyint=video.fps)
        made[name] = (out / video.file, video)
    return made


def test_motion_orders_static_slow_fast_shaky_and_matches_ffmpeg_and_numpy(
    speeds, synth, local_store
):
    folder, videos = synth
    clips = {**speeds, "camera_shake": (folder / "camera_shake.mp4", videos["camera_shake"])}
    # analysis_width = the clips' width: ffmpeg scores the decoded luma as it is.
    scorer = MotionScorer(MotionParams(analysis_width=videos["clean_00"].width), local_store)
    motion = {}
    for name, (path, video) in clips.items():
        [row] = scorer.process(clip_row(path, video))
        motion[name] = valid_row(scorer, row)["motion"]
        assert motion[name] == pytest.approx(ffmpeg_logged_motion(path), abs=0.006)
        assert motion[name] == pytest.approx(numpy_vmaf_motion(luma_planes(path)),
                                             rel=0.03, abs=0.01)
    assert motion["static"] < 0.02
    assert 0.1 < motion["slow"] < motion["fast"] < motion["camera_shake"]


def test_motion_downscales_wide_clips_only(synth, local_store):
    folder, videos = synth
    video = videos["camera_shake"]
    full = MotionScorer(MotionParams(analysis_width=4096), local_store)
    half = MotionScorer(MotionParams(analysis_width=video.width // 2), local_store)
    same = MotionScorer(MotionParams(analysis_width=video.width), local_store)
    row = clip_row(folder / video.file, video)
    [a], [b], [c] = full.process(row), half.process(row), same.process(row)
    assert a["motion"] == c["motion"]  # never upscaled
    assert b["motion"] < a["motion"]  # a 6 px shake is a 3 px shake at half width


# -- jitter ----------------------------------------------------------------------------------


def opencv_content_change(frames_bgr: list[np.ndarray]) -> float:
    """Mean over consecutive frames of the mean |Δ| of hue, saturation and value, averaged."""
    import cv2

    hsv = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2HSV) for f in frames_bgr]).astype(np.int32)
    per_frame = np.abs(np.diff(hsv, axis=0)).mean(axis=(1, 2)).mean(axis=1)  # (T-1,)
    return float(per_frame.mean())


def test_jitter_flags_camera_shake_and_matches_opencv(synth, local_store):
    folder, videos = synth
    scorer = SCORERS["jitter"](SCORES.jitter, local_store)
    jitter = {name: score(scorer, synth, name)["jitter"]
              for name in (*CLEAN, "camera_shake")}
    expected = opencv_content_change(
        decode(folder / "camera_shake.mp4", "bgr24", width=SCORES.jitter.analysis_width))
    assert jitter["camera_shake"] == pytest.approx(expected, rel=1e-9)
    assert jitter["camera_shake"] > 5 * max(jitter[n] for n in CLEAN)


# -- OCR -------------------------------------------------------------------------------------


def test_text_coverage_is_the_union_of_confident_boxes():
    square = lambda x, y, s: [[x, y], [x + s, y], [x + s, y + s], [x, y + s]]  # noqa: E731
    result = [
        [square(0, 0, 9), "A", 0.9],
        [square(5, 5, 9), "B", 0.8],  # overlaps A on 5×5 pixels: counted once
        [square(30, 30, 9), "C", 0.7],  # not above the threshold
    ]
    area, boxes = text_coverage(result, (40, 40), min_confidence=0.7)
    assert boxes == 2
    assert area == pytest.approx((100 + 100 - 25) / 1600)
    assert text_coverage(None, (40, 40), 0.7) == (0.0, 0)


@pytest.fixture(scope="module")
def ocr(local_store):
    scorer = SCORERS["ocr"](SCORES.ocr, local_store)
    scorer.setup()  # the OCR models load once for the module
    return scorer


def test_ocr_measures_burned_in_text_and_none_on_clean_clips(ocr, synth):
    _, videos = synth
    video = videos["burned_text"]
    truth = sum(b.w * b.h for b in video.text_boxes) / (video.width * video.height)  # 0.39
    text = score(ocr, synth, "burned_text")
    assert text["text_boxes"] == len(video.text_boxes)  # one box per word
    # PP-OCR's boxes are padded around the glyphs, so they cover the text and then some.
    assert truth <= text["text_area"] <= 2 * truth
    for name in CLEAN[:1]:
        assert score(ocr, synth, name) == {"id": f"{name}-0", "text_area": 0.0, "text_boxes": 0}


# -- aesthetic -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> AestheticParams:
    """A tiny random CLIP vision tower + preprocessing config and a random head, saved the way
    real weights are, so the real loading code runs."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from osora.data.scores.aesthetic import clip_image_processor_class
    from osora.models.aesthetic import AestheticHead

    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8,
                              projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(folder / "clip")
    processor = clip_image_processor_class()(size={"shortest_edge": 32},
                                             crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder / "clip")
    head = AestheticHead(embed_dim=16)
    save_file(head.state_dict(), folder / "head.safetensors")
    return AestheticParams(clip_path=str(folder / "clip"),
                           head_path=str(folder / "head.safetensors"), device="cpu")


def by_hand_aesthetic(params: AestheticParams, frames: np.ndarray) -> float:
    """The same pipeline from its pieces, in float64: preprocessing, vision tower, projection,
    normalisation, and the head as plain matrix products of the safetensors weights."""
    import torch
    from safetensors.numpy import load_file
    from transformers import CLIPVisionModelWithProjection

    from osora.data.scores.aesthetic import clip_image_processor_class

    processor = clip_image_processor_class().from_pretrained(params.clip_path)
    model = CLIPVisionModelWithProjection.from_pretrained(params.clip_path).double().eval()
    pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"].double()
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=pixels).pooler_output  # (3, 32)
        x = model.visual_projection(pooled).numpy()  # (3, 16)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = {k: v.astype(np.float64) for k, v in load_file(params.head_path).items()}
    for i in (0, 2, 4, 6, 7):  # dropout is the identity at inference
        x = x @ w[f"layers.{i}.weight"].T + w[f"layers.{i}.bias"]  # (3, out)
    return float(x.mean())


def test_aesthetic_equals_the_pipeline_computed_by_hand(tiny_clip, synth, local_store):
    folder, videos = synth
    scorer = AestheticScorer(tiny_clip, local_store)
    assert scorer.available() is None
    scorer.setup()
    for name in ("clean_00", "burned_text"):
        video = videos[name]
        got = score(scorer, synth, name)["aesthetic"]
        frames = decode(folder / video.file)
        first_middle_last = np.stack([frames[0], frames[len(frames) // 2], frames[-1]])
        assert got == pytest.approx(by_hand_aesthetic(tiny_clip, first_middle_last),
                                    rel=1e-5, abs=1e-6)


def test_aesthetic_without_weights_says_why_and_never_scores(synth, local_store):
    off = AestheticParams(clip_path=None, head_path=None, device="cpu")
    scorer = AestheticScorer(off, local_store)
    reason = scorer.available()
    assert reason is not None
    assert "clip_path" in reason and "head_path" in reason
    for name in ("clean_00", "unreadable"):  # not even a broken file gets looked at
        assert score(scorer, synth, name) == {"id": f"{name}-0", "aesthetic": None}


def test_aesthetic_misconfigured_weights_fail_loudly(tiny_clip, tmp_path, local_store):
    from safetensors.torch import save_file

    from osora.models.aesthetic import AestheticHead

    missing = tiny_clip.model_copy(update={"clip_path": str(tmp_path / "no_clip")})
    with pytest.raises(FileNotFoundError, match="clip_path: no folder at .*no_clip"):
        AestheticScorer(missing, local_store).setup()
    save_file(AestheticHead(embed_dim=8).state_dict(), tmp_path / "head8.safetensors")
    narrow = tiny_clip.model_copy(update={"head_path": str(tmp_path / "head8.safetensors")})
    with pytest.raises(ValueError, match="takes 8-d embeddings but the CLIP .* gives 16-d"):
        AestheticScorer(narrow, local_store).setup()


def test_aesthetic_head_has_the_released_layout():
    from osora.models.aesthetic import AestheticHead

    head = AestheticHead(embed_dim=768)
    assert list(head.state_dict()) == [
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")
    ]
    assert AestheticHead.from_state_dict(head.state_dict()).embed_dim == 768
    with pytest.raises(ValueError, match="not an aesthetic head state dict"):
        AestheticHead.from_state_dict({"visual_projection.weight": head.layers[0].weight})
    partial = {k: v for k, v in head.state_dict().items() if not k.startswith("layers.7")}
    with pytest.raises(ValueError, match=r"missing \['layers.7.weight', 'layers.7.bias'\]"):
        AestheticHead.from_state_dict(partial)
