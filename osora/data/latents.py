"""Latent precompute: a pyramid level's clips encoded once by the AE, for DiT training.

`LatentEncoder` is an Operator from a `pyramid_<level>` row to one `latents_<set>` row
(schema in osora.schemas), for one latent set of params/ae.yaml (a level at one resolution:
the paper's stages 1–2 train on 256px latents, stage 3 on 768px ones). For each clip it
1. picks the clip's bucket (osora.train.buckets): the largest allowed frame count not above the
   clip's, and the size of area ≈ resolution² with the clip's aspect ratio, sides multiples of
   the AE's spatial compression × the DiT's patch; a clip shorter than every count is
   quarantined with that reason;
2. decodes the clip's first `frames` frames, resized (bicubic) to cover the bucket size, and
   centre-crops them (the reference's resize-crop), scaled to [-1, 1];
3. encodes them (tiled when params say so) and stores `ae.to_dit(z)`: the latent in the DiT's
   scale, so DiT training uses it as is (`dit_scale` says so in every row) and a sample decodes
   with `ae.decode(ae.from_dit(z))`.

The latent is stored as raw bytes of `storage_dtype` (osora.data.tensor_bytes) with its dtype
and shape in their own columns (`read_latent` turns a row back into a tensor).

Images (clips of one frame) go to the 1-frame bucket of a set whose `frames` list 1, and only
there (osora.train.buckets): the image is decoded, resized and cropped like a clip's frames, and
encoded as a 1-frame video into one latent frame (C, 1, H', W') by either AE: the causal VAE's
first latent frame is its first frame alone, and the non-causal Video DC-AE skips its temporal
halvings on a time axis of length 1, as the reference `dc_ae` does (it neither pads nor repeats
the image to td frames). Its row's fps is null, its text the caption alone. A set whose
`frames` has no 1 sets its images aside with a reason naming the param to change
(`set_aside_images`, before the runner, so a set of mostly images is not mistaken for a broken
environment; the operator refuses one the same way if it gets one).

Every row carries the AE's kind and the sha256 of its weights file, so DiT training can refuse
latents of another AE. The same hash, the AE's settings and the source of the code that decides
the numbers (AE model, tiling, buckets, frame decoding) are the operator's fingerprint
(`describe`): retrained weights or changed code re-encode everything instead of reusing the
runner's work log.

The captions' text embeddings are a table of their own (osora.data.text_embeds), keyed by the
text encoder and the text: a caption shared by many clips is stored once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from osora.data.clip_file import with_clip_file
from osora.data.operator import Operator, OperatorError, Row, code_fingerprint
from osora.data.tensor_bytes import (
    check_storage_dtype,
    tensor_from_bytes,
    tensor_to_bytes,
)
from osora.fileio import file_sha256
from osora.schemas import schema_of
from osora.train.buckets import Bucket, BucketSpec, parse_ratio

if TYPE_CHECKING:
    import numpy as np
    import torch

    from osora.config.ae import AEParams, LatentsParams
    from osora.config.store import StoreSettings
    from osora.models.autoencoder import AutoencoderSpec
    from osora.store import Store



# -- images without a 1-frame bucket ----------------------------------------------------------


def no_image_bucket(clip_id: str, set_name: str) -> str:
    """The reason an image is not encoded into a set without a 1-frame bucket."""
    return (f"latents: clip {clip_id} is an image (1 frame) and latent set {set_name!r} has no "
            f"1-frame bucket: add 1 to params/ae.yaml latents.sets.{set_name}.frames to train "
            "on images")


def set_aside_images(clips: pa.Table, set_name: str, frames: list[int]
                     ) -> tuple[pa.Table, pa.Table]:
    """(the clips to encode, `latents_<set>_quarantine` rows of the images set aside): a set
    whose `frames` lists 1 keeps every clip; otherwise its images (1-frame clips) are set aside
    with `no_image_bucket`'s reason, and no fingerprint (no operator saw them), so adding 1 to
    the set's frames encodes them on the next run."""
    import pyarrow.compute as pc

    stage = f"latents_{set_name}"
    images = pc.fill_null(pc.equal(clips.column("num_frames"), 1), False)
    if 1 in frames or not pc.any(images).as_py():
        return clips, schema_of(f"{stage}_quarantine").empty_table()
    ids = clips.filter(images).column("id").to_pylist()
    quarantine = pa.table(
        {"id": ids, "stage": [stage] * len(ids),
         "reason": [no_image_bucket(i, set_name) for i in ids],
         "fingerprint": pa.nulls(len(ids), pa.string())},
        schema=schema_of(f"{stage}_quarantine"),
    )
    return clips.filter(pc.invert(images)), quarantine


# -- the AE's geometry, without loading it ------------------------------------------------------


