"""The Euler sampler: exact on a known flow, one batched call = three separate calls, the
guidance schedules at the right steps, conditioned frames, determinism."""

from __future__ import annotations

import pytest
import torch
from diffusion_standin import Oracle, Recorder, TinyVelocity

from osora.diffusion.conditioning import build_cond, condition_mask, zero_cond
from osora.diffusion.sampler import make_noise, sample, sampling_timesteps

B, C, T, H, W = 2, 3, 4, 4, 4
L, D_TXT, D_VEC = 5, 8, 6
F64 = torch.float64


def inputs(seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return dict(
        noise=torch.randn(B, C, T, H, W, generator=g, dtype=dtype),
        text=torch.randn(B, L, D_TXT, generator=g, dtype=dtype),
        pooled=torch.randn(B, D_VEC, generator=g, dtype=dtype),
        neg_text=torch.randn(L, D_TXT, generator=g, dtype=dtype),
        neg_pooled=torch.randn(D_VEC, generator=g, dtype=dtype),
    )


def i2v_cond(seed=1, kind="i2v_head", dtype=F64):
    latent = torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(seed),
                         dtype=dtype)
    return build_cond(latent, condition_mask(kind, T))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return TinyVelocity(channels=C, d_txt=D_TXT, d_vec=D_VEC).double().eval()


def test_sampling_timesteps():
    assert sampling_timesteps(4, 1.0).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    # α = 3: 3t/(1 + 2t) at 0.75, 0.5, 0.25 → 0.9, 0.75, 0.5
    assert sampling_timesteps(4, 3.0).tolist() == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.0])
    with pytest.raises(ValueError):
        sampling_timesteps(0, 3.0)


def test_make_noise_per_sample_seeds():
    both = make_noise((C, T, H, W), [11, 12])
    assert both.shape == (2, C, T, H, W) and both.dtype == torch.float32
    assert torch.equal(both[1:], make_noise((C, T, H, W), 12))  # batch-independent
    assert torch.equal(make_noise((C, T, H, W), [11, 12]), both)
    assert not torch.equal(both[0], both[1])
    with pytest.raises(ValueError):
        make_noise((C, T, H), 1)


def test_exact_flow_stays_on_the_straight_path():
    """All passes agree on x0: the guided velocity is the exact one, (x − x0)/t, and every
    Euler step lands on the straight path x0 + (noise − x0)·t_next, ending on x0."""
    x = inputs()
    x0 = torch.randn(B, C, T, H, W, dtype=F64)
    oracle = Oracle(x["pooled"], {k: x0 for k in [(True, True), (True, False), (False, True),
                                                  (False, False)]})
    rec = Recorder(oracle)
    out = sample(rec, **x, cond=i2v_cond(), steps=12, shift=3.0, replace_conditioned=False)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)
    ts = sampling_timesteps(12, 3.0)
    for i, call in enumerate(rec.calls):
        assert call["batch"] == 3 * B
        assert torch.allclose(call["t"], torch.full((3 * B,), float(ts[i]), dtype=F64))
    # the intermediate states: rerun and check x before each call
    seen = []
    sample(lambda xi, t, *a, **k: (seen.append(xi[:B].clone()), oracle(xi, t, *a, **k))[1],
           **x, cond=i2v_cond(), steps=12, shift=3.0)
    for i, xi in enumerate(seen):
        torch.testing.assert_close(xi, x0 + (x["noise"] - x0) * ts[i], rtol=0, atol=1e-12)


