"""Every Lance table's Arrow schema, in one place.

A stage that writes a table and a stage that reads it agree on its columns because both take
them from here; `osora.store.Store.write` refuses data that does not match. Build rows with the
schema so the types line up: `pa.Table.from_pylist(rows, schema=schema_of("videos"))`.
"""

import pyarrow as pa

VIDEOS = pa.schema(
    [
        # Content hash of the raw file: the same bytes give the same id wherever they live.
        pa.field("id", pa.string(), nullable=False),
        # Where the raw file is: a local path or an s3:// URI.
        pa.field("uri", pa.string(), nullable=False),
        # "video", or "image": a still (its suffix is one of ingest.image_extensions), one
        # frame through every stage, with null fps, duration_s and bit_rate. Stages branch on
        # this column, never on codec names. Ingest always sets it; a null (a row made by
        # hand) is read as "video".
        pa.field("kind", pa.string()),
        # Size of the raw file in bytes.
        pa.field("size_bytes", pa.int64()),
        # Duration in seconds; null when the container does not say.
        pa.field("duration_s", pa.float64()),
        # Average frame rate of the first video stream, frames per second.
        pa.field("fps", pa.float64()),
        # Frame width in pixels.
        pa.field("width", pa.int32()),
        # Frame height in pixels.
        pa.field("height", pa.int32()),
        # Display rotation in degrees from the container (width/height are as displayed).
        pa.field("rotation", pa.int32()),
        # Number of frames in the first video stream (counted or estimated).
        pa.field("num_frames", pa.int64()),
        # Video codec name as the decoder reports it, e.g. "h264".
        pa.field("codec", pa.string()),
        # Codec profile, e.g. "High".
        pa.field("profile", pa.string()),
        # Video stream bit rate in bits per second.
        pa.field("bit_rate", pa.int64()),
        # A caption that came with the file (e.g. from a sidecar); null when none.
        pa.field("caption", pa.string()),
        # Why the file could not be probed; null for readable files (bad files are kept,
        # quarantined by this reason, rather than dropped).
        pa.field("probe_error", pa.string()),
        # When the row was ingested.
        pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)

# Preprocessing verdict per raw video (docs/recipe.md §1): every video keeps a row, dropped or not.
PREPROCESS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the video's id
        pa.field("keep", pa.bool_(), nullable=False),
        # Why the video was dropped ("too_short", "low_fps", "low_bpp", "aspect_ratio",
        # "constrained_baseline", "unreadable: <why>"); null when kept.
        pa.field("reason", pa.string()),
        pa.field("bits_per_pixel", pa.float64()),  # bit_rate / (w·h·fps)
        pa.field("aspect_ratio", pa.float64()),  # w / h
    ]
)

# Shot analysis per kept video: one decode pass gives scene cuts and the black-border crop.
# An image: num_frames 1, no cuts, null fps, the crop of its one frame.
SHOTS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the video's id
        pa.field("num_frames", pa.int64()),  # frames decoded
        pa.field("fps", pa.float64()),
        pa.field("cut_frames", pa.list_(pa.int64())),  # first frame of shots 2, 3, ...
        # The picture inside black borders, in source pixels (the full frame when none).
        pa.field("crop_x", pa.int32()),
        pa.field("crop_y", pa.int32()),
        pa.field("crop_w", pa.int32()),
        pa.field("crop_h", pa.int32()),
    ]
)

# Training clips cut from shots: 2–8 s, H.264, fps ≤ 30, longer side ≤ 1080, borders cropped.
# An image (videos.kind "image") gives one clip of 1 frame, a PNG, with null start_s,
# end_s, duration_s and fps (osora.data.clips).
CLIPS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # "<video id>-<index>"
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),  # the clip file in the artifact store
        pa.field("start_frame", pa.int64()),  # in source frames, inclusive
        pa.field("end_frame", pa.int64()),  # in source frames, exclusive
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),  # of the clip file
        pa.field("width", pa.int32()),  # of the clip file
        pa.field("height", pa.int32()),
        pa.field("num_frames", pa.int64()),
        pa.field("crop_x", pa.int32()),  # the crop applied, in source pixels
        pa.field("crop_y", pa.int32()),
        pa.field("crop_w", pa.int32()),
        pa.field("crop_h", pa.int32()),
    ]
)

# One table per scorer, keyed by clip id, holding raw measurements; thresholds are applied
# per pyramid level, so changing a threshold never re-scores.
SCORE_AESTHETIC = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the clip's id
        pa.field("aesthetic", pa.float64()),  # CLIP + MLP head, mean of first/middle/last frame
    ]
)
SCORE_MOTION = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        # Mean VMAF motion score (ffmpeg vmafmotion); null for a 1-frame clip (an image):
        # one frame has no motion, and 0 would claim a static video.
        pa.field("motion", pa.float64()),
    ]
)
SCORE_BLUR = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        # Variance of the Laplacian on uniformly spaced frames; a frame is blurry below the
        # level's threshold, the clip when most frames are.
        pa.field("laplacian_var", pa.list_(pa.float64())),
    ]
)
SCORE_OCR = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text_area", pa.float64()),  # area of confident text boxes / frame area
        pa.field("text_boxes", pa.int32()),  # boxes counted
    ]
)
SCORE_JITTER = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        # Mean frame-to-frame change (PySceneDetect); null for a 1-frame clip (an image).
        pa.field("jitter", pa.float64()),
    ]
)

