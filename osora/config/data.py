"""params/data.yaml: the data pyramid's stages, one section per stage (docs/recipe.md §1)."""

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from osora.config.base import Params


class SynthGridParams(Params):
    """The training grid: square videos of one shape moving over a plain background, covering
    the colour × shape × direction combinations but `held_out` of them, which the sample stage
    asks for as prompts the model never saw (osora.data.synth_grid)."""

    count: int = Field(ge=0, le=1000, description="grid videos (each one combination)")
    size: int = Field(ge=32, le=512, description="frame side, px (even)")
    fps: int = Field(ge=16, le=60, description="frame rate")
    duration_s: float = Field(gt=2.0, le=20.0, description="length of each video, s")
    crf: int = Field(ge=0, le=51, description="x264 constant rate factor: plain backgrounds "
                     "need a lower one than the clean videos' to keep the bits per pixel "
                     "preprocess asks for")
    shape_fraction: float = Field(gt=0.05, le=0.5, description="shape size / frame side")
    speeds: list[float] = Field(
        min_length=1, description="px per frame at `size`, one per video in turn: the motion "
        "scores the model learns to follow")
    held_out: int = Field(ge=0, le=64, description="colour × shape × direction combinations "
                          "never rendered: the sample stage's held-out prompts")

    @field_validator("size")
    @classmethod
    def _even(cls, size: int) -> int:
        if size % 2:
            raise ValueError(f"synth.grid.size must be even (H.264 yuv420p), got {size}")
        return size

    @field_validator("speeds")
    @classmethod
    def _positive(cls, speeds: list[float]) -> list[float]:
        if min(speeds) <= 0:
            raise ValueError(f"synth.grid.speeds must be > 0 px per frame, got {speeds}")
        return speeds


class SynthParams(Params):
    """The synthetic demo set: short H.264 videos with known content and known defects."""

    seed: int = Field(ge=0, description="RNG seed; the same seed gives byte-identical videos")
    num_clean: int = Field(ge=1, le=64, description="videos meant to pass every filter")
    width: int = Field(ge=64, le=1920, description="frame width of the clean videos, px (even)")
    height: int = Field(ge=64, le=1080, description="frame height of the clean videos, px (even)")
    fps: int = Field(ge=16, le=60, description="frame rate of the clean videos")
    duration_s: float = Field(gt=2.0, le=20.0, description="length of the clean videos, s")
    crf: int = Field(ge=0, le=51, description="x264 constant rate factor of the clean videos")
    grid: SynthGridParams | None = Field(
        default=None, description="the training grid and its held-out combinations; null: none")


class IngestParams(Params):
    """Registering raw videos, and images, in the `videos` table (an image is a 1-frame item:
    the paper trains on images beside videos)."""

    sources: list[str] = Field(
        min_length=1,
        description="where the raw videos are, each a folder (searched recursively), a glob "
        "such as 'raw/**/*.mp4', a .csv/.parquet manifest with a 'path' column (and optionally "
        "'caption'), or an s3://bucket/prefix; relative paths are read against the project "
        "folder",
    )
    extensions: list[str] = Field(
        min_length=1,
        description="file suffixes taken as videos in folders, globs and s3:// prefixes, e.g. "
        "'.mp4' (case-insensitive); a manifest's files are taken as listed",
    )

    image_extensions: list[str] = Field(
        default_factory=list,
        description="file suffixes taken as still images (kind 'image', one frame) in folders, "
        "globs, s3:// prefixes and manifests, e.g. '.jpg' (case-insensitive); empty: no images",
    )

    @field_validator("extensions", "image_extensions")
    @classmethod
    def _dotted(cls, extensions: list[str]) -> list[str]:
        bad = [e for e in extensions if not e.startswith(".") or len(e) < 2 or "/" in e]
        if bad:
            raise ValueError(f"extensions must look like '.mp4', got {bad}")
        return extensions

    @model_validator(mode="after")
    def _video_or_image(self) -> "IngestParams":
        both = sorted({e.lower() for e in self.extensions}
                      & {e.lower() for e in self.image_extensions})
        if both:
            raise ValueError(f"{both} are listed as both video and image extensions: a file is "
                             "one or the other")
        return self


class PreprocessParams(Params):
    """Drop rules for raw videos (docs/recipe.md §1): a video is dropped when any rule holds."""

    min_duration_s: float = Field(ge=0.0, description="drop shorter videos")
    min_bits_per_pixel: float = Field(ge=0.0, description="drop when bit_rate/(w·h·fps) is lower")
    min_fps: float = Field(ge=0.0, description="drop lower frame rates")
    min_aspect_ratio: float = Field(gt=0.0, description="drop when w/h is lower")
    max_aspect_ratio: float = Field(gt=0.0, description="drop when w/h is higher")
    drop_profiles: list[str] = Field(
        description="H.264 profiles to drop, as PyAV names them (case-insensitive)"
    )

    @model_validator(mode="after")
    def _aspect_range(self) -> "PreprocessParams":
        if self.max_aspect_ratio < self.min_aspect_ratio:
            raise ValueError("max_aspect_ratio must be ≥ min_aspect_ratio")
        return self


