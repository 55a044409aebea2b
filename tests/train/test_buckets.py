"""Bucket maths against hand-computed cases and the reference's bucket sizes (docs/recipe.md §6)."""

from __future__ import annotations

import pytest

from osora.train.buckets import (
    Bucket,
    BucketSpec,
    bucket_size,
    check_frame_counts,
    fits_ae,
    nearest_ratio,
    parse_ratio,
)

PAPER_FRAMES = tuple(range(5, 130, 4))  # 4k+1 from 5 to 129 (docs/recipe.md Table 5)


@pytest.mark.parametrize(
    ("width", "height", "resolution", "multiple", "expected"),
    [
        # docs/recipe.md §6 reference sizes, HunyuanVideo VAE (8) × patch 2 = 16:
        (1920, 1080, 256, 16, (192, 336)),  # h = 256·√(9/16) = 192, w = 341.3 → 336
        (1080, 1080, 256, 16, (256, 256)),
        (1920, 1080, 768, 16, (576, 1024)),
        (1024, 1024, 768, 16, (768, 768)),
        (1080, 1920, 256, 16, (336, 192)),  # portrait: the transpose
        # the tiny profile: 320×180 synth clips, DC-AE 8× space, patch 1
        (320, 180, 64, 8, (48, 88)),  # h = 48, w = 85.3 → 88
        # Video DC-AE (32×) at 256 px: w = 341.3 → 352 (10.67 multiples → 11)
        (1920, 1080, 256, 32, (192, 352)),
        # 3:1 at 64 px, multiple 32: h = 36.9 → 32, w = 110.9 → 96
        (300, 100, 64, 32, (32, 96)),
        # never below one multiple: 8:1 at 16 px, multiple 16: h = 5.7 → 16
        (800, 100, 16, 16, (16, 48)),
    ],
)
def test_bucket_size_keeps_aspect_at_the_area_and_snaps_to_the_multiple(
        width, height, resolution, multiple, expected):
    assert bucket_size(width, height, resolution, multiple) == expected


def test_non_causal_frames_are_the_largest_multiple_of_td_allowed():
    spec = BucketSpec(64, 8, (16, 32, 48, 64, 96), temporal_down=4, causal=False)
    assert [spec.frames_for(n) for n in (15, 16, 47, 48, 72, 96, 200)] == \
        [None, 16, 32, 48, 64, 96, 96]
    assert spec.assign(320, 180, 72) == Bucket(64, 48, 88)
    assert spec.assign(320, 180, 15) is None  # shorter than the smallest bucket


def test_causal_frames_are_4k_plus_1_up_to_129():
    spec = BucketSpec(256, 16, PAPER_FRAMES, temporal_down=4, causal=True)
    assert [spec.frames_for(n) for n in (4, 5, 8, 100, 129, 240)] == [None, 5, 5, 97, 129, 129]
    assert spec.assign(1920, 1080, 240) == Bucket(129, 192, 336)
    assert Bucket(129, 192, 336).name == "129x192x336"


@pytest.mark.parametrize("causal", [False, True])
def test_the_one_frame_bucket_is_for_images_only(causal):
    counts = (1, 16, 32) if not causal else (1, 17, 33)
    spec = BucketSpec(64, 8, counts, temporal_down=4, causal=causal)
    assert spec.frames_for(1) == 1  # an image
    assert spec.frames_for(10) is None  # a short video is not trained as its first frame
    assert spec.frames_for(40) == counts[2]
    assert spec.assign(320, 240, 1) == Bucket(1, 56, 72)
    without = BucketSpec(64, 8, counts[1:], temporal_down=4, causal=causal)
    assert without.frames_for(1) is None and without.assign(320, 240, 1) is None


def test_frame_counts_come_back_sorted():
    assert check_frame_counts([32, 16], 4, causal=False) == (16, 32)


@pytest.mark.parametrize(
    ("frames", "td", "causal"),
    [(1, 4, True), (5, 4, True), (129, 4, True), (4, 4, False), (32, 4, False), (8, 8, False),
     (1, 4, False)],  # 1: an image, for either AE
)
def test_counts_the_ae_takes(frames, td, causal):
    assert fits_ae(frames, td, causal)


