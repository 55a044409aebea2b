"""The latent precompute on real clips (ffmpeg-encoded) with a tiny saved DC-AE: the stored latent
equals the model's own to_dit(encode(x)) on the same decoded, resized, cropped frames; short or
missing clips are quarantined with their reason; a rerun resumes everything; retrained weights
change the fingerprint; rows round-trip through Lance and back to tensors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from clip_files import write_clip
from dvc_project import edit_yaml

from osora.config import load_settings
from osora.config.ae import LatentsParams
from osora.config.data import RunnerParams
from osora.config.store import StoreSettings
from osora.data.latents import (
    LatentEncoder,
    cover_size,
    file_sha256,
    latent_columns,
    read_latent,
)
from osora.data.operator import OperatorError
from osora.data.runner import fingerprint, run_operator
from osora.lineage import TableRef, read_receipt, write_receipt
from osora.models.dcae import DCAE
from osora.models.tiling import TileSpec, tiled_encode
from osora.schemas import schema_of
from osora.store import Store
from osora.train.buckets import Bucket
from osora.weights.autoencoder import save_dcae

REPO = Path(__file__).resolve().parents[2]
AE = load_settings(params_dir=REPO / "params").ae  # the tiny DC-AE: 8× space, 4× time, 16 ch


# a latent set's own fields; the rest are shared by the sets
SET_FIELDS = ("level", "resolution", "frames", "aspect_ratios", "min_area")


def latents_params(**change) -> LatentsParams:
    """One latent set `t` (level t, 64 px, 16/32/48 frames, each clip's own aspect ratio, no
    minimum area) with `change` applied."""
    one = {"level": "t", "resolution": 64, "frames": [16, 32, 48], "aspect_ratios": None,
           "min_area": 0.0,
           **{k: v for k, v in change.items() if k in SET_FIELDS}}
    shared = dict(device="cpu", precision="fp32", storage_dtype="float32",
                  tile={"spatial": None, "temporal": None, "overlap": 0.25})
    return LatentsParams(sets={"t": one}, **{**shared, **{k: v for k, v in change.items()
                                                          if k not in SET_FIELDS}})


def pyramid_row(clip_id: str, path: Path, width: int, height: int, frames: int) -> dict:
    return {"id": clip_id, "video_id": f"v-{clip_id}", "uri": str(path), "caption": "waves",
            "text": "waves 24 FPS.", "width": width, "height": height, "fps": 24.0,
            "num_frames": frames, "duration_s": frames / 24}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Clips, their pyramid rows, and a tiny DC-AE saved as ae_train would save it."""
    root = tmp_path_factory.mktemp("latents")
    torch.manual_seed(0)
    model = DCAE(AE.dcae).eval()
    weights = save_dcae(model, root / "dcae.safetensors")
    clips = {
        "wide": (160, 90, 40),  # 16:9 → bucket 32 × 48 × 88
        "tall": (90, 160, 20),  # 9:16 → bucket 16 × 88 × 48
        "short": (160, 90, 10),  # fewer frames than the smallest bucket (16)
    }
    rows = [pyramid_row(name, write_clip(root / f"{name}.mp4", w, h, n, seed=i), w, h, n)
            for i, (name, (w, h, n)) in enumerate(clips.items())]
    rows.append(pyramid_row("gone", root / "gone.mp4", 160, 90, 40))  # no file
    return root, model, weights, {r["id"]: r for r in rows}


def encoder(world, **change) -> LatentEncoder:
    root, _, weights, _ = world
    return LatentEncoder(latents_params(**change), "t", AE, weights,
                         StoreSettings(uri=str(root / "store")))


def decoded(path: Path, width: int, height: int, frames: int) -> torch.Tensor:
    """The first `frames` frames scaled to width × height by PyAV: (T, H, W, 3) uint8."""
    import av

    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame = frame.reformat(width=width, height=height, interpolation="BICUBIC")
            out.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
            if len(out) == frames:
                break
    return torch.stack(out)


def expected_input(path: Path) -> torch.Tensor:
    """The wide clip by hand: 160×90 covering 88×48 is 88×49.5 → 88×50, cropped rows 1..49,
    the first 32 frames, scaled to [-1, 1]: (1, 3, 32, 48, 88)."""
    frames = decoded(path, 88, 50, 32)[:, 1:49]  # (32, 48, 88, 3)
    return (frames.permute(3, 0, 1, 2)[None].double() / 127.5 - 1.0).float()


