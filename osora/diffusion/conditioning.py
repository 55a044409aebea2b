"""Image/video conditioning and the dropouts of training (docs/recipe.md §5).

A condition marks latent frames whose content is given: the condition tensor is
[mask (1 ch), mask·latent (C ch)] — (B, C+1, T, H, W) — which the model takes beside the noisy
latent. The condition latent is encoded separately from the target video (so a causal AE's
first frame carries no information about later ones) and copied into the marked frames.

Kinds (latent frames marked):
- t2v: none (the condition is all zeros);
- i2v_head: the first; i2v_tail: the last; i2v_loop: the first and the last;
- v2v_head / v2v_tail: the first / last K. The reference uses K = 9 for a causal 4× AE (33 video
  frames: 1 + 32/4) and K = 17 for its "easy" variants (65 frames).

Reference training draws one kind per sample with weights t2v 1, i2v_head 5, i2v_loop 1,
i2v_tail 1 (`configs/diffusion/train/stage1_i2v.py`); those live in params. Note that t2v drawn
with weight 1 of 8 already is the paper's 12.5% image-condition dropout: the reference has no
separate condition dropout (`prepare_visual_condition_*` in `opensora/utils/train.py`). Use
either the t2v weight or `drop_condition`, not both, unless a higher rate is meant.

Text dropout (reference `dropout_condition`, `configs/diffusion/train/image.py`): per sample, the
T5 sequence and the CLIP vector are each replaced by the empty prompt's embedding with
p = √0.1 ≈ 0.316, independently — so both are dropped together with p = 0.1 (the unconditional
case guidance needs) and each alone with p ≈ 0.216.
"""

from __future__ import annotations

import torch

CONDITION_KINDS = ("t2v", "i2v_head", "i2v_tail", "i2v_loop", "v2v_head", "v2v_tail")