@pytest.mark.parametrize(
    ("frames", "td", "causal"),
    [(4, 4, True), (8, 4, True), (0, 4, True), (5, 4, False), (2, 4, False), (0, 4, False)],
)
def test_counts_the_ae_refuses(frames, td, causal):
    assert not fits_ae(frames, td, causal)


def test_an_invalid_frame_list_names_each_bad_count_and_the_nearest_good_ones():
    with pytest.raises(ValueError) as err:
        check_frame_counts([9, 16, 33, 32], 4, causal=True)
    message = str(err.value)
    assert "[16, 32]" in message and "causal" in message and "1 + k·4" in message
    assert "16 → 13 or 17" in message and "32 → 29 or 33" in message
    with pytest.raises(ValueError, match=r"\[5, 33\].*non-causal.*k·4.*5 → 4 or 8.*33 → 32 or 36"):
        BucketSpec(64, 8, (5, 16, 33), temporal_down=4, causal=False)
    with pytest.raises(ValueError, match="2 → 4"):
        check_frame_counts([2], 4, causal=False)


def test_repeated_or_missing_frame_counts_are_errors():
    with pytest.raises(ValueError, match=r"repeated: \[16\]"):
        check_frame_counts([16, 32, 16], 4, causal=False)
    with pytest.raises(ValueError, match="at least one"):
        check_frame_counts([], 4, causal=False)


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="multiple"):
        bucket_size(320, 180, 64, 0)
    with pytest.raises(ValueError, match="width"):
        bucket_size(0, 180, 64, 8)


REFERENCE_RATIOS = ("2.39:1", "2:1", "16:9", "1.85:1", "3:2", "4:3", "1:1", "5:8",
                    "1:2.39", "1:2", "9:16", "1:1.85", "2:3", "3:4", "8:5")


@pytest.mark.parametrize(
    ("width", "height", "resolution", "expected"),
    [
        # docs/recipe.md §6 with the HunyuanVideo VAE × patch 2 (×16): clips near 16:9 or 1:1
        # land on the reference's bucket sizes, whatever their exact shape
        (1920, 1080, 256, (192, 336)),
        (1280, 720, 256, (192, 336)),
        # 1.82 is nearer 1.85:1 than 16:9 (ln-distance 0.017 vs 0.022): w = 348.2 → 352
        (1280, 704, 256, (192, 352)),
        (1000, 1000, 768, (768, 768)),
        (1024, 1000, 768, (768, 768)),  # 1.02 → 1:1
        (1920, 1080, 768, (576, 1024)),
        (1080, 1920, 768, (1024, 576)),  # 9:16, the transpose
        (2390, 1000, 256, (160, 400)),  # 2.39:1: h = 165.6 → 160, w = 395.8 → 400
    ],
)
def test_clips_snap_to_the_reference_aspect_ratios(width, height, resolution, expected):
    spec = BucketSpec(resolution, 16, PAPER_FRAMES, temporal_down=4, causal=True,
                      aspect_ratios=tuple(parse_ratio(r) for r in REFERENCE_RATIOS))
    bucket = spec.assign(width, height, 129)
    assert (bucket.height, bucket.width) == expected


def test_nearest_ratio_is_symmetric_under_transpose():
    ratios = tuple(parse_ratio(r) for r in REFERENCE_RATIOS)
    for w, h in ((1280, 720), (700, 1000), (2000, 900)):
        assert nearest_ratio(w, h, ratios) == pytest.approx(1 / nearest_ratio(h, w, ratios))


def test_too_small_is_below_the_fraction_of_the_bucket_area():
    spec = BucketSpec(256, 16, PAPER_FRAMES, temporal_down=4, causal=True, min_area=0.8)
    bucket = spec.assign(320, 180, 129)  # 192×336 = 64,512 px; 0.8× = 51,609.6
    assert not spec.too_small(288, 180, bucket)  # 51,840 px
    assert spec.too_small(286, 180, bucket)  # 51,480 px


@pytest.mark.parametrize("text", ["16x9", "16:0", "a:b", "1:2:3"])
def test_bad_ratios_are_named(text):
    with pytest.raises(ValueError, match=f"aspect ratio '{text}'"):
        parse_ratio(text)
