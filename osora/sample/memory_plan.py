"""How much device memory sampling needs, before loading any weight: `osora sample --plan`.

Each component (the text encoder's models, the MMDiT, the AE) is built on the meta device from
its config (shapes, no storage), which gives its exact parameter count; its weights take
count × bytes of the dtype. Activations:

- MMDiT, a formula (SDPA's flash / memory-efficient kernels keep no L² attention matrix, which
  a trace on the meta device would count): rows = batch × guidance passes (3: a conditioned
  kind; t2v runs 2) × (video tokens + text tokens), and at a single-stream block's peak (its
  concatenation of attention and MLP) these hidden-wide tensors are alive per row: the input
  (1), linear1's output (q, k, v and the MLP input, one storage: 3 + r), the attention output
  (1), GELU of the MLP input (r) and the concatenation (1 + r), r = mlp_ratio: 6 + 3r, plus
  `MMDIT_SLACK` for the block's output and the kernels' workspace. RoPE tables (fp32) on top.
- Text encoders and the AE decoder, traced: their forward runs on meta tensors under a dispatch
  mode that adds each new tensor's bytes when an op makes it and takes them off when it is
  freed (`traced_peak_bytes`), so the peak counts exactly what the model's own ops keep alive
  (the HunyuanVideo VAE's mid-block attention mask included; its attention runs as SDPA's math
  path there, about the memory-efficient kernel's L² bias on CUDA). The AE decodes one video at
  a time, tile by tile when tiled: the largest tile's trace plus the float32 output buffer.

Peaks (torch's allocations; the CUDA context, ~0.5 GiB, comes on top):
- none: all weights + the largest activation of any phase;
- model: the largest phase: its component's weights + its activation;
- sequential: as model, but the MMDiT's phase holds its embedders and final layer plus two
  blocks (the one computing and the next one's prefetched copy).
So none ≥ model ≥ sequential always.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.models.tiling import TileSpec, plan_axis
from osora.sample.generate import video_latent_shape
from osora.sample.placement import OFFLOAD_MODES, OffloadMode

GIB = 1 << 30
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "float32": torch.float32,
          "bfloat16": torch.bfloat16}
GUIDANCE_PASSES = 3  # a conditioned kind: (txt, img), (∅, img), (∅, ∅)
MMDIT_SLACK = 2  # hidden-widths per row beyond the single-stream peak (output, workspace)
# google/t5-v1_1-xxl's encoder and openai/clip-vit-large-patch14's text tower (their
# config.json), used when params/dit.yaml:text names folders this machine does not have
T5_V1_1_XXL = {"model_type": "t5", "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64,
               "num_layers": 24, "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
               "tie_word_embeddings": False}
CLIP_L_TEXT = {"model_type": "clip_text_model", "hidden_size": 768, "intermediate_size": 3072,
               "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 49408,
               "max_position_embeddings": 77, "projection_dim": 768}
CLIP_TOKENS = 77

Phase = Literal["text", "denoise", "decode"]


@dataclass(frozen=True)
class ComponentMemory:
    """One component's device memory: weights (all of them, and while streaming its blocks)
    and the activations of its phase, in bytes."""

    name: str
    phase: Phase
    parameters: int
    weight_bytes: int
    activation_bytes: int
    streamed_weight_bytes: int | None = None  # sequential offload's resident weights

    def weights_on_device(self, mode: OffloadMode) -> int:
        if mode == "sequential" and self.streamed_weight_bytes is not None:
            return self.streamed_weight_bytes
        return self.weight_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """The components of one sampling request and the expected peak per offload mode."""

    height: int
    width: int
    frames: int
    dtype: str
    batch: int
    components: tuple[ComponentMemory, ...]

    def peak_bytes(self, mode: OffloadMode) -> int:
        if mode not in OFFLOAD_MODES:
            raise ValueError(f"offload mode {mode!r} is unknown; use one of {OFFLOAD_MODES}")
        if mode == "none":
            return (sum(c.weight_bytes for c in self.components)
                    + max(c.activation_bytes for c in self.components))
        phases: dict[str, list[ComponentMemory]] = {}
        for c in self.components:
            phases.setdefault(c.phase, []).append(c)
        return max(sum(c.weights_on_device(mode) for c in group)
                   + max(c.activation_bytes for c in group) for group in phases.values())


# --------------------------------------------------------------------------------------------
# Tracing live memory on the meta device


class _LiveBytes(TorchDispatchMode):
    """Adds the bytes of every tensor an op makes and takes them off when the tensor is freed;
    keeps the peak. Outputs that alias an input (views, in-place and out= results: the op
    schema's alias annotations) make nothing new."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._counted: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in self._counted:
                size = t.untyped_storage().nbytes()
                self._counted.add(id(t))
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, id(t), size)
        return out

    def _free(self, key: int, size: int) -> None:
        self._counted.discard(key)
        self.live -= size


