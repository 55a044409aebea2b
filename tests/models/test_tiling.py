"""Tiled encode/decode equals untiled: exactly for local toys, within a bound for a conv toy.

Toy AEs (deterministic, defined here):
- PoolAE: encode = average-pool by (td, sd, sd) then a fixed 1×1×1 channel mix; decode = nearest
  upsample then a fixed channel mix. Every output depends only on its own compression block, so
  tiles aligned to blocks reproduce the untiled result exactly (≤ 1e-6). With causal=True the
  first frame is its own block (T = 1 + k·td), as in a causal video VAE.
- ConvAE: PoolAE plus a 3×3×3 zero-padded conv (before pooling / after upsampling): outputs on
  a tile's inner edge see zeros instead of neighbours, so tiling is exact only away from seams
  and blending is what keeps the seams small.
"""

from __future__ import annotations

import re
import weakref

import pytest
import torch
import torch.nn.functional as F

from osora.models.autoencoder import VideoAutoencoder
from osora.models.tiling import (
    HUNYUAN_TILES,
    REFERENCE_TILES,
    Span,
    TileSpec,
    group_ranges,
    linear_blend_weights,
    plan_axis,
    tiled_decode,
    tiled_encode,
)

SMALL = TileSpec(spatial=32, temporal=16, overlap=0.25)  # with sd 4, td 2: 8 latents


class PoolAE:
    def __init__(self, td: int = 2, sd: int = 4, channels: int = 5, causal: bool = False):
        self.temporal_down, self.spatial_down = td, sd  # what the AE declares
        self._td, self._sd = td, sd  # what it does
        self.latent_channels, self.causal, self.scaling_factor = channels, causal, 1.0
        gen = torch.Generator().manual_seed(0)
        self.w_enc = torch.randn(channels, 3, generator=gen, dtype=torch.float64)
        self.w_dec = torch.randn(3, channels, generator=gen, dtype=torch.float64)
        self.calls: list[tuple[int, ...]] = []  # input shapes, one per encode/decode call
        self.outputs: list[weakref.ref] = []  # outputs given out since `track()`

    def track(self) -> PoolAE:
        """Start a tiled run: forget earlier calls and outputs."""
        self.calls.clear()
        self.outputs.clear()
        return self

    def _record(self, t: torch.Tensor) -> None:
        # Memory bound: every earlier tile's output is gone when the next tile runs.
        assert all(ref() is None for ref in self.outputs), "an earlier tile output is alive"
        self.calls.append(tuple(t.shape))

    def _keep(self, y: torch.Tensor) -> torch.Tensor:
        self.outputs.append(weakref.ref(y))
        return y

    def plain_encode(self, x):  # untiled reference, outside the bookkeeping
        return self.track().encode(x)

    def plain_decode(self, z):
        return self.track().decode(z)

    def _pool(self, x):  # (B, 3, T, H, W) -> (B, 3, T', H', W')
        td, sd = self._td, self._sd
        pool = lambda v, k: F.avg_pool3d(v.float(), k).to(v.dtype)  # noqa: E731 (no bf16 on CPU)
        if not self.causal:
            return pool(x, (td, sd, sd))
        first = pool(x[:, :, :1], (1, sd, sd))  # (B, 3, 1, H', W') the lone first frame
        rest = pool(x[:, :, 1:], (td, sd, sd)) if x.shape[2] > 1 else first[:, :, :0]
        return torch.cat([first, rest], dim=2)

    def _upsample(self, z):  # (B, C, T', H', W') -> (B, C, T, H, W)
        td, sd = self._td, self._sd
        z = z.repeat_interleave(sd, 3).repeat_interleave(sd, 4)
        if not self.causal:
            return z.repeat_interleave(td, 2)
        return torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(td, 2)], dim=2)

    def _pre(self, x):
        return x

    def _post(self, x):
        return x

    def encode(self, x):
        self._record(x)
        z = self._pool(self._pre(x))  # (B, 3, T', H', W')
        return self._keep(torch.einsum("oc,bcthw->bothw", self.w_enc.to(x.dtype), z))

    def decode(self, z):
        self._record(z)
        x = torch.einsum("oc,bcthw->bothw", self.w_dec.to(z.dtype), self._upsample(z))
        return self._keep(self._post(x))

    def to_dit(self, z):
        return z

    def from_dit(self, z):
        return z


