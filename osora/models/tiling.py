"""Encode and decode videos of any size with overlapping tiles and linear blending.

A high-resolution video does not fit an AE in one pass, so it is cut into overlapping tiles in
time, height and width (docs/recipe.md §2: reference 256 px spatial tiles, 32-frame temporal tiles,
overlap 0.25; HunyuanVAE 256 px, 64 frames, 0.25). Each tile goes through the AE on its own and
the tile outputs are summed into one output buffer with weights that ramp linearly across each
overlap and sum to 1 everywhere. Only one tile is alive at a time: memory is the output buffer
plus one tile.

The rules, all in latent units so that tiles line up with the AE's compression blocks:
- A tile of `spatial` pixels is Lz = spatial / sd latents; the stride is
  Sz = Lz·(1 − overlap); both must be integers (else ValueError). Tiles start at 0, Sz, 2·Sz, …;
  the last one is cut short at the border (it still extends past the previous tile, because
  there are just enough tiles to cover the axis). Time works the same with `temporal`
  and td. Non-causal: a latent tile [a, b) ↔ pixel tile [a·d, b·d).
- Causal time (the first frame is encoded alone, T = 1 + k·td): tiles are laid out over the
  k groups of td frames; a group tile [a, b) is encoded from the 1 + (b − a)·td frames
  [a·td, b·td + 1) — `temporal` + 1 frames for a full tile, the shape a causal AE accepts —
  and gives 1 + (b − a) latents. Its first latent encodes frame a·td alone, as if it began a
  video; it is kept for the first tile (it is latent 0) and dropped for the others, whose
  remaining latents are the global latents [a + 1, b + 1). Decoding mirrors it: latents
  [a, b + 1) decode to 1 + (b − a)·td frames; the first (decoded from a lone leading latent) is
  dropped except in the first tile, the rest are frames [a·td + 1, b·td + 1). This is the rule of
  the HunyuanVideo VAE's temporal tiling in the reference code.
- Blending: where tiles k and k+1 overlap on m positions [s, e), tile k+1 weighs (j + ½)/m at
  position s + j and tile k weighs 1 − (j + ½)/m (the reference uses j/m; the midpoint ramp is
  symmetric and gives no tile a zero weight). Weights in 3-D are products of the 1-D ones, so
  they also sum to 1. Overlap ≤ 0.5 guarantees that no position lies in more than two tiles.
- An axis no longer than one tile is one tile; an input that fits one tile on every axis goes
  straight through `ae.encode` / `ae.decode`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from osora.models.autoencoder import (
    Compression,
    VideoAutoencoder,
    latent_frames,
    latent_size,
    pixel_frames,
)
from osora.models.tile_spec import TileSpec

REFERENCE_TILES = TileSpec(spatial=256, temporal=32, overlap=0.25)  # Open-Sora v2 DC-AE
HUNYUAN_TILES = TileSpec(spatial=256, temporal=64, overlap=0.25)  # HunyuanVideo VAE


@dataclass(frozen=True)
class Span:
    """One tile along one axis: the input slice it reads and the output slice it writes.

    `drop` leading outputs of the tile are discarded (1 for the causal lone-first-frame of every
    temporal tile but the first, else 0), so the tile yields drop + (out_stop − out_start).
    """

    in_start: int
    in_stop: int
    out_start: int
    out_stop: int
    drop: int = 0


def latent_tile(tile: int | None, down: int, overlap: float, name: str) -> tuple[int, int] | None:
    """(tile, stride) in latents for a tile of `tile` pixels/frames; None when not tiling.

    Raises ValueError unless tile is a multiple of `down` and the overlap is a whole number of
    latents.
    """
    if tile is None:
        return None
    if tile % down:
        raise ValueError(
            f"TileSpec.{name}={tile} is not a multiple of the AE's compression {down}; use a "
            f"multiple such as {max(down, tile // down * down)}"
        )
    size = tile // down
    overlap_latents = size * overlap
    if abs(overlap_latents - round(overlap_latents)) > 1e-9:
        raise ValueError(
            f"TileSpec.{name}={tile} is {size} latents; overlap {overlap} of it is "
            f"{overlap_latents:g} latents, not a whole number: change the tile size or overlap"
        )
    stride = size - round(overlap_latents)
    return size, stride


def group_ranges(groups: int, size: int | None, stride: int) -> list[tuple[int, int]]:
    """Tiles [a, b) of `size` covering 0..groups at `stride`; the last one cut at the border."""
    if size is None or groups <= size:
        return [(0, groups)]
    count = 1 + math.ceil((groups - size) / stride)
    return [(k * stride, min(k * stride + size, groups)) for k in range(count)]


def plan_axis(latents: int, down: int, tile: int | None, overlap: float, *,
              causal: bool = False, decode: bool = False, name: str = "spatial") -> list[Span]:
    """The tiles along one axis with `latents` latent positions (rules in the module doc).

    For encoding, spans read pixels and write latents; for decoding (`decode=True`) the reverse.
    `causal` applies to the time axis of a causal AE only.
    """
    if latents < 1:
        raise ValueError(f"an axis needs at least 1 latent position, got {latents}")
    lt = latent_tile(tile, down, overlap, name)
    size, stride = lt if lt is not None else (None, 1)
    groups = latents - 1 if causal else latents
    spans = []
    for k, (a, b) in enumerate(group_ranges(groups, size, stride)):
        drop = int(causal and k > 0)
        if not causal and not decode:
            spans.append(Span(a * down, b * down, a, b))
        elif not causal:
            spans.append(Span(a, b, a * down, b * down))
        elif not decode:
            spans.append(Span(a * down, b * down + 1, a + drop, b + 1, drop))
        else:
            spans.append(Span(a, b + 1, a * down + drop, b * down + 1, drop))
    return spans


def linear_blend_weights(ranges: Sequence[tuple[int, int]], *,
                         dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """1-D weights of tiles covering [ranges[0][0], ranges[-1][1]): one tensor per tile.

    Each tile's weight is 1 outside its overlaps, rises linearly across the overlap with the
    previous tile and falls across the overlap with the next; at every position the weights of
    the tiles covering it sum to 1. Ranges must be sorted, leave no gap, and no position may lie
    in more than two of them (ValueError otherwise).
    """
    if not ranges:
        raise ValueError("linear_blend_weights needs at least one range")
    for k, (start, stop) in enumerate(ranges):
        if stop <= start:
            raise ValueError(f"range {k} {(start, stop)} is empty")
        if k == 0:
            continue
        prev_start, prev_stop = ranges[k - 1]
        if start <= prev_start or stop <= prev_stop:
            raise ValueError(f"ranges must move forward: {ranges[k - 1]} then {(start, stop)}")
        if start > prev_stop:
            raise ValueError(f"gap between ranges {ranges[k - 1]} and {(start, stop)}")
        if k >= 2 and start < ranges[k - 2][1]:
            raise ValueError(
                f"range {(start, stop)} overlaps {ranges[k - 2]}, two tiles back: a position "
                f"may lie in at most two tiles (overlap ≤ 0.5)"
            )
    weights = []
    for k, (start, stop) in enumerate(ranges):
        pos = torch.arange(start, stop, dtype=torch.float64) + 0.5  # (L,) position centres
        w = torch.ones_like(pos)
        if k > 0 and ranges[k - 1][1] > start:  # rise across [start, prev_stop)
            w = w * ((pos - start) / (ranges[k - 1][1] - start)).clamp(max=1.0)
        if k + 1 < len(ranges) and ranges[k + 1][0] < stop:  # fall across [next_start, stop)
            nxt = ranges[k + 1][0]
            w = w * (1.0 - ((pos - nxt) / (stop - nxt)).clamp(min=0.0))
        weights.append(w.to(dtype))
    return weights


def _run_tiles(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               spans: tuple[list[Span], list[Span], list[Span]], what: str) -> torch.Tensor:
    """Apply `fn` tile by tile and blend into one output; one tile alive at a time."""
    st, sh, sw = spans
    if len(st) == len(sh) == len(sw) == 1:
        return fn(x)  # fits one tile: straight through
    ramps = [linear_blend_weights([(s.out_start, s.out_stop) for s in axis], dtype=torch.float64)
             for axis in spans]
    out = None
    for it, t in enumerate(st):
        for ih, h in enumerate(sh):
            for iw, w in enumerate(sw):
                tile = x[:, :, t.in_start:t.in_stop, h.in_start:h.in_stop,
                         w.in_start:w.in_stop]  # (B, C, t, h, w)
                y = fn(tile)  # (B, C', t', h', w')
                want = (t.drop + t.out_stop - t.out_start, h.out_stop - h.out_start,
                        w.out_stop - w.out_start)
                if y.ndim != 5 or y.shape[0] != x.shape[0] or tuple(y.shape[2:]) != want:
                    raise ValueError(
                        f"{what} of a tile {tuple(tile.shape)} gave {tuple(y.shape)}; expected "
                        f"(B={x.shape[0]}, C, {want[0]}, {want[1]}, {want[2]}) from the AE's "
                        f"spatial_down/temporal_down/causal"
                    )
                y = y[:, :, t.drop:]  # (B, C', t'', h', w') lone leading frame dropped
                if out is None:
                    acc = torch.promote_types(y.dtype, torch.float32)
                    out = y.new_zeros((y.shape[0], y.shape[1], st[-1].out_stop, sh[-1].out_stop,
                                       sw[-1].out_stop), dtype=acc)  # (B, C', T', H', W')
                    ramps = [[r.to(device=y.device, dtype=acc) for r in axis] for axis in ramps]
                    out_dtype = y.dtype
                weight = (ramps[0][it][:, None, None] * ramps[1][ih][None, :, None]
                          * ramps[2][iw][None, None, :])  # (t'', h', w')
                out[:, :, t.out_start:t.out_stop, h.out_start:h.out_stop,
                    w.out_start:w.out_stop] += y.to(out.dtype) * weight
                del tile, y, weight
    return out.to(out_dtype)


def _check_5d(t: torch.Tensor, what: str) -> None:
    if t.ndim != 5:
        raise ValueError(f"{what} must be a 5-D tensor (B, C, T, H, W), got shape {tuple(t.shape)}")


def _plans(ae: Compression, tile: TileSpec, t_lat: int, h_lat: int, w_lat: int,
           decode: bool) -> tuple[list[Span], list[Span], list[Span]]:
    return (
        plan_axis(t_lat, ae.temporal_down, tile.temporal, tile.overlap, causal=ae.causal,
                  decode=decode, name="temporal"),
        plan_axis(h_lat, ae.spatial_down, tile.spatial, tile.overlap, decode=decode),
        plan_axis(w_lat, ae.spatial_down, tile.spatial, tile.overlap, decode=decode),
    )


def tiled_encode(ae: VideoAutoencoder, x: torch.Tensor,
                 tile: TileSpec = REFERENCE_TILES) -> torch.Tensor:
    """Encode pixels (B, C, T, H, W) → latents (B, C', T', H', W') tile by tile.

    T must fit the AE's time rule (causal 1 + k·td, else k·td) and H, W be multiples of sd.
    """
    _check_5d(x, "tiled_encode input")
    t_lat = latent_frames(x.shape[2], ae.temporal_down, ae.causal)
    h_lat = latent_size(x.shape[3], ae.spatial_down, "height")
    w_lat = latent_size(x.shape[4], ae.spatial_down, "width")
    return _run_tiles(ae.encode, x, _plans(ae, tile, t_lat, h_lat, w_lat, decode=False),
                      "encode")


def tiled_decode(ae: VideoAutoencoder, z: torch.Tensor,
                 tile: TileSpec = REFERENCE_TILES) -> torch.Tensor:
    """Decode latents (B, C', T', H', W') → pixels (B, C, T, H, W) tile by tile.

    T = 1 + (T' − 1)·td for a causal AE, else T'·td; H = H'·sd, W = W'·sd.
    """
    _check_5d(z, "tiled_decode input")
    t_lat, h_lat, w_lat = z.shape[2:]
    pixel_frames(t_lat, ae.temporal_down, ae.causal)  # validates T' ≥ 1
    return _run_tiles(ae.decode, z, _plans(ae, tile, t_lat, h_lat, w_lat, decode=True),
                      "decode")