class ShotsParams(Params):
    """Scene-cut detection and black-border detection in one decode pass."""

    scene_threshold: float = Field(
        gt=0.0, le=100.0, description="a frame whose ffmpeg scdet score exceeds this is a cut"
    )
    analysis_width: int = Field(
        ge=32, le=1920, description="scdet sees frames downscaled to this width (never upscaled)"
    )
    border_limit: int = Field(ge=0, le=255, description="cropdetect: luma at or below is black")
    threads: int = Field(
        ge=0, le=64, description="ffmpeg threads per video: 1 suits one runner worker per core; "
        "0 lets ffmpeg choose"
    )


class ClipsParams(Params):
    """Cutting shots into training clips."""

    min_duration_s: float = Field(
        gt=0.0, description="shorter shots, and shorter remainders of split shots, are dropped"
    )
    max_duration_s: float = Field(
        gt=0.0, description="longer shots are split from their start into pieces this long"
    )
    max_fps: float = Field(
        gt=0.0, description="above this rate every k-th frame is kept, k the smallest integer "
        "that brings the rate to max_fps or below"
    )
    max_side: int = Field(ge=64, description="longer side of a clip at most, px")
    crf: int = Field(ge=0, le=51, description="x264 CRF of the clip files")
    preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
        "veryslow", "placebo",
    ] = Field(description="x264 preset of the clip files")
    threads: int = Field(
        ge=0, le=64, description="ffmpeg threads per video: 1 suits one runner worker per core; "
        "0 lets ffmpeg choose"
    )
    stream_copy: bool = Field(
        description="copy a clip's H.264 packets unchanged instead of re-encoding it where "
        "nothing requires a re-encode (8-bit 4:2:0 source, no crop, scale, frame-rate cut or "
        "rotation; the clip from a key frame to a key frame); false re-encodes every clip"
    )

    @model_validator(mode="after")
    def _durations(self) -> "ClipsParams":
        if self.max_duration_s < self.min_duration_s:
            raise ValueError("max_duration_s must be ≥ min_duration_s")
        return self