def test_guided_targets_combine_as_decoupled_guidance():
    """Oracle passes with different targets: the last Euler step (t → 0) lands on the target
    the guided velocity points at, b + s_img·(c − b) + s_txt·(a − c), with that step's scales."""
    x = inputs()
    g = torch.Generator().manual_seed(5)
    a, c, b, d = (torch.randn(B, C, T, H, W, generator=g, dtype=F64) for _ in range(4))
    oracle = Oracle(x["pooled"], {(True, True): a, (False, True): c, (False, False): b,
                                  (True, False): d})
    steps = 6
    out = sample(oracle, **x, cond=i2v_cond(), steps=steps, g_img=3.0, g_txt=7.5,
                 oscillation=False, shift=2.0, replace_conditioned=False)
    upper = 3.0 - 2.0 * (steps - 1) / steps  # the last step's dynamic upper bound
    s_img = torch.tensor([1 + (upper - 1) * k / (T - 1) for k in range(T)], dtype=F64)
    expected = b + s_img.view(1, 1, T, 1, 1) * (c - b) + 7.5 * (a - c)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    # with oscillation the last step (11, odd) uses 1 for both: the prompt's target exactly
    out = sample(oracle, **x, cond=i2v_cond(), steps=12, shift=2.0, replace_conditioned=False)
    torch.testing.assert_close(out, a, rtol=0, atol=1e-10)
    # t2v (no condition): classic CFG b + g_txt·(d − b), two passes
    rec = Recorder(oracle)
    out = sample(rec, **x, steps=steps, oscillation=False, shift=2.0)
    torch.testing.assert_close(out, b + 7.5 * (d - b), rtol=0, atol=1e-10)
    assert {call["batch"] for call in rec.calls} == {2 * B}
    assert all(call["cond_none"] for call in rec.calls)


def reference_loop(model, noise, text, pooled, neg_text, neg_pooled, cond, steps, alpha,
                   g_img=3.0, g_txt=7.5):
    """Three separate model calls per step, scales written out as in the reference."""
    ts = torch.linspace(1, 0, steps + 1, dtype=F64)
    ts = alpha * ts / (1 + (alpha - 1) * ts)
    neg_text, neg_pooled = neg_text.expand(B, L, D_TXT), neg_pooled.expand(B, D_VEC)
    x = noise.clone()
    for i in range(steps):
        t = torch.full((B,), float(ts[i]), dtype=F64)
        v_full = model(x, t, text, pooled, cond=cond)
        v_img = model(x, t, neg_text, neg_pooled, cond=cond)
        v_null = model(x, t, neg_text, neg_pooled, cond=torch.zeros_like(cond))
        osc = i < 10 or i % 2 == 0
        s_txt, s_img = (g_txt, g_img) if osc else (1.0, 1.0)
        if s_img > 1.0:
            upper = s_img - (s_img - 1) * i / steps
            s_img = torch.tensor([1 + (upper - 1) * k / (T - 1) for k in range(T)],
                                 dtype=F64).view(1, 1, T, 1, 1)
        v = v_null + s_img * (v_img - v_null) + s_txt * (v_full - v_img)
        x = x + float(ts[i + 1] - ts[i]) * v
    return x


@pytest.mark.parametrize("kind", ["i2v_head", "t2v"])
def test_one_batched_call_equals_three_separate_calls(kind):
    x = inputs()
    cond = i2v_cond() if kind != "t2v" else zero_cond((B, C, T, H, W), dtype=F64)
    model = tiny_model()
    rec = Recorder(model)
    with torch.no_grad():
        expected = reference_loop(model, **x, cond=cond, steps=14, alpha=2.5)
    out = sample(rec, **x, cond=cond, steps=14, shift=2.5, replace_conditioned=False)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert len(rec.calls) == 14  # one model call per step
    assert {call["batch"] for call in rec.calls} == {(3 if kind != "t2v" else 2) * B}