class ConvAE(PoolAE):
    def __init__(self, **kw):
        super().__init__(**kw)
        gen = torch.Generator().manual_seed(1)
        self.k_enc = torch.randn(3, 3, 3, 3, 3, generator=gen, dtype=torch.float64) / 9
        self.k_dec = torch.randn(3, 3, 3, 3, 3, generator=gen, dtype=torch.float64) / 9

    def _pre(self, x):
        return F.conv3d(x, self.k_enc, padding=1)

    def _post(self, x):
        return F.conv3d(x, self.k_dec, padding=1)


def _video(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64) * 2 - 1


def _max_err(a, b):
    return (a - b).abs().max().item()


# ---- blending weights ----------------------------------------------------------------------------


def _coverage(ranges, weights):
    total = torch.zeros(ranges[-1][1], dtype=torch.float64)
    for (start, stop), w in zip(ranges, weights):
        total[start:stop] += w
    return total


@pytest.mark.parametrize("ranges", [
    [(0, 10)],
    [(0, 8), (6, 14), (12, 20)],  # the plan of 20 latents, tile 8, overlap 0.25
    [(0, 8), (6, 11)],  # last tile cut short
    [(0, 9), (7, 15), (13, 21), (19, 27), (25, 33)],  # causal encode, 129 frames
    [(0, 33), (25, 57), (49, 81), (73, 105), (97, 129)],  # causal decode, 129 frames
    [(0, 8), (4, 12), (8, 13)],  # overlap 0.5: tile k+2 starts where tile k stops
    [(0, 5), (5, 9)],  # no overlap
])
def test_blend_weights_sum_to_one(ranges):
    weights = linear_blend_weights(ranges, dtype=torch.float64)
    assert [len(w) for w in weights] == [stop - start for start, stop in ranges]
    ones = torch.ones(ranges[-1][1], dtype=torch.float64)
    assert torch.allclose(_coverage(ranges, weights), ones, atol=1e-12)
    for w in weights:
        assert (w > 0).all() and (w <= 1).all()


def test_blend_weights_ramp_linearly_across_overlap():
    prev, nxt = linear_blend_weights([(0, 8), (4, 12)], dtype=torch.float64)
    rise = torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64)  # (j + ½) / 4
    assert torch.allclose(nxt[:4], rise) and torch.allclose(prev[4:], 1 - rise)
    assert (prev[:4] == 1).all() and (nxt[4:] == 1).all()


@pytest.mark.parametrize(("ranges", "msg"), [
    ([(0, 4), (5, 9)], "gap"),
    ([(0, 8), (3, 10), (7, 12)], "two tiles back"),
    ([(0, 8), (0, 9)], "move forward"),
    ([(0, 0)], "empty"),
    ([], "at least one"),
])
def test_blend_weights_reject_bad_ranges(ranges, msg):
    with pytest.raises(ValueError, match=msg):
        linear_blend_weights(ranges)


# ---- plans ---------------------------------------------------------------------------------------


def test_group_ranges():
    assert group_ranges(20, 8, 6) == [(0, 8), (6, 14), (12, 20)]
    assert group_ranges(8, 8, 6) == [(0, 8)]
    assert group_ranges(9, 8, 6) == [(0, 8), (6, 9)]
    assert group_ranges(100, None, 1) == [(0, 100)]