# Captions per clip, with where they came from.
CAPTIONS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the clip's id
        pa.field("caption", pa.string()),
        pa.field("captioner", pa.string()),  # backend and model, e.g. "openai:Qwen2.5-VL-7B"
        pa.field("prompt_version", pa.string()),  # version of the six-aspect prompt
    ]
)

# A pyramid level: the clips that pass its thresholds, ready for training. One table per level
# ("pyramid_<level>"); stricter levels are subsets of looser ones.
PYRAMID = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the clip's id
        pa.field("video_id", pa.string(), nullable=False),  # its source video
        pa.field("uri", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        # The training text: caption + fps + motion score; an image's is its caption alone
        # (osora.prompts.conditioned_text).
        pa.field("text", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("fps", pa.float64()),
        pa.field("num_frames", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("aesthetic", pa.float64()),
        pa.field("motion", pa.float64()),
        pa.field("text_area", pa.float64()),
        pa.field("jitter", pa.float64()),
    ]
)

# DiT training latents of one pyramid level ("latents_<level>"), one row per clip, encoded at
# its bucket size (osora.data.latents; read back with osora.data.latents.read_latent).
LATENTS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the clip's id
        pa.field("video_id", pa.string(), nullable=False),  # its source video
        pa.field("text", pa.string()),  # the training text, as in the pyramid level
        pa.field("fps", pa.float64()),  # of the clip: the encoded frames are consecutive
        # The bucket, in pixels: the clip's first `frames` frames, resized to cover
        # height × width and centre-cropped.
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        # The latent's values, C-order (C, T', H', W'), raw little-endian bytes of
        # `latent_dtype`. Already in the DiT's scale when `dit_scale`: ae.to_dit(ae.encode(x)),
        # so the DiT uses it as is and decoding takes ae.decode(ae.from_dit(z)).
        pa.field("latent", pa.large_binary(), nullable=False),
        pa.field("latent_dtype", pa.string(), nullable=False),  # float32, bfloat16 or float16
        pa.field("latent_shape", pa.list_(pa.int32()), nullable=False),  # (C, T', H', W')
        pa.field("dit_scale", pa.bool_(), nullable=False),
        pa.field("ae_kind", pa.string(), nullable=False),  # "dcae" or "hunyuan_vae"
        # sha256 of the AE weights file: latents of another AE are refused by DiT training.
        pa.field("ae_sha256", pa.string(), nullable=False),
    ]
)

# The text encoder's outputs for the captions DiT training reads (osora.data.text_embeds), one
# row per (encoder, text): content-keyed, so a caption shared by many clips is stored once and
# an embedding of other weights or settings is never served. Tensors as raw bytes of `dtype`
# (osora.data.tensor_bytes), all L positions kept: the DiT sees the padding's states too.
TEXT_EMBEDS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # osora.data.text_embeds.text_key
        pa.field("text", pa.string(), nullable=False),
        pa.field("encoder", pa.string(), nullable=False),  # the TextEncoder's identity
        pa.field("dtype", pa.string(), nullable=False),  # of seq and pooled
        pa.field("seq", pa.large_binary(), nullable=False),  # (L, D_seq)
        pa.field("seq_shape", pa.list_(pa.int32()), nullable=False),
        pa.field("mask", pa.list_(pa.bool_()), nullable=False),  # (L,) True = a real token
        pa.field("pooled", pa.large_binary(), nullable=False),  # (D_vec,)
    ]
)

# Rows a stage could not process, with the reason: bad input is set aside, never lost.
QUARANTINE = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the input row's key
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        # Which code and params set it aside (the runner's work-log fingerprint): a rerun
        # under another fingerprint retries it. Null where no operator was involved (ingest).
        pa.field("fingerprint", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "videos": VIDEOS,
    "preprocess": PREPROCESS,
    "shots": SHOTS,
    "clips": CLIPS,
    "score_aesthetic": SCORE_AESTHETIC,
    "score_motion": SCORE_MOTION,
    "score_blur": SCORE_BLUR,
    "score_ocr": SCORE_OCR,
    "score_jitter": SCORE_JITTER,
    "captions": CAPTIONS,
    "text_embeds": TEXT_EMBEDS,
}
# Tables whose name has one of these prefixes share a schema: "pyramid_<level>",
# "latents_<level>" and "<stage>_quarantine" (suffix).
FAMILIES: dict[str, pa.Schema] = {"pyramid_": PYRAMID, "latents_": LATENTS}
QUARANTINE_SUFFIX = "_quarantine"


def schema_of(name: str) -> pa.Schema:
    """The schema of table `name`; a KeyError naming the known tables when there is none."""
    if name in SCHEMAS:
        return SCHEMAS[name]
    if name.endswith(QUARANTINE_SUFFIX):
        return QUARANTINE
    for prefix, schema in FAMILIES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return schema
    known = ", ".join([*sorted(SCHEMAS), *(f"{p}<level>" for p in FAMILIES),
                       "<stage>_quarantine"])
    raise KeyError(
        f"no schema for table {name!r}: known tables are {known} (add one to osora/schemas.py)"
    )
