"""3D RoPE and joint attention (docs/recipe.md §3) against independent float64 references: explicit
per-pair rotations, relative positions, text positions, the two layouts, plain softmax attention."""

from __future__ import annotations

import math

import pytest
import torch

from osora.models.attention import Attention
from osora.models.rope import (
    apply_rope,
    grid_positions,
    permute_head_rows,
    rope_freqs,
    rope_permutation,
)

AXES = (4, 6, 6)  # head_dim 16
D = sum(AXES)
THETA = 10_000.0
F64 = torch.float64


def reference_rope(x: torch.Tensor, pos: torch.Tensor, layout: str) -> torch.Tensor:
    """x (B, H, N, D) rotated pair by pair with explicit cos/sin (math module), float64."""
    out = x.clone()
    for n in range(x.shape[2]):
        pair = 0
        for axis, d in enumerate(AXES):
            for j in range(d // 2):
                angle = float(pos[n, axis]) * THETA ** (-2 * j / d)
                c, s = math.cos(angle), math.sin(angle)
                i0, i1 = (
                    (2 * pair, 2 * pair + 1) if layout == "interleaved" else (pair, pair + D // 2)
                )
                a, b = x[:, :, n, i0], x[:, :, n, i1]
                out[:, :, n, i0] = a * c - b * s
                out[:, :, n, i1] = a * s + b * c
                pair += 1
    return out


def random_positions(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 20, (n, 3), generator=gen).to(F64)


@pytest.mark.parametrize("layout", ["interleaved", "rotate_half"])
def test_rope_matches_explicit_pairwise_rotation(layout):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 2, 2, 5, D, generator=gen, dtype=F64)
    pos = random_positions(5, gen)
    freqs = rope_freqs(pos, AXES, THETA, dtype=F64)  # (N, D/2, 2)
    assert freqs.shape == (5, D // 2, 2)
    rq, rk = apply_rope(q, k, freqs, layout)
    torch.testing.assert_close(rq, reference_rope(q, pos, layout), rtol=0, atol=1e-12)
    torch.testing.assert_close(rk, reference_rope(k, pos, layout), rtol=0, atol=1e-12)
    # Default float32 freqs on float32 inputs: the same to float32 precision.
    rq32, _ = apply_rope(q.float(), k.float(), rope_freqs(pos.float(), AXES, THETA), layout)
    assert rq32.dtype == torch.float32
    torch.testing.assert_close(rq32.double(), rq, rtol=0, atol=1e-5)


def test_per_batch_freqs_broadcast_over_heads():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 2, 3, 4, D, generator=gen, dtype=F64)
    pos = torch.stack([random_positions(4, gen), random_positions(4, gen)])  # (B, N, 3)
    freqs = rope_freqs(pos, AXES, THETA, dtype=F64)  # (B, N, D/2, 2)
    rq, _ = apply_rope(q, k, freqs)
    for b in range(2):
        torch.testing.assert_close(
            rq[b : b + 1], reference_rope(q[b : b + 1], pos[b], "interleaved")
        )


@pytest.mark.parametrize("layout", ["interleaved", "rotate_half"])
def test_scores_depend_only_on_position_differences(layout):
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 1, 2, 6, D, generator=gen, dtype=F64)
    pos = random_positions(6, gen)
    shift = torch.tensor([3.0, -7.0, 11.0], dtype=F64)  # the same 3D offset for every token

    def scores(p):
        rq, rk = apply_rope(q, k, rope_freqs(p, AXES, THETA, dtype=F64), layout)
        return rq @ rk.transpose(-1, -2)  # (B, H, N, N)

    torch.testing.assert_close(scores(pos + shift), scores(pos), rtol=0, atol=1e-10)
    # ...and they do depend on the differences.
    moved = pos.clone()
    moved[0] += shift
    assert not torch.allclose(scores(moved), scores(pos), atol=1e-3)