def test_causal_encode_plan_129_frames_reference_tiles():
    # 129 frames = 1 + 32·4; 32-frame tiles = 8 groups, stride 6. Each tile reads 33 = 1 + 8·4
    # frames starting on a group boundary; all but the first drop their lone-first-frame latent.
    spans = plan_axis(33, 4, 32, 0.25, causal=True, name="temporal")
    assert spans == [
        Span(0, 33, 0, 9, 0),
        Span(24, 57, 7, 15, 1),
        Span(48, 81, 13, 21, 1),
        Span(72, 105, 19, 27, 1),
        Span(96, 129, 25, 33, 1),
    ]
    assert all((s.in_stop - s.in_start - 1) % 4 == 0 for s in spans)
    # each tile gives 1 + (frames − 1)/4 latents = drop + written
    assert all(1 + (s.in_stop - s.in_start - 1) // 4 == s.drop + s.out_stop - s.out_start
               for s in spans)


def test_causal_decode_plan_mirrors_encode():
    spans = plan_axis(33, 4, 32, 0.25, causal=True, decode=True, name="temporal")
    assert spans == [
        Span(0, 9, 0, 33, 0),
        Span(6, 15, 25, 57, 1),
        Span(12, 21, 49, 81, 1),
        Span(18, 27, 73, 105, 1),
        Span(24, 33, 97, 129, 1),
    ]


def test_hunyuan_temporal_plan():
    # 64-frame tiles: 65 frames per tile, 16 groups, stride 12 latents = 48 frames.
    spans = plan_axis(33, 4, HUNYUAN_TILES.temporal, 0.25, causal=True)
    assert [(s.in_start, s.in_stop) for s in spans] == [(0, 65), (48, 113), (96, 129)]
    assert [(s.out_start, s.out_stop) for s in spans] == [(0, 17), (13, 29), (25, 33)]


def test_spatial_plan_odd_size():
    # 264 px at sd 8 = 33 latents; 256 px tiles = 32 latents, stride 24.
    spans = plan_axis(33, 8, 256, 0.25)
    assert spans == [Span(0, 256, 0, 32), Span(192, 264, 24, 33)]
    assert plan_axis(33, 8, 256, 0.25, decode=True) == [Span(0, 32, 0, 256),
                                                        Span(24, 33, 192, 264)]


@pytest.mark.parametrize(("tile", "msg"), [
    (TileSpec(spatial=30, temporal=16), "spatial=30 is not a multiple"),
    (TileSpec(spatial=24, temporal=16), "not a whole number"),  # 6 latents × 0.25
    (TileSpec(spatial=32, temporal=15), "temporal=15 is not a multiple"),
])
def test_tile_must_be_whole_latents(tile, msg):
    with pytest.raises(ValueError, match=msg):
        tiled_encode(PoolAE(), _video(1, 3, 40, 64, 64), tile)


@pytest.mark.parametrize("kw", [dict(overlap=0.6), dict(overlap=-0.1), dict(spatial=0),
                                dict(temporal=2.5)])
def test_tilespec_validation(kw):
    with pytest.raises(ValueError, match="TileSpec"):
        TileSpec(**kw)


def test_reference_tiles():
    assert REFERENCE_TILES == TileSpec(256, 32, 0.25) == TileSpec()
    assert HUNYUAN_TILES == TileSpec(256, 64, 0.25)


# ---- tiled == untiled ----------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_local_toy_exact_odd_sizes(causal):
    # 40 (or 41) frames, 44×76 px: latents 20 (21) × 11 × 19 — no axis a multiple of the tile.
    ae = PoolAE(causal=causal)
    x = _video(2, 3, 41 if causal else 40, 44, 76)  # (B, 3, T, H, W)
    z = ae.plain_encode(x)
    zt = tiled_encode(ae.track(), x, SMALL)
    assert zt.shape == z.shape and zt.dtype == z.dtype
    assert _max_err(zt, z) <= 1e-6
    assert len(ae.calls) == 3 * 2 * 3  # T × H × W tiles
    assert max(c[3] for c in ae.calls) <= 32 and max(c[4] for c in ae.calls) <= 32
    assert max(c[2] for c in ae.calls) == (17 if causal else 16)  # causal: 1 + 16 frames
    y = ae.plain_decode(z)
    yt = tiled_decode(ae.track(), z, SMALL)
    assert yt.shape == y.shape == x.shape
    assert _max_err(yt, y) <= 1e-6
    assert max(c[2] for c in ae.calls) == (9 if causal else 8)