def autoencoder_spec(ae: AEParams) -> AutoencoderSpec:
    """The compression of the AE that params/ae.yaml:autoencoder chooses, from params alone (the
    parent process needs it to check the buckets; the weights load in the workers)."""
    from osora.models.autoencoder import HUNYUAN_VIDEO_VAE, AutoencoderSpec

    if ae.autoencoder.kind == "hunyuan_vae":
        return HUNYUAN_VIDEO_VAE
    d = ae.dcae
    return AutoencoderSpec(
        "Video DC-AE", temporal_down=2 ** sum(d.temporal_down),
        spatial_down=2 ** (len(d.widths) - 1), latent_channels=d.latent_channels,
        causal=False, scaling_factor=d.scaling_factor,
    )


def weights_path(ae: AEParams, trained: str | Path) -> Path:
    """The weights file the AE loads from: the configured checkpoint, else ae_train's DC-AE."""
    return Path(ae.autoencoder.weights or trained)


# -- latent bytes --------------------------------------------------------------------------------


def latent_columns(z: torch.Tensor, storage_dtype: str) -> dict[str, Any]:
    """The latent columns of a row for latent `z` (C, T', H', W'), stored as `storage_dtype`."""
    check_storage_dtype(storage_dtype)
    if z.ndim != 4:
        raise ValueError(f"a latent is (C, T', H', W'), got shape {tuple(z.shape)}")
    return {
        "latent": tensor_to_bytes(z, storage_dtype),
        "latent_dtype": storage_dtype,
        "latent_shape": [int(s) for s in z.shape],
    }


def read_latent(row: Row) -> torch.Tensor:
    """The latent of a `latents_<level>` row as a tensor (C, T', H', W') of its stored dtype,
    in the DiT's scale when the row's `dit_scale` is true (always, for rows this module
    wrote). ValueError naming the row when its bytes do not match its dtype and shape."""
    shape = tuple(row.get("latent_shape") or ())
    what, fix = f"latent {row.get('id')}", "the row is corrupt, rerun the latents stage"
    if len(shape) != 4:
        raise ValueError(f"{what}: shape {shape} is not (C, T', H', W'); {fix}")
    return tensor_from_bytes(row["latent"], row.get("latent_dtype"), shape, what=what, fix=fix)


# -- frames ----------------------------------------------------------------------------------------


def cover_size(width: int, height: int, bucket: Bucket) -> tuple[int, int]:
    """(width, height) of the clip scaled, aspect kept, to cover the bucket's height × width:
    both sides ≥ the bucket's, one of them equal (up to rounding)."""
    scale = max(bucket.width / width, bucket.height / height)
    return max(bucket.width, round(width * scale)), max(bucket.height, round(height * scale))


def centre_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """The central height × width of frames (T, H, W, 3)."""
    y0 = (frames.shape[1] - height) // 2
    x0 = (frames.shape[2] - width) // 2
    return frames[:, y0:y0 + height, x0:x0 + width]