def test_the_stored_latent_is_the_models_dit_latent_of_the_bucketed_frames(world):
    _, model, _, rows = world
    op = encoder(world)
    [row] = op.process(rows["wide"])
    pa.Table.from_pylist([row], schema=schema_of(op.output_table))  # a valid table row
    assert op.output_table == "latents_t"
    assert (row["frames"], row["height"], row["width"]) == (32, 48, 88)
    assert row["latent_shape"] == [16, 8, 12, 22]  # (C, 32/4, 48/4, 88/4): the 4× tiny AE
    assert row["latent_dtype"] == "float32" and row["dit_scale"] is True
    assert row["ae_kind"] == "dcae" and row["ae_sha256"] == op.ae_sha256
    assert (row["id"], row["video_id"], row["text"], row["fps"]) == \
        ("wide", "v-wide", "waves 24 FPS.", 24.0)
    with torch.inference_mode():
        want = model.to_dit(model.encode(expected_input(Path(rows["wide"]["uri"]))))[0]
    got = read_latent(row)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert want.abs().max() > 0.01  # not a trivially zero latent

    [tall] = op.process(rows["tall"])
    assert (tall["frames"], tall["height"], tall["width"]) == (16, 88, 48)
    assert tall["latent_shape"] == [16, 4, 22, 12]


def test_tiled_encoding_goes_through_tiled_encode(world):
    _, model, _, rows = world
    op = encoder(world, tile={"spatial": 64, "temporal": None, "overlap": 0.25},
                 storage_dtype="bfloat16")
    [row] = op.process(rows["tall"])  # 11 latents high: two 8-latent tiles, 2 overlapping
    with torch.inference_mode():
        frames = decoded(Path(rows["tall"]["uri"]), 50, 88, 16)[:, :, 1:49]  # (16, 88, 48, 3)
        x = (frames.permute(3, 0, 1, 2)[None].double() / 127.5 - 1.0).float()
        want = model.to_dit(tiled_encode(model, x, TileSpec(64, None, 0.25)))[0]
        whole = model.to_dit(model.encode(x))[0]
    got = read_latent(row)
    assert got.dtype == torch.bfloat16 and row["latent_dtype"] == "bfloat16"
    assert row["latent_shape"] == [16, 4, 22, 12]
    # the same float32 latent rounded to bfloat16 (within one bf16 step of float32 noise)
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=1e-5)
    assert not torch.allclose(want, whole, rtol=2**-8, atol=1e-5)  # tiling did change it
    assert len(row["latent"]) == want.numel() * 2  # half the float32 bytes


def test_a_too_short_or_missing_clip_is_an_operator_error_with_its_reason(world):
    _, _, _, rows = world
    op = encoder(world)
    with pytest.raises(OperatorError, match=r"short has 10 frames, fewer than the smallest "
                                            r"bucket \(16 frames\)"):
        op.process(rows["short"])
    with pytest.raises(OperatorError, match="gone: no file at"):
        op.process(rows["gone"])


def test_a_clip_too_small_for_the_sets_resolution_is_an_operator_error(world):
    """At 128 px the 160×90 clip (14,400 px) has 0.89× the pixels of its 96×168 bucket
    (16,128 px): kept at min_area 0.8, too small at 0.9."""
    _, _, _, rows = world
    assert encoder(world, resolution=128, min_area=0.8).process(rows["wide"])
    with pytest.raises(OperatorError, match=r"wide is 160×90, less than 0.9× the pixels of its "
                                            r"96×168 bucket at 128 px"):
        encoder(world, resolution=128, min_area=0.9).process(rows["wide"])


def test_aspect_ratios_snap_the_bucket(world):
    """A 160×90 clip (16:9) in a set that lists only 1:1 and 3:1 goes to the nearer on a log
    scale, 3:1 (|ln 3 − ln 16/9| = 0.52 < ln 16/9 = 0.58)."""
    _, _, _, rows = world
    row = encoder(world, aspect_ratios=["1:1", "3:1"]).process(rows["wide"])[0]
    assert (row["height"], row["width"]) == (40, 112)  # 64/√3 = 37 → 40, 64·√3 = 111 → 112
    with pytest.raises(ValueError, match="aspect ratio '16x9' is not W:H"):
        latents_params(aspect_ratios=["16x9"])


