"""params/data.yaml: the data pyramid's stages, one section per stage."""

from pydantic import Field

from osora.config.base import Params


class SynthParams(Params):
    """The synthetic demo set: short H.264 videos with known content and known defects."""

    seed: int = Field(ge=0, description="RNG seed; the same seed gives byte-identical videos")
    num_clean: int = Field(ge=1, le=64, description="videos meant to pass every filter")
    width: int = Field(ge=64, le=1920, description="frame width of the clean videos, px (even)")
    height: int = Field(ge=64, le=1080, description="frame height of the clean videos, px (even)")
    fps: int = Field(ge=16, le=60, description="frame rate of the clean videos")
    duration_s: float = Field(gt=2.0, le=20.0, description="length of the clean videos, s")
    crf: int = Field(ge=0, le=51, description="x264 constant rate factor of the clean videos")


class IngestParams(Params):
    """Registering raw videos in the `videos` table."""

    extensions: list[str] = Field(min_length=1, description="file suffixes taken as videos")


class DataParams(Params):
    synth: SynthParams
    ingest: IngestParams