def to_model_input(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (1, 3, T, H, W) float32 in [-1, 1]."""
    import torch

    x = torch.from_numpy(frames.copy()).permute(3, 0, 1, 2)  # (3, T, H, W) uint8
    return x[None].float().div(127.5).sub(1.0)  # (1, 3, T, H, W)


# -- the operator -------------------------------------------------------------------------------


class LatentEncoder(Operator):
    """One `latents_<set>` row per row of the set's `pyramid_<level>` (module doc). Construct
    in the parent (checks the buckets against the AE and hashes the weights); `setup()` loads the
    AE once per worker."""

    def __init__(self, params: LatentsParams, name: str, ae: AEParams, trained: str | Path,
                 store: StoreSettings):
        from osora.models.tiling import latent_tile

        if name not in params.sets:
            raise ValueError(f"no latent set {name!r} in params/ae.yaml latents.sets "
                             f"({', '.join(params.sets)})")
        self.output_table = f"latents_{name}"
        self.set_name = name
        # only this set's entry: adding another set leaves this one's fingerprint alone
        self.params = params.model_copy(update={"sets": {name: params.sets[name]}})
        self.set = params.sets[name]
        self.ae_params = ae
        spec = autoencoder_spec(ae)
        try:
            self.buckets = BucketSpec(
                resolution=self.set.resolution,
                multiple=spec.spatial_down * ae.autoencoder.dit_patch,
                frame_counts=tuple(self.set.frames),
                temporal_down=spec.temporal_down,
                causal=spec.causal,
                aspect_ratios=tuple(parse_ratio(r) for r in self.set.aspect_ratios or ()),
                min_area=self.set.min_area,
            )
        except ValueError as err:
            raise ValueError(f"params/ae.yaml latents.sets.{name}.frames, for the "
                             f"{spec.name}: {err}") from None
        self.tiles = None
        tile = params.tile
        if tile.spatial is not None or tile.temporal is not None:
            try:
                self.tiles = tile
                latent_tile(tile.spatial, spec.spatial_down, tile.overlap, "spatial")
                latent_tile(tile.temporal, spec.temporal_down, tile.overlap, "temporal")
            except ValueError as err:
                raise ValueError(f"params/ae.yaml latents.tile: {err}") from None
        self.weights = str(weights_path(ae, trained))
        if not Path(self.weights).is_file():
            raise FileNotFoundError(f"AE weights {self.weights} not found: run ae_train (dvc "
                                    "repro ae_train) or set params/ae.yaml autoencoder.weights")
        self.ae_sha256 = file_sha256(self.weights)
        self.spec = spec
        self._store_settings = store
        self._store: Store | None = None
        self._ae = None

    def describe(self) -> dict[str, Any]:
        """What decides the latents: the params, the AE's settings, its weights' hash and the
        code around the AE. Not where the weights or clips are read from."""
        kind = self.ae_params.autoencoder.kind
        model = "osora.models.dcae" if kind == "dcae" else "osora.models.hunyuan_vae"
        return {
            "params": self.params,
            "autoencoder": kind,
            # its params keys as JSON (a dataclass: no model_dump for the fingerprint to call)
            "dcae": self.ae_params.model_dump(mode="json")["dcae"] if kind == "dcae" else None,
            "ae_sha256": self.ae_sha256,
            "code": code_fingerprint(model, "osora.models.tiling", "osora.train.buckets",
                                   "osora.media.frames"),
        }

    def __getstate__(self) -> dict[str, Any]:
        """Workers get the settings, never a loaded AE (each loads its own in setup)."""
        return {**vars(self), "_ae": None, "_store": None}

    def setup(self) -> None:
        if self._ae is not None:
            return
        from osora.store import Store
        from osora.weights.autoencoder import load_autoencoder

        self._store = Store.from_settings(self._store_settings)
        ae = load_autoencoder(self.ae_params, self.weights, self.params.device)
        got = (ae.spatial_down, ae.temporal_down, ae.causal, ae.latent_channels)
        want = (self.spec.spatial_down, self.spec.temporal_down, self.spec.causal,
                self.spec.latent_channels)
        if got != want:
            raise RuntimeError(
                f"the loaded AE has (spatial_down, temporal_down, causal, channels) {got}, "
                f"params say {want}: fix osora.data.latents.autoencoder_spec"
            )
        self._ae = ae

    def process(self, row: Row) -> list[Row]:
        self.setup()
        clip_id, uri = row["id"], row["uri"]
        bucket = self.buckets.assign(int(row["width"]), int(row["height"]),
                                     int(row["num_frames"]))
        if bucket is None and row["num_frames"] == 1:
            raise OperatorError(no_image_bucket(clip_id, self.set_name))
        if bucket is None:
            raise OperatorError(self._too_short(clip_id, row["num_frames"]))
        if self.buckets.too_small(int(row["width"]), int(row["height"]), bucket):
            raise OperatorError(
                f"latents: clip {clip_id} is {row['width']}×{row['height']}, less than "
                f"{self.set.min_area:g}× the pixels of its {bucket.height}×{bucket.width} "
                f"bucket at {self.set.resolution} px: too small for this set")
        frames = with_clip_file(
            self._store, uri,
            lambda path: self.read_frames(path, int(row["width"]), int(row["height"]), bucket),
            stage="latents", clip_id=clip_id, doing="decoded")
        if frames.shape[0] < bucket.frames:  # fewer frames decodable than the table says
            fewer = self.buckets.frames_for(frames.shape[0])
            if fewer is None:
                raise OperatorError(self._too_short(clip_id, frames.shape[0]))
            bucket = Bucket(fewer, bucket.height, bucket.width)
            frames = frames[:fewer]
        z = self.encode(to_model_input(frames))  # (C, T', H', W') in the DiT's scale
        return [{
            "id": clip_id,
            "video_id": row["video_id"],
            "text": row.get("text"),
            "fps": row.get("fps"),
            "frames": bucket.frames,
            "height": bucket.height,
            "width": bucket.width,
            **latent_columns(z, self.params.storage_dtype),
            "dit_scale": True,
            "ae_kind": self.ae_params.autoencoder.kind,
            "ae_sha256": self.ae_sha256,
        }]

    def _too_short(self, clip_id: str, frames: int) -> str:
        return (f"latents: clip {clip_id} has {frames} frames, fewer than the smallest bucket "
                f"({self.buckets.frame_counts[0]} frames)")

    @staticmethod
    def read_frames(path: Path, width: int, height: int, bucket: Bucket) -> np.ndarray:
        """The clip's first bucket.frames frames (fewer if it has fewer), resized to cover the
        bucket and centre-cropped: (T, bucket.height, bucket.width, 3) uint8."""
        from osora.media.frames import read_video

        size = cover_size(width, height, bucket)
        frames = read_video(path, size=size, max_frames=bucket.frames)  # (T, h, w, 3)
        return centre_crop(frames, bucket.height, bucket.width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (1, 3, T, H, W) in [-1, 1] → float32 latent (C, T', H', W'), DiT scale."""
        import torch

        from osora.models.tiling import tiled_encode

        device = self.params.device
        with torch.inference_mode(), torch.autocast(
            device_type=device, dtype=torch.bfloat16, enabled=self.params.precision == "bf16"
        ):
            x = x.to(device)
            z = self._ae.encode(x) if self.tiles is None else tiled_encode(self._ae, x,
                                                                            self.tiles)
        return self._ae.to_dit(z.float())[0].cpu()  # (C, T', H', W')