def test_runner_quarantines_bad_clips_and_a_rerun_resumes_everything(world, tmp_path):
    _, _, _, rows = world
    store = Store(str(tmp_path / "store"))
    inputs = pa.Table.from_pylist(list(rows.values()), schema=schema_of("pyramid_t"))
    runner = RunnerParams(backend="local", workers=1, timeout_s=120, commit_every=2)
    op = encoder(world)
    first = run_operator(op, inputs, stage="latents", store=store, params=runner,
                         progress=False)
    assert first.processed == 4 and first.resumed == 0
    assert sorted(first.rows.column("id").to_pylist()) == ["tall", "wide"]
    reasons = dict(zip(first.quarantine.column("id").to_pylist(),
                       first.quarantine.column("reason").to_pylist()))
    assert set(reasons) == {"short", "gone"}
    assert "fewer than the smallest bucket" in reasons["short"]
    assert "no file" in reasons["gone"]

    [tall] = [r for r in first.rows.to_pylist() if r["id"] == "tall"]
    [direct] = op.process(rows["tall"])  # the worker process computed the same latent
    torch.testing.assert_close(read_latent(tall), read_latent(direct), rtol=1e-5, atol=1e-6)

    again = run_operator(encoder(world), inputs, stage="latents", store=store, params=runner,
                         progress=False)
    assert again.processed == 0 and again.resumed == 4
    assert again.rows.equals(first.rows) and again.quarantine.num_rows == 2

    # The table the stage publishes holds the latents exactly (large binary through Lance).
    store.sync(op.output_table, first.rows, key="id", update_matched=True)
    stored = {r["id"]: r for r in store.read(op.output_table).to_pylist()}
    for r in first.rows.to_pylist():
        assert torch.equal(read_latent(stored[r["id"]]), read_latent(r))


def test_other_weights_change_the_hash_and_the_fingerprint(world, tmp_path):
    _, _, weights, _ = world
    op = encoder(world)
    assert op.ae_sha256 == file_sha256(weights)
    assert fingerprint(encoder(world)) == fingerprint(op)  # same inputs: work is reused
    torch.manual_seed(1)
    other = save_dcae(DCAE(AE.dcae), tmp_path / "retrained.safetensors")
    retrained = LatentEncoder(latents_params(), "t", AE, other, StoreSettings(uri=str(tmp_path)))
    assert retrained.ae_sha256 != op.ae_sha256
    assert fingerprint(retrained) != fingerprint(op)
    assert fingerprint(encoder(world, storage_dtype="float16")) != fingerprint(op)


def test_workers_get_the_settings_not_a_loaded_model(world):
    op = encoder(world)
    op.setup()
    clone = pickle.loads(pickle.dumps(op))
    assert clone._ae is None and op._ae is not None
    assert fingerprint(clone) == fingerprint(op)


def test_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="ae_train"):
        LatentEncoder(latents_params(), "t", AE, tmp_path / "none.safetensors",
                      StoreSettings(uri=str(tmp_path)))