def condition_mask(kind: str, num_latent_frames: int, *, v2v_frames: int | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Which latent frames `kind` conditions on: (T,) bool, True = given.

    v2v_frames: K, the latent frames a v2v kind gives (required for v2v_*). A condition must
    leave at least one frame to generate, so e.g. i2v kinds need T ≥ 2 (i2v_loop T ≥ 3) and
    v2v kinds K < T.
    """
    if kind not in CONDITION_KINDS:
        raise ValueError(f"unknown condition kind {kind!r}; expected one of {CONDITION_KINDS}")
    t = num_latent_frames
    if int(t) != t or t < 1:
        raise ValueError(f"num_latent_frames must be a positive integer, got {t!r}")
    mask = torch.zeros(t, dtype=torch.bool, device=device)  # (T,)
    if kind in ("i2v_head", "i2v_loop"):
        mask[0] = True
    if kind in ("i2v_tail", "i2v_loop"):
        mask[-1] = True
    if kind.startswith("v2v"):
        if v2v_frames is None or int(v2v_frames) != v2v_frames or v2v_frames < 1:
            raise ValueError(f"{kind} needs v2v_frames, a positive number of latent frames "
                             f"(reference: 9 for 33 video frames), got {v2v_frames!r}")
        if kind == "v2v_head":
            mask[:v2v_frames] = True
        else:
            mask[t - v2v_frames:] = True
    if kind != "t2v" and bool(mask.all()):
        raise ValueError(f"{kind} with {t} latent frames"
                         + (f" and v2v_frames={v2v_frames}" if kind.startswith("v2v") else "")
                         + " conditions every frame and leaves nothing to generate: "
                         "use t2v for images and clips this short")
    return mask


def applicable_kinds(kinds, num_latent_frames: int, *, v2v_frames: int | None = None) -> list[str]:
    """The kinds among `kinds` that leave a frame to generate at T = num_latent_frames (images:
    only t2v; v2v only when K < T and v2v_frames is given), in their given order."""
    kinds = list(kinds)
    for kind in kinds:
        if kind not in CONDITION_KINDS:
            raise ValueError(f"unknown condition kind {kind!r}; expected one of {CONDITION_KINDS}")
    out = []
    for kind in kinds:
        if kind.startswith("v2v") and v2v_frames is None:
            continue
        try:
            condition_mask(kind, num_latent_frames, v2v_frames=v2v_frames)
        except ValueError:
            continue
        out.append(kind)
    return out


def sample_condition_kind(weights: dict[str, float], generator: torch.Generator, *,
                          num_latent_frames: int | None = None,
                          v2v_frames: int | None = None) -> str:
    """Draw one condition kind with probability ∝ weights[kind] (one draw from `generator`).

    With num_latent_frames, kinds that do not fit the clip (see `applicable_kinds`) are left out
    first and the rest renormalised, as the reference does for short clips.
    """
    if not weights:
        raise ValueError("weights is empty: give at least one condition kind, e.g. {'t2v': 1}")
    for kind, w in weights.items():
        if kind not in CONDITION_KINDS:
            raise ValueError(f"unknown condition kind {kind!r} in weights; "
                             f"expected some of {CONDITION_KINDS}")
        if not w >= 0:
            raise ValueError(f"weight of {kind!r} must be ≥ 0, got {w!r}")
    kinds = list(weights)
    if num_latent_frames is not None:
        kinds = applicable_kinds(kinds, num_latent_frames, v2v_frames=v2v_frames)
    w = torch.tensor([float(weights[k]) for k in kinds], dtype=torch.float64)  # (K,)
    if not kinds or not bool((w > 0).any()):
        raise ValueError(f"no condition kind with a positive weight fits "
                         f"{num_latent_frames} latent frames: weights {weights}")
    u = torch.rand((), generator=generator, device=generator.device, dtype=torch.float64).cpu()
    cum = torch.cumsum(w, 0) / w.sum()  # (K,); a zero-weight kind has an empty interval
    i = int(torch.searchsorted(cum, u, right=True))  # the first kind with cum > u
    if i >= len(kinds):  # rounding left cum[-1] a hair below 1: the last positive-weight kind
        i = int(torch.nonzero(w > 0)[-1])
    return kinds[i]


def build_cond(latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[mask, mask·latent] → (B, C+1, T, H, W), in latent's dtype.

    latent: (B, C, T, H, W), the separately encoded condition frames (other frames may hold
    anything: they are zeroed). mask: (T,) or (B, T) bool, True = conditioned frame; each sample
    must leave a frame to generate (checked here, where the mask is made on the host, rather
    than in `flow.flow_loss` every step).
    """
    if latent.ndim != 5:
        raise ValueError(f"latent must be (B, C, T, H, W), got {tuple(latent.shape)}")
    b, _, t, h, w = latent.shape
    if mask.ndim == 1:
        mask = mask.expand(b, -1)
    if mask.shape != (b, t):
        raise ValueError(f"mask must be (T,) = ({t},) or (B, T) = ({b}, {t}), "
                         f"got {tuple(mask.shape)}")
    whole = mask.bool().all(dim=1)  # (B,): samples with every frame given
    if bool(whole.any()):
        samples = whole.nonzero().flatten().tolist()
        raise ValueError(f"mask conditions every frame of samples {samples}, leaving nothing to "
                         "generate or learn from: give at most T - 1 frames (condition_mask "
                         "refuses such kinds; use t2v for images)")
    m = mask.to(device=latent.device, dtype=latent.dtype)[:, None, :, None, None]  # (B,1,T,1,1)
    m = m.expand(b, 1, t, h, w)  # (B, 1, T, H, W)
    return torch.cat([m, m * latent], dim=1)  # (B, C+1, T, H, W)


def zero_cond(latent_shape, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The t2v (or dropped) condition for latents of (B, C, T, H, W): zeros (B, C+1, T, H, W)."""
    b, c, t, h, w = latent_shape
    return torch.zeros(b, c + 1, t, h, w, device=device, dtype=dtype)


def conditioned_frames(cond: torch.Tensor) -> torch.Tensor:
    """(B, C+1, T, H, W) condition → (B, T) bool, True where the frame is given."""
    if cond.ndim != 5:
        raise ValueError(f"cond must be (B, C+1, T, H, W), got {tuple(cond.shape)}")
    return (cond[:, 0] > 0.5).any(dim=(2, 3))  # (B, T)


def generated_frames(cond: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, True where the model must generate the frame: the loss mask of `flow_loss`."""
    return ~conditioned_frames(cond)


def _drop(batch: int, p: float, generator: torch.Generator, name: str) -> torch.Tensor:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} dropout probability must be in [0, 1], got {p}")
    return torch.rand(batch, generator=generator, device=generator.device) < p  # (B,)


def drop_condition(cond: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Per sample, replace the condition by zeros (the t2v condition) with probability p.

    cond: (B, C+1, T, H, W). One draw per sample from `generator`. Take the loss mask from the
    result (`generated_frames`): a dropped sample's frames all count.
    """
    drop = _drop(cond.shape[0], p, generator, "condition").to(cond.device)  # (B,)
    return torch.where(drop[:, None, None, None, None], torch.zeros_like(cond), cond)


def _null_like(null: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    if null.ndim == like.ndim - 1:
        null = null[None]
    if null.ndim != like.ndim or null.shape[0] not in (1, like.shape[0]) \
            or null.shape[1:] != like.shape[1:]:
        raise ValueError(
            f"{name} {tuple(null.shape)} does not match the batch's {tuple(like.shape)}: give the "
            f"empty prompt's embedding as {tuple(like.shape[1:])} or (1 or B, "
            f"{', '.join(map(str, like.shape[1:]))}) — encode it with the same max_length"
        )
    return null.to(device=like.device, dtype=like.dtype).expand_as(like)


def drop_text(
    text: torch.Tensor,
    pooled: torch.Tensor,
    *,
    null_text: torch.Tensor,
    null_pooled: torch.Tensor,
    p_text: float,
    p_pooled: float,
    generator: torch.Generator,
    text_mask: torch.Tensor | None = None,
    null_text_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Text dropout: per sample, the T5 sequence → the empty prompt's with probability p_text
    and, independently, the CLIP vector → the empty prompt's with probability p_pooled
    (reference p = √0.1 for both). Draws: B for text, then B for pooled, from `generator`.

    text: (B, L, D_txt); pooled: (B, D_vec); null_text: (L, D_txt) or (1|B, L, D_txt), the empty
    prompt encoded with the same padding; null_pooled: (D_vec,) or (1|B, D_vec). text_mask (B, L)
    bool and null_text_mask (L,) or (1|B, L) go together: a dropped sample takes the null mask.
    Returns (text, pooled, text_mask).
    """
    b = text.shape[0]
    if pooled.shape[0] != b:
        raise ValueError(f"text has batch {b} but pooled has {pooled.shape[0]}")
    drop_t = _drop(b, p_text, generator, "text").to(text.device)  # (B,)
    drop_p = _drop(b, p_pooled, generator, "pooled text").to(pooled.device)  # (B,)
    null_t = _null_like(null_text, text, "null_text")  # (B, L, D_txt)
    null_p = _null_like(null_pooled, pooled, "null_pooled")  # (B, D_vec)
    text = torch.where(drop_t[:, None, None], null_t, text)
    pooled = torch.where(drop_p[:, None], null_p, pooled)
    if (text_mask is None) != (null_text_mask is None):
        raise ValueError("give text_mask and null_text_mask together (or neither)")
    if text_mask is not None:
        if text_mask.shape != text.shape[:2]:
            raise ValueError(f"text_mask must be (B, L) = {tuple(text.shape[:2])}, "
                             f"got {tuple(text_mask.shape)}")
        null_m = _null_like(null_text_mask, text_mask, "null_text_mask")  # (B, L)
        text_mask = torch.where(drop_t[:, None], null_m, text_mask)
    return text, pooled, text_mask
