"""TileSpec, the tiles of tiled encode/decode (osora.models.tiling): plain Python (no torch),
so the params' tile sections (osora.config.ae) take it as their type without loading torch."""

from dataclasses import dataclass


@dataclass(frozen=True)
class TileSpec:
    """Tile sizes in pixels / frames (None: never tile that axis) and the overlap fraction;
    also the type of the params' tile sections (params/ae.yaml eval.tile and latents.tile,
    params/dit.yaml sample.decode_tile), where every field is stated and these checks are
    their validation."""

    __pydantic_config__ = {"extra": "forbid"}  # as params: an unknown key is an error

    spatial: int | None = 256  # tile side, px
    temporal: int | None = 32  # tile length, frames
    overlap: float = 0.25  # overlap share of a tile (paper 0.25)

    def __post_init__(self) -> None:
        for name, least in (("spatial", 8), ("temporal", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < least):
                raise ValueError(f"TileSpec.{name} must be an int ≥ {least} or None, got "
                                 f"{value!r}")
        if not 0.0 <= self.overlap <= 0.5:
            raise ValueError(
                f"TileSpec.overlap must be in [0, 0.5] (a position may lie in at most two "
                f"tiles), got {self.overlap!r}"
            )