def test_frame_counts_the_ae_cannot_take_are_named_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"latents.sets.t.frames.*\[17, 33\].*non-causal"):
        LatentEncoder(latents_params(frames=[16, 17, 33]), "t", AE, tmp_path / "w",
                      StoreSettings(uri=str(tmp_path)))
    hunyuan = AE.model_copy(update={"autoencoder": AE.autoencoder.model_copy(
        update={"kind": "hunyuan_vae", "weights": str(tmp_path / "vae.pt")})})
    with pytest.raises(ValueError, match=r"HunyuanVideo VAE.*\[16, 32\].*causal.*1 \+ k·4"):
        LatentEncoder(latents_params(frames=[16, 32]), "t", hunyuan, tmp_path / "w",
                      StoreSettings(uri=str(tmp_path)))
    with pytest.raises(ValueError, match="latents.tile"):  # 36 px is not whole latents of 8
        LatentEncoder(latents_params(tile={"spatial": 36, "temporal": None, "overlap": 0.25}),
                      "t", AE, tmp_path / "w", StoreSettings(uri=str(tmp_path)))
    with pytest.raises(ValueError, match="no latent set 'u'.*latents.sets"):
        LatentEncoder(latents_params(), "u", AE, tmp_path / "w", StoreSettings(uri=str(tmp_path)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_latent_bytes_round_trip(dtype):
    z = torch.randn(4, 3, 2, 5, generator=torch.Generator().manual_seed(0))
    row = {"id": "x", **latent_columns(z, dtype)}
    back = read_latent(row)
    assert back.dtype == getattr(torch, dtype) and back.shape == (4, 3, 2, 5)
    assert torch.equal(back, z.to(back.dtype))
    assert len(row["latent"]) == z.numel() * back.element_size()


def test_corrupt_latent_bytes_are_named():
    row = {"id": "x", **latent_columns(torch.zeros(1, 1, 2, 2), "float32")}
    row["latent"] = row["latent"][:-1]
    with pytest.raises(ValueError, match="latent x: 15 bytes"):
        read_latent(row)


def test_cover_size_covers_the_bucket_keeping_the_aspect():
    assert cover_size(160, 90, Bucket(32, 48, 88)) == (88, 50)  # 88 × 49.5
    assert cover_size(90, 160, Bucket(16, 88, 48)) == (50, 88)
    assert cover_size(1920, 1080, Bucket(129, 192, 336)) == (341, 192)


@pytest.mark.slow
def test_the_stage_publishes_latents_and_a_rerun_changes_nothing(world, tmp_path):
    """pipelines/latents.py in a project of its own: table, quarantine, receipt, metrics."""
    _, _, weights, rows = world
    project = tmp_path / "project"
    shutil.copytree(REPO / "params", project / "params")
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    store = Store(str(project / "store"))
    pyramid = pa.Table.from_pylist(list(rows.values()), schema=schema_of("pyramid_t"))
    version = store.sync("pyramid_t", pyramid, key="id")
    write_receipt(project / "lineage" / "pyramid.json", stage="pyramid",
                  outputs=[TableRef("pyramid_t", store.table_uri("pyramid_t"), version)])
    # one latent set `t` of the level t, which every DiT stage trains on
    edit_yaml(project / "params" / "data.yaml", lambda d: d["pyramid"]["levels"].update(t={}))
    edit_yaml(project / "params" / "ae.yaml", lambda d: d["latents"].update(
        sets={"t": {"level": "t", "resolution": 64, "frames": [16, 32, 48],
                    "aspect_ratios": None, "min_area": 0.0}}))
    edit_yaml(project / "params" / "dit.yaml", lambda d: [
        stage.update(latents="t") for stage in d["train"]["stages"].values()])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSORA_", "DVC_"))}
    cmd = [sys.executable, str(REPO / "pipelines" / "latents.py"),
           "--pyramid", "lineage/pyramid.json", "--weights", str(weights),
           "--receipt", "lineage/latents.json", "--metrics", "metrics/latents.json"]

    def run() -> tuple[str, dict]:
        done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        receipt = (project / "lineage" / "latents.json").read_text()
        return receipt, json.loads((project / "metrics" / "latents.json").read_text())

    receipt, metrics = run()
    assert metrics["rows.latents_t"] == 2 and metrics["quarantined"] == 2
    assert metrics["processed"] == 4 and metrics["t.buckets"] == 2 and metrics["t.clips"] == 4
    refs = read_receipt(project / "lineage" / "latents.json")
    latents = store.read("latents_t", version=refs["latents_t"].version).to_pylist()
    assert {r["id"]: r["latent_shape"] for r in latents} == \
        {"wide": [16, 8, 12, 22], "tall": [16, 4, 22, 12]}
    assert all(read_latent(r).shape == tuple(r["latent_shape"]) for r in latents)
    assert store.read("latents_t_quarantine").num_rows == 2

    again, metrics = run()
    assert again == receipt  # nothing changed: DVC skips what depends on it
    assert metrics["processed"] == 0 and metrics["resumed"] == 4


def test_a_clip_in_s3_encodes_as_the_same_clip_on_disk(world, s3_server):
    """Latents read clip files from an S3 store through the file cache, like a folder."""
    root, _, weights, rows = world
    settings = s3_server.store_settings(f"tests/latents-{root.name}")
    key = "clips/v-wide/wide.mp4"
    Store.from_settings(settings).put_file(Path(rows["wide"]["uri"]), key)
    op = LatentEncoder(latents_params(), "t", AE, weights, settings)
    [from_s3] = op.process({**rows["wide"], "uri": Store.from_settings(settings).file_uri(key)})
    [on_disk] = encoder(world).process(rows["wide"])
    assert from_s3["latent"] == on_disk["latent"]