def test_text_positions_zero_mean_no_rotation():
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 2, 2, 4, D, generator=gen)
    freqs = rope_freqs(torch.zeros(4, 3), AXES, THETA)
    torch.testing.assert_close(freqs[..., 0], torch.ones(4, D // 2))
    torch.testing.assert_close(freqs[..., 1], torch.zeros(4, D // 2))
    for layout in ("interleaved", "rotate_half"):
        rq, rk = apply_rope(q, k, freqs, layout)
        torch.testing.assert_close(rq, q, rtol=0, atol=0)
        torch.testing.assert_close(rk, k, rtol=0, atol=0)


def test_permutation_is_the_references_rearrangement():
    # Open-Sora v2 `rearrange_tensor`: interleaved channel 2d → d, 2d+1 → D/2 + d.
    perm = rope_permutation(8, "interleaved", "rotate_half")
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    back = rope_permutation(8, "rotate_half", "interleaved")
    assert back.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    x = torch.arange(8.0)
    assert torch.equal(x[perm][back], x)
    assert rope_permutation(8, "rotate_half", "rotate_half").tolist() == list(range(8))


def test_layouts_are_equal_after_permuting_channels():
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 2, 3, 7, D, generator=gen, dtype=F64)
    freqs = rope_freqs(random_positions(7, gen), AXES, THETA, dtype=F64)
    perm = rope_permutation(D, "interleaved", "rotate_half")
    iq, ik = apply_rope(q, k, freqs, "interleaved")
    hq, hk = apply_rope(q[..., perm], k[..., perm], freqs, "rotate_half")
    torch.testing.assert_close(hq, iq[..., perm], rtol=0, atol=1e-12)
    torch.testing.assert_close(hk, ik[..., perm], rtol=0, atol=1e-12)
    # Attention is the same function: channel order inside q·k does not matter.
    v = torch.randn(2, 3, 7, D, generator=gen, dtype=F64)
    a = Attention("interleaved")(q, k, v, freqs)
    b = Attention("rotate_half")(q[..., perm], k[..., perm], v, freqs)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # ...while running one layout's channels through the other does not give it.
    assert not torch.allclose(Attention("rotate_half")(q, k, v, freqs), a, atol=1e-4)


def test_permute_head_rows_permutes_a_projection_per_head():
    gen = torch.Generator().manual_seed(5)
    heads = 3
    lin = torch.nn.Linear(10, heads * D, dtype=F64)
    x = torch.randn(4, 10, generator=gen, dtype=F64)
    perm = rope_permutation(D, "interleaved", "rotate_half")
    w = permute_head_rows(lin.weight.detach(), perm, heads)
    b = permute_head_rows(lin.bias.detach(), perm, heads)
    expected = lin(x).detach().unflatten(-1, (heads, D))[..., perm].flatten(-2)
    torch.testing.assert_close(x @ w.T + b, expected)
    with pytest.raises(ValueError, match="heads·head_dim"):
        permute_head_rows(lin.weight, perm, 2)


@pytest.mark.parametrize("layout", ["interleaved", "rotate_half"])
def test_attention_matches_plain_softmax_with_key_mask(layout):
    gen = torch.Generator().manual_seed(6)
    b, h, n = 2, 3, 9
    q, k, v = torch.randn(3, b, h, n, D, generator=gen, dtype=F64)
    pos = random_positions(n, gen)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 1:3] = False
    mask[1, 0] = False
    out = Attention(layout)(q, k, v, rope_freqs(pos, AXES, THETA, dtype=F64), mask)
    assert out.shape == (b, n, h * D)
    # Independent: explicit rotation, then softmax(QKᵀ/√D) with -inf on masked keys.
    rq, rk = reference_rope(q, pos, layout), reference_rope(k, pos, layout)
    logits = rq @ rk.transpose(-1, -2) / math.sqrt(D)  # (B, H, N, N)
    logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    ref = torch.softmax(logits, dim=-1) @ v  # (B, H, N, D)
    ref = ref.permute(0, 2, 1, 3).reshape(b, n, h * D)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_grid_positions_follow_patchify_order():
    pos = grid_positions(2, 3, 4)
    assert pos.shape == (24, 3)
    for idx in (0, 5, 13, 23):
        assert pos[idx].tolist() == [idx // 12, (idx // 4) % 3, idx % 4]


def test_errors_are_clear():
    q = torch.zeros(1, 1, 4, D)
    with pytest.raises(ValueError, match="layout"):
        apply_rope(q, q, rope_freqs(torch.zeros(4, 3), AXES), "neox")
    with pytest.raises(ValueError, match="freqs must be"):
        apply_rope(q, q, rope_freqs(torch.zeros(5, 3), AXES))
    with pytest.raises(ValueError, match="positions must be"):
        rope_freqs(torch.zeros(4, 2), AXES)
    with pytest.raises(ValueError, match="even"):
        rope_freqs(torch.zeros(4, 3), (4, 5, 7))
    with pytest.raises(ValueError, match="bool key mask"):
        Attention()(q, q, q, rope_freqs(torch.zeros(4, 3), AXES), mask=torch.ones(1, 4))