def test_schedules_applied_at_the_right_steps():
    x = inputs()
    infos = []
    zero_velocity = Recorder(lambda xi, *a, **k: torch.zeros_like(xi))  # schedules only
    sample(zero_velocity, **x, cond=i2v_cond(), steps=50, g_img=3.0, g_txt=7.5, patch_size=2,
           progress=infos.append)
    assert len(zero_velocity.calls) == 50
    assert [info.step for info in infos] == list(range(50))
    text_scales = "".join("S" if info.text_scale == 7.5 else "1" for info in infos)
    assert text_scales == "S" * 10 + "S1" * 20  # oscillation after the first 10 steps
    assert infos[0].image_scale.tolist() == pytest.approx([1.0, 5 / 3, 7 / 3, 3.0])
    # step 20: upper = 3 − 2·20/50 = 2.2 → 1, 1.4, 1.8, 2.2
    assert infos[20].image_scale.tolist() == pytest.approx([1.0, 1.4, 1.8, 2.2])
    assert infos[21].image_scale.tolist() == [1.0] * 4  # oscillated off: no ramp
    assert all(info.passes == 3 for info in infos)
    assert infos[0].t == 1.0 and infos[-1].t_next == 0.0
    assert infos[0].shift == pytest.approx((4 / 1920 + 13 / 15) * 2)  # L = 2·2, √T = 2


def test_conditioned_frames_are_replaced_after_the_loop():
    x = inputs()
    cond = i2v_cond(kind="i2v_loop")
    out = sample(tiny_model(), **x, cond=cond, steps=3, shift=2.0)
    assert torch.equal(out[:, :, 0], cond[:, 1:, 0]) and torch.equal(out[:, :, -1], cond[:, 1:, -1])
    kept = sample(tiny_model(), **x, cond=cond, steps=3, shift=2.0, replace_conditioned=False)
    assert torch.equal(out[:, :, 1:-1], kept[:, :, 1:-1])
    assert not torch.equal(kept[:, :, 0], cond[:, 1:, 0])


def test_deterministic_for_a_seed_and_float32():
    x = inputs(dtype=torch.float32)
    model = tiny_model().float()
    kw = dict(text=x["text"], pooled=x["pooled"], neg_text=x["neg_text"],
              neg_pooled=x["neg_pooled"], steps=4, patch_size=2,
              cond=i2v_cond(dtype=torch.float32))
    one = sample(model, make_noise((C, T, H, W), [1, 2]), **kw)
    two = sample(model, make_noise((C, T, H, W), [1, 2]), **kw)
    other = sample(model, make_noise((C, T, H, W), [3, 4]), **kw)
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert one.dtype == torch.float32 and torch.isfinite(one).all()


def test_text_masks_reach_the_model():
    x = inputs()
    rec = Recorder(tiny_model())
    sample(rec, **x, text_mask=torch.ones(B, L, dtype=torch.bool), steps=1, shift=1.0)
    assert not rec.calls[0]["mask_none"]
    rec = Recorder(tiny_model())
    sample(rec, **x, steps=1, shift=1.0)
    assert rec.calls[0]["mask_none"]


def test_sample_errors():
    x = inputs()
    model = tiny_model()
    with pytest.raises(ValueError, match="patch_size"):
        sample(model, **x, steps=1)
    bad = dict(x, neg_text=torch.zeros(L + 1, D_TXT, dtype=F64))
    with pytest.raises(ValueError, match="max_length"):
        sample(model, **bad, steps=1, shift=1.0)
    with pytest.raises(ValueError, match="cond must be"):
        sample(model, **x, cond=torch.zeros(B, C, T, H, W, dtype=F64), steps=1, shift=1.0)
    with pytest.raises(ValueError, match="model returned"):
        sample(lambda xi, *a, **k: xi[:1], **x, steps=1, shift=1.0)


def test_text_scale_one_without_condition_runs_one_pass_of_the_prompt():
    """g_txt = 1, no condition (a guidance-distilled model such as FLUX-dev): plain Euler on
    v(txt), one model call of batch B per step, the negative prompt never evaluated."""
    x = inputs()
    model = tiny_model()
    rec = Recorder(model)
    out = sample(rec, **x, steps=5, shift=2.0, g_txt=1.0, oscillation=False)
    assert [call["batch"] for call in rec.calls] == [B] * 5
    ref = x["noise"].clone()
    ts = sampling_timesteps(5, 2.0)
    with torch.no_grad():
        for i in range(5):
            v = model(ref, torch.full((B,), float(ts[i]), dtype=F64), x["text"], x["pooled"])
            ref = ref + (ts[i + 1] - ts[i]) * v
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