class RunnerParams(Params):
    """How operators are mapped over rows."""

    backend: Literal["local", "ray"] = Field(description="local spawn pool, or Ray Data")
    workers: int = Field(ge=1, le=1024, description="worker processes (local backend)")
    timeout_s: float = Field(gt=0.0, description="per-row time limit; a slower row is quarantined")
    commit_every: int = Field(ge=1, description="rows per Lance commit: the unit of resumption")
    retries: int = Field(
        default=3, ge=0, le=20,
        description="tries after the first for a row that hit a transient fault (timeout, "
        "dropped connection); then the stage fails with the cause",
    )
    retry_backoff_s: float = Field(
        default=2.0, ge=0.0, description="wait before the first retry; doubles each time"
    )
    stop_fraction: float = Field(
        default=0.5, gt=0.0, le=1.0,
        description="stop the stage when one cause (reasons alike but for names and numbers) "
        "quarantined this fraction of the rows done in the run, and at least stop_min_rows: a "
        "broken environment, not bad input. 1.0 never stops",
    )
    stop_min_rows: int = Field(
        default=8, ge=1, description="quarantines of one cause needed before stop_fraction applies"
    )
    lease_wait_s: float = Field(
        default=600.0, ge=0.0,
        description="how long a second run of a stage on the same store waits for the first",
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster address (e.g. ray://head:10001); null: local Ray"
    )


class AestheticParams(Params):
    """CLIP ViT-L/14 image embeddings of the first, middle and last frame → the LAION aesthetic
    MLP head. Both paths null: no weights, the scorer writes null scores and the filter is off."""

    clip_path: str | None = Field(
        description="local folder of a CLIP ViT-L/14 (transformers save_pretrained layout, "
        "safetensors); never a hub id"
    )
    head_path: str | None = Field(description="safetensors file of the aesthetic MLP head")
    device: str = Field(
        pattern=r"^(cpu|cuda(:\d+)?|mps)$", description='torch device, e.g. "cpu" or "cuda"'
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> "AestheticParams":
        if (self.clip_path is None) != (self.head_path is None):
            raise ValueError("set both clip_path and head_path (the filter on), or neither (off)")
        return self


class MotionParams(Params):
    """ffmpeg's vmafmotion: mean absolute change of blurred luma between consecutive frames."""

    analysis_width: int = Field(
        ge=32, description="frames wider than this are downscaled to it (never upscaled)"
    )


class BlurParams(Params):
    """Variance of the Laplacian per frame; the pyramid's threshold decides which are blurry."""

    num_frames: int = Field(ge=1, le=64, description="uniformly spaced frames measured")


class OcrParams(Params):
    """RapidOCR (packaged PP-OCR models) on a few frames; text area as a fraction of the frame."""

    min_confidence: float = Field(
        ge=0.0, le=1.0, description="boxes recognised with this confidence or less are ignored"
    )
    num_frames: int = Field(ge=1, le=16, description="uniformly spaced frames read")
    detect_side: int = Field(
        default=736, ge=32, le=4096, description="the text detector resizes each frame's short "
        "side to this many px (RapidOCR's default 736); smaller is faster and misses small text")
    threads: int = Field(
        ge=0, le=64, description="ONNX Runtime threads per runner worker: 1 suits one worker "
        "per core; 0 lets ONNX Runtime choose"
    )


class JitterParams(Params):
    """PySceneDetect's ContentDetector frame-to-frame change (HSV), averaged over the clip."""

    analysis_width: int = Field(
        ge=32, description="frames wider than this are downscaled to it (never upscaled)"
    )


class ScoresParams(Params):
    aesthetic: AestheticParams
    motion: MotionParams
    blur: BlurParams
    ocr: OcrParams
    jitter: JitterParams


class OpenAICaptionParams(Params):
    """An OpenAI-compatible chat endpoint (vLLM, a hosted Qwen). The key comes from the
    environment variable named by `api_key_env`, never from this file."""

    base_url: str | None = Field(
        description="e.g. http://127.0.0.1:8000/v1 (the part before /chat/completions)"
    )
    model: str = Field(min_length=1)
    api_key_env: str = Field(
        description="name of the environment variable holding the key; unset: no auth header"
    )
    timeout_s: float = Field(gt=0.0, description="per request (connect, then between bytes)")
    max_retries: int = Field(
        ge=0, le=20, description="retries after the first try (timeouts, 429, 5xx, bad replies)"
    )
    backoff_s: float = Field(
        gt=0.0, description="wait before the first retry; doubles each retry, plus jitter"
    )
    max_backoff_s: float = Field(gt=0.0, description="longest wait between tries")
    requests_per_minute: float = Field(
        gt=0.0,
        description="client-side limit per process; each runner worker has its own, so set "
        "the endpoint's limit divided by runner.workers",
    )
    num_frames: int = Field(ge=1, le=32, description="frames sent per clip")
    max_tokens: int = Field(ge=16)

    @model_validator(mode="after")
    def _backoff(self) -> "OpenAICaptionParams":
        if self.max_backoff_s < self.backoff_s:
            raise ValueError("max_backoff_s must be ≥ backoff_s")
        return self


class LocalCaptionParams(Params):
    model_path: str | None = Field(
        description="local folder of a transformers VLM (save_pretrained layout); never a hub id"
    )
    num_frames: int = Field(ge=1, le=32)
    max_new_tokens: int = Field(ge=16)
    device: str = Field(description='torch device, e.g. "cpu" or "cuda"')
    dtype: Literal["float32", "bfloat16", "float16"] = Field(description="weights' dtype")


class CaptionsParams(Params):
    """Captions (docs/recipe.md §1): the clip's own sidecar/manifest caption, or a VLM behind
    an OpenAI-compatible endpoint, or a local transformers VLM; one prompt for both VLMs."""

    backend: Literal["sidecar", "openai", "local"]
    openai: OpenAICaptionParams
    local: LocalCaptionParams

    @model_validator(mode="after")
    def _backend_configured(self) -> "CaptionsParams":
        if self.backend == "openai" and not self.openai.base_url:
            raise ValueError("backend is openai but openai.base_url is null: set the endpoint")
        if self.backend == "local" and not self.local.model_path:
            raise ValueError("backend is local but local.model_path is null: set a model folder")
        return self


class PyramidLevel(Params):
    """One level: the clips of the looser level before it that pass these limits. A null
    limit is no limit; a limit on a score that was not evaluated is off (and reported)."""

    min_aesthetic: float | None = None
    min_motion: float | None = None
    max_motion: float | None = None
    min_laplacian_var: float | None = Field(
        default=None, description="a frame below is blurry; the clip is when most frames are"
    )
    max_text_area: float | None = None
    max_jitter: float | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_side: int | None = Field(default=None, description="shorter side at least, px")
    require_caption: bool = False


class PyramidParams(Params):
    # A mapping, in order from loosest to strictest, so one level's limit can be changed by
    # name: `dvc exp run -S params/data.yaml:pyramid.levels.filtered.max_jitter=4`.
    levels: dict[str, PyramidLevel] = Field(min_length=1, description="loosest first")

    @model_validator(mode="after")
    def _names(self) -> "PyramidParams":
        bad = [name for name in self.levels if not re.fullmatch(r"[a-z0-9_]+", name)]
        if bad:
            raise ValueError(f"level names must be lower-case letters, digits or _: {bad}")
        return self


class StatsParams(Params):
    bins: int = Field(ge=2, le=200, description="histogram bins")


class DataParams(Params):
    synth: SynthParams
    ingest: IngestParams
    preprocess: PreprocessParams
    shots: ShotsParams
    clips: ClipsParams
    runner: RunnerParams
    scores: ScoresParams
    captions: CaptionsParams
    pyramid: PyramidParams
    stats: StatsParams
