"""Images beside videos, through every data stage: real JPEG, PNG and WebP files (one with black
borders, one larger than max_side, one portrait, one EXIF-rotated, one too wide) ingested with a
real synthetic video, then preprocess → shots → clips → scores → captions → pyramid → latents
on a local store. An image is a 1-frame item everywhere: its clip is one PNG whose pixels match
PIL's own crop and resize of the source, its motion and jitter are null, the pyramid keeps it,
and it is encoded into the 1-frame bucket as one latent frame."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
import yaml
from PIL import Image, ImageOps

from osora.config import load_settings
from osora.config.ae import LatentsParams
from osora.config.store import StoreSettings
from osora.data.captions import CaptionOperator
from osora.data.clips import ClipCutter, clip_inputs
from osora.data.ingest import ingest
from osora.data.latents import LatentEncoder, read_latent, set_aside_images
from osora.data.operator import OperatorError
from osora.data.preprocess import preprocess_table
from osora.data.pyramid import build_levels
from osora.data.scores import SCORERS
from osora.data.shots import ShotDetector
from osora.data.stage import sync_counted
from osora.media.frames import read_frames
from osora.models.dcae import DCAE
from osora.schemas import schema_of
from osora.store import Store
from osora.train.buckets import bucket_size
from osora.weights.autoencoder import save_dcae

REPO = Path(__file__).resolve().parents[2]
SETTINGS = load_settings(params_dir=REPO / "params")
DATA, AE = SETTINGS.data, SETTINGS.ae
VIDEO_EXT = DATA.ingest.extensions
IMAGE_EXT = DATA.ingest.image_extensions
MAX_SIDE = 256  # so that the tests' images can be larger than max_side cheaply
CLIPS = DATA.clips.model_copy(update={"max_side": MAX_SIDE})
VIDEO = "clean_00"  # a clean synthetic video (320×180, one shot)

# name → (stored width, height, the picture box inside black borders (x, y, w, h) or None, the
# clip's expected width, height). rotated.jpg is stored landscape with EXIF orientation 6 (a
# phone held upright): it is displayed, and cut, portrait.
IMAGES = {
    "landscape.jpg": (320, 240, None, (256, 192)),  # scaled down too
    "bordered.png": (240, 180, (20, 30, 200, 120), (200, 120)),
    "large.webp": (480, 270, None, (256, 144)),  # longer side > max_side: scaled down
    "portrait.png": (180, 320, None, (144, 256)),
    "rotated.jpg": (240, 160, None, (160, 240)),
}
BANNER = "banner.png"  # 400×80: aspect ratio 5 > 3, dropped by preprocess


def picture(width: int, height: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8: smooth colour waves with a 10–14 px texture (sharp enough for the blur
    filter, smooth enough for resamplers to agree), values in [40, 230] (no black edge)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 6)
    waves = [
        140 + 45 * np.sin(2 * np.pi * xx / 97 + phase[0]) + 35 * np.sin(2 * np.pi * (xx + yy) / 12
                                                                        + phase[1]),
        120 + 50 * np.cos(2 * np.pi * yy / 71 + phase[2]) + 35 * np.sin(2 * np.pi * xx / 14
                                                                        + phase[3]),
        115 + 40 * np.sin(2 * np.pi * (xx - yy) / 83 + phase[4]) + 35 * np.cos(2 * np.pi * yy / 10
                                                                               + phase[5]),
    ]
    return np.clip(np.stack(waves, axis=-1), 40, 230).astype(np.uint8)


def write_images(folder: Path) -> None:
    """The IMAGES (and the BANNER), each with a caption sidecar <stem>.txt."""
    for i, (name, (width, height, box, _)) in enumerate(IMAGES.items()):
        path = folder / name
        if box is None:
            image = Image.fromarray(picture(width, height, i))
        else:
            canvas = np.zeros((height, width, 3), np.uint8)
            x, y, w, h = box
            canvas[y:y + h, x:x + w] = picture(w, h, i)
            image = Image.fromarray(canvas)
        if name == "rotated.jpg":  # as a phone writes it: 4:2:0 chroma, EXIF orientation
            exif = image.getexif()
            exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
            image.save(path, quality=95, exif=exif)
        elif path.suffix == ".jpg":
            image.save(path, quality=95, subsampling=0)  # 4:4:4: decoders agree exactly
        elif path.suffix == ".webp":
            image.save(path, lossless=True)
        else:
            image.save(path)
        path.with_suffix(".txt").write_text(f"a photo of colourful waves, number {i}\n")
    Image.fromarray(picture(400, 80, 9)).save(folder / BANNER)
    (folder / BANNER).with_suffix(".txt").write_text("a wide banner\n")


@pytest.fixture(scope="module")
def raw(synth_set, tmp_path_factory) -> Path:
    """A folder of the test images and one synthetic video, all with sidecar captions."""
    folder, _ = synth_set
    out = tmp_path_factory.mktemp("photos")
    for suffix in (".mp4", ".txt"):
        shutil.copy(folder / f"{VIDEO}{suffix}", out / f"{VIDEO}{suffix}")
    write_images(out)
    return out


def apply(op, rows: pa.Table) -> pa.Table:
    """The operator on every row, in this process (the runner's pool is tested elsewhere)."""
    op.setup()
    out = [r for row in rows.to_pylist() for r in op.process(row)]
    return pa.Table.from_pylist(out, schema=schema_of(op.output_table))


def by_name(table: pa.Table, videos: pa.Table, key: str = "id") -> dict[str, dict]:
    """Rows of `table` by their source file's name (`key` holds the video id)."""
    names = {r["id"]: Path(r["uri"]).name for r in videos.to_pylist()}
    return {names[r[key]]: r for r in table.to_pylist()}


@pytest.fixture(scope="module")
def world(raw, tmp_path_factory):
    """Every stage's table for the raw folder, on a local store, plus the store settings."""
    root = tmp_path_factory.mktemp("images-store")
    store_settings = StoreSettings(uri=str(root / "store"))
    videos = ingest(raw, VIDEO_EXT, image_extensions=IMAGE_EXT).rows
    verdicts = preprocess_table(videos, DATA.preprocess)
    kept = videos.filter(pc.is_in(videos.column("id"), value_set=verdicts.filter(
        verdicts.column("keep")).column("id").combine_chunks()))
    shots = apply(ShotDetector(DATA.shots), kept)
    clips = apply(ClipCutter(CLIPS, store_settings), clip_inputs(videos, shots))
    scores = {f"score_{name}": apply(SCORERS[name](getattr(DATA.scores, name), store_settings),
                                     clips)
              for name in ("aesthetic", "motion", "blur", "ocr", "jitter")}
    sources = videos.select(["id", "caption"]).rename_columns(["video_id", "source_caption"])
    captions = apply(CaptionOperator(DATA.captions, store_settings),
                     clips.join(sources, "video_id", join_type="left outer"))
    levels = build_levels(clips, scores, captions, DATA.pyramid.levels)
    return {"videos": videos, "preprocess": verdicts, "shots": shots, "clips": clips,
            "captions": captions, "levels": levels, "store": store_settings, "root": root,
            **scores}


def test_images_are_ingested_as_one_frame_items_beside_the_video(world):
    videos = world["videos"]
    rows = {Path(r["uri"]).name: r for r in videos.to_pylist()}
    assert set(rows) == {*IMAGES, BANNER, f"{VIDEO}.mp4"}
    assert rows[f"{VIDEO}.mp4"]["kind"] == "video" and rows[f"{VIDEO}.mp4"]["fps"] == 24
    for name, (width, height, _, _) in IMAGES.items():
        row = rows[name]
        if name == "rotated.jpg":
            width, height = height, width  # as displayed
        assert row["kind"] == "image", name
        assert (row["width"], row["height"], row["num_frames"]) == (width, height, 1), name
        assert row["fps"] is None and row["duration_s"] is None and row["bit_rate"] is None
        assert row["probe_error"] is None and row["profile"] is None
        assert row["caption"].startswith("a photo of colourful waves")
    assert rows["rotated.jpg"]["rotation"] % 180 == 90
    assert {rows[n]["codec"] for n in IMAGES} == {"mjpeg", "png", "webp"}


def test_preprocess_judges_an_image_by_its_shape_only(world):
    verdicts = by_name(world["preprocess"], world["videos"])
    for name in IMAGES:
        assert verdicts[name]["keep"] and verdicts[name]["reason"] is None, verdicts[name]
        assert verdicts[name]["bits_per_pixel"] is None
    assert verdicts[BANNER]["reason"] == "aspect_ratio"  # no too_short, low_fps or low_bpp
    assert verdicts[f"{VIDEO}.mp4"]["keep"]


def test_shots_of_an_image_are_one_frame_with_its_border_crop(world):
    shots = by_name(world["shots"], world["videos"])
    assert BANNER not in shots  # dropped by preprocess
    for name, (width, height, box, _) in IMAGES.items():
        row = shots[name]
        assert (row["num_frames"], row["fps"], row["cut_frames"]) == (1, None, []), name
        if name == "rotated.jpg":
            width, height = height, width
        crop = (row["crop_x"], row["crop_y"], row["crop_w"], row["crop_h"])
        assert crop == (box or (0, 0, width, height)), name
    assert shots[f"{VIDEO}.mp4"]["num_frames"] > 1


def reference(raw: Path, name: str, size: tuple[int, int]) -> np.ndarray:
    """PIL's own picture of the clip: the source as displayed (EXIF applied), its picture box
    cropped, resized to `size` with PIL's bicubic filter. (H, W, 3) uint8."""
    image = ImageOps.exif_transpose(Image.open(raw / name)).convert("RGB")
    box = IMAGES[name][2]
    if box is not None:
        x, y, w, h = box
        image = image.crop((x, y, x + w, y + h))
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(image)


def test_an_image_becomes_one_png_clip_whose_pixels_match_the_source(world, raw):
    clips = by_name(world["clips"], world["videos"], key="video_id")
    for name, (_, _, _, size) in IMAGES.items():
        clip = clips[name]
        assert clip["id"].endswith("-000") and clip["uri"].endswith(".png"), clip
        assert (clip["width"], clip["height"], clip["num_frames"]) == (*size, 1), name
        assert clip["fps"] is None and clip["duration_s"] is None and clip["start_s"] is None
        frames = read_frames(clip["uri"], [0])  # (1, H, W, 3): PyAV reads the PNG
        assert frames.shape == (1, size[1], size[0], 3)
        error = np.abs(frames[0].astype(np.int16) - reference(raw, name, size)).mean()
        # A PNG cropped but not resized keeps its pixels exactly; bicubic resamplers (swscale,
        # PIL) differ by under a level on average. A 4:2:0 JPEG's chroma is upsampled
        # differently by FFmpeg and libjpeg (about 2.3 levels here; its 4:4:4 twin 0.05).
        width, height, box, _ = IMAGES[name]
        exact = name.endswith(".png") and size == (box or (0, 0, width, height))[2:]
        assert error < (0.01 if exact else 3.5 if name == "rotated.jpg" else 0.75), (name, error)
    video = by_name(world["videos"], world["videos"])[f"{VIDEO}.mp4"]["id"]
    video_clips = [r for r in world["clips"].to_pylist() if r["video_id"] == video]
    assert video_clips and all(r["uri"].endswith(".mp4") and r["num_frames"] > 1
                               for r in video_clips)


def test_motion_and_jitter_are_null_for_an_image_the_picture_scores_are_not(world):
    clips = world["clips"].to_pylist()
    image_ids = {r["id"] for r in clips if r["num_frames"] == 1}
    assert len(image_ids) == len(IMAGES)

    def scores(table: str, column: str) -> dict[str, object]:
        return {r["id"]: r[column] for r in world[table].to_pylist()}

    motion, jitter = scores("score_motion", "motion"), scores("score_jitter", "jitter")
    blur, ocr = scores("score_blur", "laplacian_var"), scores("score_ocr", "text_area")
    for clip_id in image_ids:
        assert motion[clip_id] is None and jitter[clip_id] is None  # null, not 0
        assert len(blur[clip_id]) == 1 and blur[clip_id][0] > 30  # its one frame, sharp
        assert ocr[clip_id] is not None and ocr[clip_id] < 0.05
    videos = [r["id"] for r in clips if r["id"] not in image_ids]
    assert all(motion[i] is not None and jitter[i] is not None for i in videos)


def test_the_sidecar_captions_an_image(world):
    captions = {r["id"]: r["caption"] for r in world["captions"].to_pylist()}
    clips = by_name(world["clips"], world["videos"], key="video_id")
    for i, name in enumerate(IMAGES):
        assert captions[clips[name]["id"]] == f"a photo of colourful waves, number {i}"


def test_every_pyramid_level_keeps_the_images_with_the_caption_alone_as_text(world):
    images = {r["id"] for r in world["clips"].to_pylist() if r["num_frames"] == 1}
    levels = world["levels"].tables
    # `filtered` has motion and jitter limits, stage1_256px a minimum duration: neither applies
    for name in ("all", "filtered", "stage1_256px"):
        rows = {r["id"]: r for r in levels[name].to_pylist()}
        assert images <= set(rows), (name, images - set(rows))
    for row in levels["stage1_256px"].to_pylist():
        if row["id"] in images:
            assert row["text"] == row["caption"] and "FPS" not in row["text"]
            assert row["motion"] is None and row["fps"] is None
        else:
            assert row["text"].endswith("motion score.") and " FPS, " in row["text"]


def test_null_motion_drops_a_video_clip_but_not_an_image():
    """The pyramid's rule on its own: a video clip whose motion scorer failed (null) fails the
    motion limits; an image, whose motion is null by nature, passes them and the duration
    limits."""
    from osora.config.data import PyramidLevel

    clips = pa.Table.from_pylist([
        {"id": "img", "video_id": "a", "uri": "/a.png", "width": 64, "height": 64, "fps": None,
         "num_frames": 1, "duration_s": None},
        {"id": "vid", "video_id": "b", "uri": "/b.mp4", "width": 64, "height": 64, "fps": 24.0,
         "num_frames": 48, "duration_s": 2.0},
        {"id": "bad", "video_id": "c", "uri": "/c.mp4", "width": 64, "height": 64, "fps": 24.0,
         "num_frames": 48, "duration_s": 2.0},
    ], schema=schema_of("clips"))
    ids = ["img", "vid", "bad"]

    def table(name: str, **columns: list) -> pa.Table:
        return pa.Table.from_pydict({"id": ids, **columns}, schema=schema_of(name))

    scores = {
        "score_aesthetic": table("score_aesthetic", aesthetic=[None] * 3),
        "score_motion": table("score_motion", motion=[None, 2.0, None]),
        "score_ocr": table("score_ocr", text_area=[0.0] * 3, text_boxes=[0] * 3),
        "score_jitter": table("score_jitter", jitter=[None, 1.0, 1.0]),
        "score_blur": table("score_blur", laplacian_var=[[99.0]] * 3),
    }
    captions = table("captions", caption=["a", "b", "c"], captioner=["sidecar"] * 3,
                     prompt_version=[None] * 3)
    level = PyramidLevel(min_motion=0.5, max_jitter=2.0, min_duration_s=1.0, max_duration_s=4.0)
    kept = build_levels(clips, scores, captions, {"l": level}).tables["l"]
    assert kept.column("id").to_pylist() == ["img", "vid"]
    # with only images, motion and jitter count as evaluated: no "filter off" note
    only = build_levels(clips.slice(0, 1), scores, captions, {"l": level})
    assert only.tables["l"].num_rows == 1 and only.notes == []


def latents_params(frames: list[int]) -> LatentsParams:
    return LatentsParams(
        sets={"t": {"level": "stage1_256px", "resolution": 64, "frames": frames,
                    "aspect_ratios": None, "min_area": 0.0}},
        device="cpu", precision="fp32", storage_dtype="float32",
        tile={"spatial": None, "temporal": None, "overlap": 0.25})


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    """A tiny random Video DC-AE (non-causal, 4× time, 8× space), saved as ae_train saves it."""
    torch.manual_seed(0)
    model = DCAE(AE.dcae).eval()
    return model, save_dcae(model, tmp_path_factory.mktemp("ae") / "dcae.safetensors")


def test_latents_put_an_image_in_the_one_frame_bucket_as_one_latent_frame(world, tiny_ae):
    model, weights = tiny_ae
    level = world["levels"].tables["stage1_256px"]
    encoder = LatentEncoder(latents_params([1, 16]), "t", AE, weights, world["store"])
    rows = apply(encoder, level).to_pylist()
    assert len(rows) == level.num_rows
    clips = {r["id"]: r for r in world["clips"].to_pylist()}
    for row in rows:
        clip = clips[row["id"]]
        latent = read_latent(row)  # (C, T', H', W')
        if clip["num_frames"] == 1:
            height, width = bucket_size(clip["width"], clip["height"], 64, 8)
            assert (row["frames"], row["height"], row["width"]) == (1, height, width)
            assert tuple(latent.shape) == (16, 1, height // 4, width // 4)  # the 4× tiny AE
            assert row["fps"] is None and row["text"] == clip_caption(world, row["id"])
            with torch.inference_mode():  # the non-causal AE decodes it back to one frame
                assert model.decode(model.from_dit(latent[None])).shape[2] == 1
        else:  # a 2–4 s video clip takes the 16-frame bucket, never the image one
            assert row["frames"] == 16 and latent.shape[1] == 4


def clip_caption(world, clip_id: str) -> str:
    return {r["id"]: r["caption"] for r in world["captions"].to_pylist()}[clip_id]


def test_a_set_without_a_one_frame_bucket_sets_images_aside_naming_the_param(world, tiny_ae):
    _, weights = tiny_ae
    level = world["levels"].tables["stage1_256px"]
    inputs, aside = set_aside_images(level, "t", [16])
    images = {r["id"] for r in level.to_pylist() if r["num_frames"] == 1}
    assert set(aside.column("id").to_pylist()) == images
    assert set(inputs.column("id").to_pylist()) == set(level.column("id").to_pylist()) - images
    assert all("latents.sets.t.frames" in reason for reason in aside.column("reason").to_pylist())
    assert aside.schema == schema_of("latents_t_quarantine")
    kept, none = set_aside_images(level, "t", [1, 16])
    assert kept.num_rows == level.num_rows and none.num_rows == 0
    # the operator, given an image anyway, refuses it with the same reason (no crash)
    encoder = LatentEncoder(latents_params([16]), "t", AE, weights, world["store"])
    image = next(r for r in level.to_pylist() if r["num_frames"] == 1)
    with pytest.raises(OperatorError, match=r"add 1 to params/ae\.yaml latents\.sets\.t\.frames"):
        encoder.process(image)


# -- sources --------------------------------------------------------------------------------------


def test_globs_manifests_and_s3_prefixes_take_images(raw, tmp_path, s3_server):
    globbed = ingest(f"{raw}/*.png", VIDEO_EXT, image_extensions=IMAGE_EXT).rows
    assert sorted(Path(u).name for u in globbed.column("uri").to_pylist()) == \
        sorted(["bordered.png", "portrait.png", BANNER])
    assert set(globbed.column("kind").to_pylist()) == {"image"}

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,caption\n{raw / 'large.webp'},waves\n{raw / VIDEO}.mp4,\n")
    listed = ingest(manifest, VIDEO_EXT, image_extensions=IMAGE_EXT).rows.to_pylist()
    assert [(r["kind"], r["caption"], r["width"]) for r in listed][0] == ("image", "waves", 480)
    assert listed[1]["kind"] == "video"

    prefix = f"photos/{uuid.uuid4().hex}"
    client = s3_server.client()
    for name in ("landscape.jpg", "landscape.txt", f"{VIDEO}.mp4"):
        client.upload_file(str(raw / name), s3_server.bucket, f"{prefix}/{name}")
    rows = ingest(f"s3://{s3_server.bucket}/{prefix}", VIDEO_EXT, image_extensions=IMAGE_EXT,
                  store_settings=s3_server.store_settings("store")).rows.to_pylist()
    kinds = {r["uri"].rsplit("/", 1)[-1]: (r["kind"], r["width"], r["caption"]) for r in rows}
    assert kinds["landscape.jpg"] == ("image", 320, "a photo of colourful waves, number 0")
    assert kinds[f"{VIDEO}.mp4"][0] == "video"


def test_image_extensions_are_checked():
    from pydantic import ValidationError

    from osora.config.data import IngestParams

    ok = IngestParams(sources=["raw"], extensions=[".mp4"], image_extensions=[".JPG"])
    assert ok.image_extensions == [".JPG"]
    with pytest.raises(ValidationError, match="look like '.mp4'"):
        IngestParams(sources=["raw"], extensions=[".mp4"], image_extensions=["png"])
    with pytest.raises(ValidationError, match="both video and image"):
        IngestParams(sources=["raw"], extensions=[".mp4", ".webp"], image_extensions=[".WEBP"])


def test_a_store_from_before_images_is_upgraded_not_broken(raw, tmp_path):
    """A `videos` table written without `kind`: its rows are reused as videos, an image-named
    one is read again, and the stage's sync rewrites the table with the new column."""
    store = Store(str(tmp_path / "store"))
    before = ingest(raw, VIDEO_EXT).rows  # the video only: no image extensions then
    old = before.drop_columns(["kind"])
    lance.write_dataset(old, store.table_uri("videos"), schema=old.schema)
    assert "kind" not in store.read("videos").column_names

    result = ingest(raw, VIDEO_EXT, image_extensions=IMAGE_EXT, known=store.read("videos"))
    assert result.reused == 1 and result.rows.num_rows == len(IMAGES) + 2
    version, removed = sync_counted(store, "videos", result.rows)
    stored = store.read("videos", version=version)
    assert stored.schema.equals(schema_of("videos")) and removed == 0
    kinds = {Path(r["uri"]).name: r["kind"] for r in stored.to_pylist()}
    assert kinds[f"{VIDEO}.mp4"] == "video" and kinds["landscape.jpg"] == "image"
    assert sync_counted(store, "videos", result.rows)[0] == version  # then syncs as usual


# -- the stage scripts ---------------------------------------------------------------------------


@pytest.mark.slow
def test_the_stage_scripts_carry_images_from_a_folder_to_the_latents(raw, tmp_path, tiny_ae):
    """pipelines/*.py from ingest to latents in a project of their own, with DVC's arguments,
    on a store whose `videos` table predates images: the folder's photos become 1-frame PNG
    clips, unscored for motion, captioned from their sidecars and kept by every level; the
    tiny default's latent sets (no 1 in frames) set them aside naming the param, and adding 1
    encodes them into the 1-frame bucket."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "params", project / "params")
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    path = project / "params" / "data.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["ingest"]["sources"] = [str(raw)]
    doc["clips"]["max_side"] = MAX_SIDE
    doc["runner"]["workers"] = 1
    path.write_text(yaml.safe_dump(doc))
    store = Store(str(project / "store"))  # params/store.yaml: `store` in the project
    old = ingest(raw, VIDEO_EXT).rows.drop_columns(["kind"])  # as ingested before images
    lance.write_dataset(old, store.table_uri("videos"), schema=old.schema)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSORA_", "DVC_"))}

    def stage(script: str, *args: str, out: str | None = None) -> dict:
        out = out or script
        cmd = [sys.executable, str(REPO / "pipelines" / f"{script}.py"), *args,
               "--receipt", f"lineage/{out}.json", "--metrics", f"metrics/{out}.json"]
        done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((project / "metrics" / f"{out}.json").read_text())

    ingested = stage("ingest")
    assert ingested["images"] == len(IMAGES) + 1 and ingested["reused"] == 1
    assert stage("preprocess", "--videos", "lineage/ingest.json")["dropped.aspect_ratio"] == 1
    stage("shots", "--videos", "lineage/ingest.json", "--preprocess", "lineage/preprocess.json")
    metrics = stage("clips", "--videos", "lineage/ingest.json", "--shots", "lineage/shots.json")
    assert metrics["images"] == len(IMAGES) and metrics["videos"] == 1
    for scorer in ("aesthetic", "motion", "blur", "ocr", "jitter"):
        stage("score", "--scorer", scorer, "--clips", "lineage/clips.json",
              out=f"scores/score_{scorer}")
    stage("captions", "--videos", "lineage/ingest.json", "--clips", "lineage/clips.json")
    stage("pyramid", "--clips", "lineage/clips.json", "--scores", "lineage/scores",
          "--captions", "lineage/captions.json")

    clips = store.read("clips")
    images = {r["id"] for r in clips.to_pylist() if r["num_frames"] == 1}
    assert len(images) == len(IMAGES) and clips.num_rows > len(images)  # the video's too
    assert all(r["uri"].endswith(".png") for r in clips.to_pylist() if r["id"] in images)
    motion = {r["id"]: r["motion"] for r in store.read("score_motion").to_pylist()}
    assert all(motion[i] is None for i in images)
    for level in DATA.pyramid.levels:
        kept = set(store.read(f"pyramid_{level}").column("id").to_pylist())
        assert images <= kept, level

    latents = ("--pyramid", "lineage/pyramid.json", "--weights", str(tiny_ae[1]))
    metrics = stage("latents", *latents)
    assert metrics["quarantined"] == 2 * len(images)  # sets low and high, as params stand
    reasons = store.read("latents_low_quarantine").to_pylist()
    assert {r["id"] for r in reasons} == images
    assert all("add 1 to params/ae.yaml latents.sets.low.frames" in r["reason"] for r in reasons)
    path = project / "params" / "ae.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["latents"]["sets"]["low"]["frames"].insert(0, 1)
    path.write_text(yaml.safe_dump(doc))
    assert stage("latents", *latents)["quarantined"] == len(images)  # high still has no 1
    rows = store.read("latents_low").to_pylist()
    assert {r["id"] for r in rows if r["frames"] == 1} == images
    assert all(r["latent_shape"][1] == 1 for r in rows if r["frames"] == 1)