def test_causal_toy_reference_sizes():
    # Real factors (4×8×8) with the reference and HunyuanVAE tiles: 129 frames, 264×48 px.
    ae = PoolAE(td=4, sd=8, causal=True)
    x = _video(1, 3, 129, 264, 48)
    z = ae.plain_encode(x)
    y = ae.plain_decode(z)
    for tile, t_tiles in ((REFERENCE_TILES, 5), (HUNYUAN_TILES, 3)):
        assert _max_err(tiled_encode(ae.track(), x, tile), z) <= 1e-6
        assert len(ae.calls) == t_tiles * 2
        frames = [c[2] for c in ae.calls]  # 1 + k·td frames each, full tiles but the last
        assert all((f - 1) % 4 == 0 for f in frames)
        assert max(frames) == tile.temporal + 1
        assert _max_err(tiled_decode(ae.track(), z, tile), y) <= 1e-6
        assert max(c[2] for c in ae.calls) == tile.temporal // 4 + 1


def test_causal_rule_matters():
    # Keeping the lone-first-frame latent of later tiles (i.e. no drop) would write the image-like
    # encoding of frame 24 over latent 6; the toy separates the two.
    ae = PoolAE(causal=True)
    x = _video(1, 3, 41, 8, 8)
    lone = ae.plain_encode(x[:, :, 24:25])[:, :, 0]  # frame 24 encoded alone
    assert _max_err(lone, ae.plain_encode(x)[:, :, 12]) > 1e-2  # ≠ its global latent
    assert _max_err(tiled_encode(ae.track(), x, SMALL), ae.plain_encode(x)) <= 1e-6


def test_single_tile_goes_straight_through():
    ae = PoolAE()
    x = _video(1, 3, 16, 32, 24)  # exactly one tile in T and H, less in W
    zt = tiled_encode(ae.track(), x, SMALL)
    assert ae.calls == [tuple(x.shape)]
    z = ae.plain_encode(x)
    assert torch.equal(zt, z)
    yt = tiled_decode(ae.track(), z, SMALL)
    assert ae.calls == [tuple(z.shape)]
    assert torch.equal(yt, ae.plain_decode(z))


@pytest.mark.parametrize("disable", [False, True])
def test_temporal_only(disable):
    ae = PoolAE(causal=True)
    x = _video(1, 3, 41, 64, 48)  # 16×12 latents: larger than a 32 px tile unless disabled
    tile = TileSpec(spatial=None, temporal=16) if disable else TileSpec(128, 16)
    z = ae.plain_encode(x)
    y = ae.plain_decode(z)
    assert _max_err(tiled_encode(ae.track(), x, tile), z) <= 1e-6
    assert [c[3:] for c in ae.calls] == [(64, 48)] * 3
    assert _max_err(tiled_decode(ae.track(), z, tile), y) <= 1e-6
    assert len(ae.calls) == 3


@pytest.mark.parametrize("disable", [False, True])
def test_spatial_only(disable):
    ae = PoolAE()
    x = _video(1, 3, 12, 44, 76)
    tile = TileSpec(spatial=32, temporal=None) if disable else SMALL
    z = ae.plain_encode(x)
    assert _max_err(tiled_encode(ae.track(), x, tile), z) <= 1e-6
    assert len(ae.calls) == 2 * 3 and {c[2] for c in ae.calls} == {12}


def test_dtype_preserved_and_protocol():
    ae = PoolAE()
    assert isinstance(ae, VideoAutoencoder)
    x = _video(1, 3, 32, 44, 40).to(torch.bfloat16)
    zt = tiled_encode(ae.track(), x, SMALL)
    assert zt.dtype == torch.bfloat16
    assert _max_err(zt.double(), ae.plain_encode(x).double()) <= 2e-2  # bf16 rounding only