def traced_peak_bytes(fn: Callable[[], object]) -> int:
    """The most bytes of tensors made by `fn` alive at once (its inputs and weights not
    counted). Run it on meta tensors to size a model without memory."""
    with torch.no_grad(), _LiveBytes() as live:
        result = fn()
        del result
    return live.peak


# --------------------------------------------------------------------------------------------
# Components


def _on_meta(build: Callable[[], torch.nn.Module], dtype: torch.dtype) -> torch.nn.Module:
    with torch.device("meta"):
        return build().to(dtype).eval()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mmdit_activation_bytes(config: MMDiTConfig, latent: tuple[int, int, int], text_tokens: int,
                           rows: int, dtype: torch.dtype) -> int:
    """Activations of one MMDiT call (module doc): `rows` = batch × guidance passes sequences of
    the video tokens of latent (T, h, w) plus text_tokens."""
    t, h, w = latent
    p = config.patch_size
    tokens = t * (h // p) * (w // p) + text_tokens
    per_row = (6 + 3 * config.mlp_ratio + MMDIT_SLACK) * config.hidden_size
    elem = torch.finfo(dtype).bits // 8
    rope = tokens * config.head_dim * 4  # (L + N, D/2, 2) float32
    return int(rows * tokens * per_row * elem) + rope


def mmdit_memory(config: MMDiTConfig, latent: tuple[int, int, int], text_tokens: int,
                 batch: int, dtype: torch.dtype) -> ComponentMemory:
    model = _on_meta(lambda: MMDiT(config), dtype)
    elem = torch.finfo(dtype).bits // 8
    blocks = [_count(b) for b in [*model.double_blocks, *model.single_blocks]]
    total = _count(model)
    streamed = (total - sum(blocks) + 2 * max(blocks, default=0)) * elem
    return ComponentMemory("MMDiT", "denoise", total, total * elem,
                           mmdit_activation_bytes(config, latent, text_tokens,
                                                  batch * GUIDANCE_PASSES, dtype),
                           streamed_weight_bytes=streamed)


def hf_config(folder: str | None, fallback: dict):
    """A transformers config from a model folder's config.json, else the published one."""
    import transformers  # an optional dependency of text encoding

    values = dict(fallback)
    if folder is not None and (Path(folder) / "config.json").is_file():
        values = json.loads((Path(folder) / "config.json").read_text())
    kind = values.pop("model_type")
    if kind == "clip":  # a whole CLIP's folder: its text tower
        values, kind = values["text_config"], "clip_text_model"
    return transformers.AutoConfig.for_model(kind, **values)


def _text_component(name: str, build: Callable[[], torch.nn.Module], batch: int, tokens: int,
                    dtype: torch.dtype) -> ComponentMemory:
    model = _on_meta(build, dtype)
    ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    activation = traced_peak_bytes(lambda: model(input_ids=ids))
    count = _count(model)
    return ComponentMemory(name, "text", count, count * (torch.finfo(dtype).bits // 8),
                           activation)


def text_memory(text_params, batch: int) -> list[ComponentMemory]:
    """The text encoder's models (params/dit.yaml:text) encoding `batch` prompts at once (a
    run encodes its prompts sample.batch_size at a time: `VideoSampler.encode_ahead`)."""
    import transformers  # an optional dependency of text encoding

    from osora.models.text import packaged_minilm_path

    dtype = DTYPES[text_params.dtype]
    if text_params.kind == "t5_clip":
        t5 = hf_config(text_params.t5, T5_V1_1_XXL)
        clip = hf_config(text_params.clip, CLIP_L_TEXT)
        return [
            _text_component("T5", lambda: transformers.T5EncoderModel(t5), batch,
                            text_params.max_length, dtype),
            _text_component("CLIP", lambda: transformers.CLIPTextModel(clip), batch,
                            CLIP_TOKENS, dtype),
        ]

    folder = text_params.minilm or packaged_minilm_path()
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    return [_text_component("MiniLM", lambda: transformers.AutoModel.from_config(config), batch,
                            text_params.max_length, dtype)]


def _ae_on_meta(ae_params, dtype: torch.dtype) -> torch.nn.Module:
    if ae_params.autoencoder.kind == "hunyuan_vae":
        from osora.models.hunyuan_vae import HUNYUAN_VAE, HunyuanVAE

        return _on_meta(lambda: HunyuanVAE(HUNYUAN_VAE), dtype)
    from osora.models.dcae import DCAE

    return _on_meta(lambda: DCAE(ae_params.dcae), dtype)


def largest_tile(ae, latent: tuple[int, int, int, int], tile: TileSpec | None
                 ) -> tuple[int, int, int, int]:
    """(C, t, h, w) of the largest latent tile the AE decodes (the whole latent untiled)."""
    c, t, h, w = latent
    if tile is None:
        return latent
    spans = [plan_axis(t, ae.temporal_down, tile.temporal, tile.overlap,
                       causal=ae.causal, decode=True, name="temporal"),
             plan_axis(h, ae.spatial_down, tile.spatial, tile.overlap, decode=True),
             plan_axis(w, ae.spatial_down, tile.spatial, tile.overlap, decode=True)]
    return (c, *(max(s.in_stop - s.in_start for s in axis) for axis in spans))


def ae_memory(ae, frames: int, height: int, width: int, tile: TileSpec | None,
              dtype: torch.dtype) -> ComponentMemory:
    """The AE (a module on the meta device) decoding one video, in tiles when given."""
    latent = video_latent_shape(ae, frames, height, width)
    if frames == 1:  # an image decodes in one pass (VideoSampler.decode)
        tile = None
    z = torch.empty(1, *largest_tile(ae, latent, tile), device="meta", dtype=dtype)
    decode = traced_peak_bytes(lambda: ae.decode(z))
    output = 3 * frames * height * width * 4  # float32 pixels: the tile sum / .float() copy
    count = _count(ae)
    return ComponentMemory("AE", "decode", count, count * (torch.finfo(dtype).bits // 8),
                           decode + output * (2 if tile is not None else 1))


def sampling_plan(settings, sample_params, mmdit: MMDiTConfig,
                  tile: TileSpec | None) -> MemoryPlan:
    """The plan of sampling with params/dit.yaml:sample (`sample_params`: size, batch,
    precision) under `settings`' text encoder and AE, for the MMDiT `mmdit`."""
    s = sample_params
    dtype = DTYPES[s.precision]
    ae = _ae_on_meta(settings.ae, dtype)
    c, t, h, w = video_latent_shape(ae, s.frames, s.height, s.width)
    components = (
        *text_memory(settings.dit.text, s.batch_size),  # encoded batch_size at a time
        mmdit_memory(mmdit, (t, h, w), settings.dit.text.max_length, s.batch_size, dtype),
        ae_memory(ae, s.frames, s.height, s.width, tile, dtype),
    )
    return MemoryPlan(s.height, s.width, s.frames, s.precision, s.batch_size, components)


# --------------------------------------------------------------------------------------------
# Tables


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _count_text(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def format_plan(plan: MemoryPlan) -> str:
    """The table `osora sample --plan` prints."""
    lines = [f"sampling {plan.width}×{plan.height}, {plan.frames} frames, {plan.dtype}, "
             f"batch {plan.batch} (GiB; {GUIDANCE_PASSES} guidance passes)",
             f"{'component':<10}{'phase':<9}{'parameters':>12}{'weights':>10}"
             f"{'streamed':>10}{'activations':>13}"]
    for c in plan.components:
        streamed = _gib(c.streamed_weight_bytes) if c.streamed_weight_bytes else "-"
        lines.append(f"{c.name:<10}{c.phase:<9}{_count_text(c.parameters):>12}"
                     f"{_gib(c.weight_bytes):>10}{streamed:>10}{_gib(c.activation_bytes):>13}")
    lines.append("expected peak: " + ", ".join(f"{m} {_gib(plan.peak_bytes(m))}"
                                               for m in OFFLOAD_MODES)
                 + " GiB (the CUDA context, ~0.5 GiB, on top)")
    return "\n".join(lines)


def markdown_table(plans: list[MemoryPlan], measured: dict | None = None) -> str:
    """Rows per resolution × frames, a column per offload mode (GiB); `measured` maps
    (height, frames, mode) to a measured peak, shown beside the estimate."""
    head = "| resolution | frames | " + " | ".join(f"{m} (GiB)" for m in OFFLOAD_MODES) + " |"
    rows = [head, "|" + "---|" * (2 + len(OFFLOAD_MODES))]
    for plan in plans:
        cells = []
        for mode in OFFLOAD_MODES:
            cell = _gib(plan.peak_bytes(mode))
            got = (measured or {}).get((plan.height, plan.frames, mode))
            cells.append(cell + (f" (measured {_gib(got)})" if got is not None else ""))
        rows.append(f"| {plan.width}×{plan.height} | {plan.frames} | " + " | ".join(cells)
                    + " |")
    return "\n".join(rows)