# Receptive-field toy. Tolerance: only the outermost output of a tile next to a seam is wrong
# (the 3×3×3 conv's radius is 1 px/frame, inside one compression block); linear blending gives
# that output the weight ½ / m for an overlap of m outputs (m = 2 latents here for encode,
# 4 frames / 8 px for decode), so the blended max error should be ≲ ½/m of the hard-seam error
# (overlap 0); corners where two seams meet add a little. Measured (overlap 0 → 0.25 → 0.5):
# encode 0.540 → 0.125 → 0.071 (latents up to 1.05), decode 1.041 → 0.133 → 0.066 (pixels up
# to 1.82), i.e. 0.23× and 0.13× the hard-seam error at 0.25; asserted: ≤ 0.3× and ≤ 0.17×.
def test_conv_toy_blending_bounds_seams():
    ae = ConvAE()
    x = _video(1, 3, 48, 72, 88)
    z, y = ae.plain_encode(x), ae.plain_decode(ae.plain_encode(x))
    overlaps = (0.0, 0.25, 0.5)
    enc = {ov: _max_err(tiled_encode(ae.track(), x, TileSpec(32, 16, ov)), z) for ov in overlaps}
    dec = {ov: _max_err(tiled_decode(ae.track(), z, TileSpec(32, 16, ov)), y) for ov in overlaps}
    assert enc[0.0] > 0.1 and dec[0.0] > 0.1  # hard seams are visible
    assert enc[0.25] <= 0.3 * enc[0.0] and dec[0.25] <= 0.17 * dec[0.0]
    assert enc[0.5] < enc[0.25] and dec[0.5] < dec[0.25]  # wider overlap, smaller seams


@pytest.mark.parametrize("decode", [False, True])
def test_conv_toy_exact_away_from_overlaps(decode):
    ae = ConvAE(causal=True)
    x = _video(1, 3, 41, 72, 88)
    z = ae.plain_encode(x)
    if decode:
        ref, tiled = ae.plain_decode(z), tiled_decode(ae.track(), z, SMALL)
    else:
        ref, tiled = z, tiled_encode(ae.track(), x, SMALL)
    err = (tiled - ref).abs().amax(dim=(0, 1))  # (T, H, W) of the output
    single = []
    for n, is_time in zip(z.shape[2:], (True, False, False)):
        spans = plan_axis(n, 2 if is_time else 4, 16 if is_time else 32, 0.25,
                          causal=is_time, decode=decode)
        count = torch.zeros(spans[-1].out_stop)
        for s in spans:
            count[s.out_start:s.out_stop] += 1
        single.append(count == 1)
    only_one = single[0][:, None, None] & single[1][None, :, None] & single[2][None, None, :]
    assert only_one.shape == err.shape and only_one.any() and (~only_one).any()
    assert err[only_one].max().item() <= 1e-6  # exact where a single tile writes
    assert err[~only_one].max().item() > 1e-4  # the seams are where the error lives


# ---- errors --------------------------------------------------------------------------------------


def test_input_errors():
    ae = PoolAE(causal=True)
    with pytest.raises(ValueError, match=re.escape("needs 1 + k·2 frames")):
        tiled_encode(ae.track(), _video(1, 3, 40, 64, 64), SMALL)
    with pytest.raises(ValueError, match="height 66 px"):
        tiled_encode(ae.track(), _video(1, 3, 41, 66, 64), SMALL)
    with pytest.raises(ValueError, match="5-D"):
        tiled_encode(ae.track(), _video(3, 41, 64, 64), SMALL)
    with pytest.raises(ValueError, match="5-D"):
        tiled_decode(ae.track(), _video(5, 21, 16, 16), SMALL)


def test_wrong_ae_geometry_is_named():
    ae = PoolAE()
    ae.spatial_down = 2  # claims 2× but pools 4×
    with pytest.raises(ValueError, match="encode of a tile"):
        tiled_encode(ae.track(), _video(1, 3, 16, 96, 16), SMALL)
