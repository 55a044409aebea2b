"""Import FLUX.1 weights (black-forest-labs/flux) into osora's MMDiT: the initialisation of
Open-Sora 2.0's diffusion transformer (docs/recipe.md §3).

Checkpoint: the original black-forest-labs release, e.g. `flux1-dev.safetensors` (one file),
or any sharded safetensors folder with a `*.safetensors.index.json` of the same names; local
files only, read through safetensors. Names are those of `src/flux/model.py` (Flux) and
`src/flux/modules/layers.py` (DoubleStreamBlock, SingleStreamBlock, LastLayer): `img_in`,
`time_in.{in,out}_layer`, `vector_in.*`, `guidance_in.*` (FLUX-dev's distilled guidance),
`txt_in`, `double_blocks.i.{img,txt}_{mod.lin, attn.qkv, attn.norm.{query,key}_norm.scale,
attn.proj, mlp.0, mlp.2}`, `single_blocks.i.{linear1, linear2, norm.*_norm.scale,
modulation.lin}`, `final_layer.{linear, adaLN_modulation.1}`. A checkpoint whose every name
carries one prefix of `STRIPPED_PREFIXES` (single-file UI exports) is read without it.

osora's MMDiT keeps FLUX's module tree, so the key map (`flux_key_map`) is the identity except:
- the QK-norm scales `…norm.{query,key}_norm.scale` are osora's RMSNorm `.weight`;
- FLUX's `img_in.weight` (hidden × C·p²) fills osora's img_in columns [:, :C·p²]; the
  image/video condition columns after them stay zero (the model's own init: a zero condition
  projection, as the reference's zero-initialised `cond_in`);
- `guidance_in.*` is dropped (and listed in the report) unless the config has
  guidance_embed=True: Open-Sora 2.0 has no guidance embedding;
- FLUX rotates q/k in the interleaved RoPE layout; for a config with
  rope_layout="rotate_half" (this project's default, the released Open-Sora v2 weights') the
  q/k rows and QK-norm scales are permuted by `convert_rope_layout`, which computes the same
  function.
Switching the autoencoder (a config whose C·p² differs from the checkpoint's img_in width or
final_layer.linear height, e.g. the Video DC-AE's 128 ch × patch 1 against FLUX's 16 × 2²)
re-initialises img_in and final_layer.linear with the model's own init (docs/recipe.md §3: "when
switching AE, re-initialise input and output layers"); the report says so.

Every problem is an error that lists it: unknown names (pass them in `ignore` to skip; the
report lists what was skipped), missing tensors, and tensors of the wrong shape, each with the
file it is in. `opensora_v2.py` imports the released Open-Sora v2 weights through the same
machinery.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from osora.models.mmdit import TIME_EMBED_DIM, MMDiT, MMDiTConfig, convert_rope_layout
from osora.weights.safetensors_io import read_safetensors_checkpoint

FLUX_ROPE_LAYOUT = "interleaved"  # FLUX `math.rope` / `apply_rope`
# FLUX.1-dev as an osora config: 16-channel FLUX AE latents in 2×2 patches (img_in 3072 × 64),
# guidance embedding, interleaved RoPE; otherwise the shape of MMDIT_11B.
FLUX_DEV = MMDiTConfig(
    in_channels=16, patch_size=2, cond_channels=0, guidance_embed=True, rope_layout="interleaved"
)
# The layers that map latents in and out: re-initialised when the autoencoder changes.
IO_KEYS = ("img_in.weight", "img_in.bias", "final_layer.linear.weight", "final_layer.linear.bias")
# Prefixes of single-file exports (ComfyUI-style, DDP); stripped when every name has one.
STRIPPED_PREFIXES = ("model.diffusion_model.", "module.")
DIFFUSERS_PREFIXES = ("transformer_blocks.", "x_embedder.", "context_embedder.", "time_text_embed.")


@dataclass
class ImportReport:
    """What an import did besides copying tensors one to one."""

    source: str  # the checkpoint path
    rope: str  # the RoPE-layout conversion done, or that none was needed
    img_in: str  # how img_in was filled
    reinitialised: list[str] = field(default_factory=list)  # osora names, fresh model init
    dropped: list[str] = field(default_factory=list)  # checkpoint names not used (by design)
    ignored: list[str] = field(default_factory=list)  # checkpoint names skipped via `ignore`
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"import of {self.source}", f"  RoPE: {self.rope}", f"  img_in: {self.img_in}"]
        for label, names in (
            ("re-initialised (model init)", self.reinitialised),
            ("dropped", self.dropped),
            ("ignored", self.ignored),
        ):
            if names:
                lines.append(f"  {label}: {', '.join(names)}")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


# --------------------------------------------------------------------------------------------
# Source names and the key map (shared with opensora_v2.py)


def _linear(table: dict, prefix: str, out: int, inp: int, bias: bool = True) -> None:
    table[f"{prefix}.weight"] = (out, inp)
    if bias:
        table[f"{prefix}.bias"] = (out,)


def source_table(
    config: MMDiTConfig,
    *,
    in_features: int,
    out_features: int,
    guidance_embed: bool,
    cond_features: int = 0,
    split_qkv: bool = False,
) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every tensor of a FLUX-layout checkpoint (FLUX's `Flux`, or Open-Sora
    v2's `MMDiTModel`) with `config`'s widths and depths, in module order.

    in_features / out_features: img_in's input and final_layer.linear's output widths (the
    reference's patchified `in_channels` / `out_channels`); cond_features: the width of
    Open-Sora v2's `cond_in` (0: none); split_qkv: Open-Sora v2's `fused_qkv=False` layout
    (q_proj/k_proj/v_proj in the double blocks, q_proj/k_proj/v_mlp in the single blocks).
    """
    d, m, hd = config.hidden_size, config.mlp_hidden, config.head_dim
    t: dict[str, tuple[int, ...]] = {}
    _linear(t, "img_in", d, in_features)
    _linear(t, "time_in.in_layer", d, TIME_EMBED_DIM)
    _linear(t, "time_in.out_layer", d, d)
    _linear(t, "vector_in.in_layer", d, config.vec_dim)
    _linear(t, "vector_in.out_layer", d, d)
    if guidance_embed:
        _linear(t, "guidance_in.in_layer", d, TIME_EMBED_DIM)
        _linear(t, "guidance_in.out_layer", d, d)
    if cond_features:
        _linear(t, "cond_in", d, cond_features)
    _linear(t, "txt_in", d, config.text_dim)
    for i in range(config.depth_double):
        for s in ("img", "txt"):
            p = f"double_blocks.{i}.{s}"
            _linear(t, f"{p}_mod.lin", 6 * d, d)
            if split_qkv:
                for x in "qkv":
                    _linear(t, f"{p}_attn.{x}_proj", d, d, config.qkv_bias)
            else:
                _linear(t, f"{p}_attn.qkv", 3 * d, d, config.qkv_bias)
            t[f"{p}_attn.norm.query_norm.scale"] = (hd,)
            t[f"{p}_attn.norm.key_norm.scale"] = (hd,)
            _linear(t, f"{p}_attn.proj", d, d)
            _linear(t, f"{p}_mlp.0", m, d)
            _linear(t, f"{p}_mlp.2", d, m)
    for i in range(config.depth_single):
        p = f"single_blocks.{i}"
        if split_qkv:  # Open-Sora v2: q_proj, k_proj always with bias (nn.Linear's default)
            _linear(t, f"{p}.q_proj", d, d)
            _linear(t, f"{p}.k_proj", d, d)
            _linear(t, f"{p}.v_mlp", d + m, d)
        else:
            _linear(t, f"{p}.linear1", 3 * d + m, d)
        _linear(t, f"{p}.linear2", d, d + m)
        t[f"{p}.norm.query_norm.scale"] = (hd,)
        t[f"{p}.norm.key_norm.scale"] = (hd,)
        _linear(t, f"{p}.modulation.lin", 3 * d, d)
    _linear(t, "final_layer.linear", out_features, d)
    _linear(t, "final_layer.adaLN_modulation.1", 2 * d, d)
    return t


_RENAMES = (
    (re.compile(r"\.norm\.(query|key)_norm\.scale$"), r".norm.\1_norm.weight"),
    (re.compile(r"_attn\.[qkv]_proj\."), "_attn.qkv."),
    (re.compile(r"^(single_blocks\.\d+)\.(q_proj|k_proj|v_mlp)\."), r"\1.linear1."),
    (re.compile(r"^cond_in\."), "img_in."),
)


def osora_name(source: str) -> str:
    """The osora tensor a source tensor goes into (alone, or concatenated with others)."""
    for pattern, repl in _RENAMES:
        source = pattern.sub(repl, source)
    return source


def key_map_of(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """{osora name: the source names it is made of, in order} for source names given in the
    reference's module order (`source_table`'s: q, k, v; img_in before cond_in).

    One source: a copy (img_in.weight: into the first columns). Several: concatenated along
    the output rows (q, k, v[, MLP input]), except img_in.weight = [img_in | cond_in] along the
    input columns and img_in.bias = img_in.bias + cond_in.bias.
    """
    table: dict[str, list[str]] = {}
    for name in names:
        table.setdefault(osora_name(name), []).append(name)
    return {k: tuple(v) for k, v in table.items()}


def combine_parts(name: str, parts: list[torch.Tensor], config: MMDiTConfig) -> torch.Tensor:
    if name == "img_in.weight":
        w = torch.cat(parts, dim=1)  # (dim, C·p² [+ cond·p²])
        if w.shape[1] < config.in_features:  # FLUX: condition columns zero (the model's init)
            w = torch.cat([w, w.new_zeros(w.shape[0], config.in_features - w.shape[1])], dim=1)
        return w
    if len(parts) == 1:
        return parts[0]
    if name == "img_in.bias":  # img_in(x) + cond_in(c): one bias, summed in float32 at least
        acc = torch.promote_types(parts[0].dtype, torch.float32)
        return sum(p.to(acc) for p in parts).to(parts[0].dtype)
    return torch.cat(parts, dim=0)


# --------------------------------------------------------------------------------------------
# Checks


def _where(name: str, origin: Mapping[str, os.PathLike | str] | None) -> str:
    file = (origin or {}).get(name)
    return f"{name} (in {file})" if file is not None else name


def strip_and_ignore(
    state: Mapping[str, torch.Tensor], ignore: Iterable[str]
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str], list[str]]:
    """(tensors by reference name, {reference name: name in the file}, ignored file names,
    notes). A prefix of STRIPPED_PREFIXES that every name carries is removed; names matching
    an `ignore` pattern (fnmatch, against the file's name or the stripped one) are skipped."""
    patterns = list(ignore)
    notes = []
    prefix = ""
    for candidate in STRIPPED_PREFIXES:
        if state and all(k.startswith(candidate) for k in state):
            prefix = candidate
            notes.append(f"names read without their common prefix {candidate!r}")
            break
    out: dict[str, torch.Tensor] = {}
    original: dict[str, str] = {}
    ignored = []
    for key, value in state.items():
        name = key[len(prefix) :]
        if any(fnmatch.fnmatchcase(key, p) or fnmatch.fnmatchcase(name, p) for p in patterns):
            ignored.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        out[name], original[name] = value, key
    return out, original, ignored, notes


def check_names_and_shapes(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    what: str,
    source: str,
    origin: Mapping[str, os.PathLike | str] | None = None,
    original: Mapping[str, str] | None = None,
    hints: Iterable[str] = (),
) -> None:
    """Raise one ValueError listing every unknown, missing and misshapen tensor, or return."""
    original = original or {}

    def shown(name: str) -> str:
        return _where(original.get(name, name), origin)

    unknown = [shown(k) for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    shapes = [
        f"{shown(k)}: expected {tuple(shape)}, got {tuple(state[k].shape)}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != tuple(shape)
    ]
    problems = []
    if unknown:
        problems.append(
            f"unknown tensors ({len(unknown)}; pass them in `ignore` to skip): "
            + ", ".join(unknown)
        )
    if missing:
        problems.append(f"missing tensors ({len(missing)}): " + ", ".join(missing))
    if shapes:
        problems.append("wrong shapes (is the config right?): " + "; ".join(shapes))
    if problems:
        raise ValueError(
            f"{what} {source} does not fit MMDiT(config):\n  "
            + "\n  ".join(problems + [f"hint: {h}" for h in hints])
        )


def check_target(state: Mapping[str, torch.Tensor], config: MMDiTConfig) -> None:
    """The converted dict against MMDiT(config) itself (shapes from the meta device)."""
    with torch.device("meta"):
        expected = MMDiT(config).state_dict()
    problems = [k for k in expected if k not in state] + [k for k in state if k not in expected]
    problems += [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:  # a bug in the key map, not in the checkpoint
        raise RuntimeError("converted state dict does not fit MMDiT: " + ", ".join(problems))


# --------------------------------------------------------------------------------------------
# Building the model


def fresh_io_layers(
    config: MMDiTConfig, seed: int = 0, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """img_in and final_layer.linear as MMDiT(config).init_weights makes them (Xavier img_in
    with zero condition columns and bias; zero output layer), from `seed`, without building
    the whole model: an MMDiT of config's widths with no blocks and 1-wide text inputs."""
    small = dataclasses.replace(
        config, depth_double=0, depth_single=0, text_dim=1, vec_dim=1, guidance_embed=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = MMDiT(small).state_dict()
    return {k: state[k] if dtype is None else state[k].to(dtype) for k in IO_KEYS}


def build_mmdit(
    state: Mapping[str, torch.Tensor],
    config: MMDiTConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> MMDiT:
    """MMDiT(config) holding `state` (complete, osora names), on device in dtype (None: the
    state's). Built on the meta device, so no time goes into an init that is overwritten."""
    with torch.device("meta"):
        model = MMDiT(config)
    model.load_state_dict(dict(state), strict=True, assign=True)
    return model.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# FLUX


def flux_reference_names(
    config: MMDiTConfig,
    *,
    in_features: int | None = None,
    out_features: int | None = None,
    guidance_embed: bool | None = None,
) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a FLUX checkpoint (black-forest-labs `Flux`) of `config`'s widths and
    depths: img_in width in_features and final_layer.linear height out_features (default
    C·p² = config.latent_features, FLUX's patchified in/out_channels), guidance_in when
    guidance_embed (default config.guidance_embed)."""
    return source_table(
        config,
        in_features=config.latent_features if in_features is None else in_features,
        out_features=config.latent_features if out_features is None else out_features,
        guidance_embed=config.guidance_embed if guidance_embed is None else guidance_embed,
    )


def flux_key_map(config: MMDiTConfig) -> dict[str, tuple[str, ...]]:
    """{osora name: (FLUX name,)} for every tensor of MMDiT(config) (FLUX's names are osora's
    but for the QK-norm `.scale`; img_in goes into the first columns)."""
    return key_map_of(flux_reference_names(config))


def rope_to_config(
    state: dict[str, torch.Tensor], config: MMDiTConfig, src: str
) -> tuple[dict[str, torch.Tensor], str]:
    """`state` (osora names) in config.rope_layout, from RoPE layout src; and what was done."""
    if config.rope_layout == src:
        return state, f"no permutation (checkpoint and config both {src})"
    state = convert_rope_layout(state, config, src, config.rope_layout)
    return state, f"q/k rows and QK-norm scales permuted {src} → {config.rope_layout}"


def _flux(
    state: Mapping[str, torch.Tensor],
    config: MMDiTConfig,
    *,
    ignore: Iterable[str] = (),
    reinit_io: bool | None = None,
    seed: int = 0,
    source: str = "state dict",
    origin: Mapping[str, os.PathLike | str] | None = None,
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    tensors, original, ignored, notes = strip_and_ignore(state, ignore)
    latent = config.latent_features
    in_f = tensors["img_in.weight"].shape[-1] if "img_in.weight" in tensors else latent
    out_w = tensors.get("final_layer.linear.weight")
    out_f = latent if out_w is None else out_w.shape[0]
    reinit = (in_f, out_f) != (latent, latent) if reinit_io is None else reinit_io
    if not reinit:  # the checkpoint's io layers must then fit the config
        in_f = out_f = latent
    has_guidance = any(k.startswith("guidance_in.") for k in tensors)
    expected = flux_reference_names(
        config,
        in_features=in_f,
        out_features=out_f,
        guidance_embed=config.guidance_embed or has_guidance,
    )
    hints = []
    if any(k.startswith(DIFFUSERS_PREFIXES) for k in tensors):
        hints.append(
            "these are diffusers names (FluxTransformer2DModel, the transformer/ folder); give "
            "the original black-forest-labs checkpoint (e.g. flux1-dev.safetensors)"
        )
    if any(k.startswith("cond_in.") or "_proj." in k or ".v_mlp." in k for k in tensors):
        hints.append("this looks like an Open-Sora v2 checkpoint: use load_opensora_v2")
    if config.guidance_embed and not has_guidance:
        hints.append(
            "the checkpoint has no guidance_in (FLUX-schnell?): use a config with "
            "guidance_embed=False"
        )
    check_names_and_shapes(
        tensors,
        expected,
        what="FLUX checkpoint",
        source=source,
        origin=origin,
        original=original,
        hints=hints,
    )

    dropped = []
    if not config.guidance_embed:
        dropped = [original[k] for k in tensors if k.startswith("guidance_in.")]
        tensors = {k: v for k, v in tensors.items() if not k.startswith("guidance_in.")}
    # The reference's order (q, k, v; img_in, cond_in), not the file's (safetensors sorts names).
    out = {
        name: combine_parts(name, [tensors[s] for s in parts], config)
        for name, parts in key_map_of(k for k in expected if k in tensors).items()
    }
    if reinit:
        out.update(fresh_io_layers(config, seed, dtype=out["txt_in.weight"].dtype))
        img_in = (
            f"img_in and final_layer.linear re-initialised with the model's init (seed {seed}):"
            f" the checkpoint's latent width ({in_f} in, {out_f} out) differs from the config's"
            f" C·p² = {latent} (autoencoder switch, docs/recipe.md §3)"
        )
    else:
        zero = config.in_features - latent
        img_in = f"FLUX img_in ({config.hidden_size}×{latent}) in columns [:, :{latent}]" + (
            f"; the {zero} condition columns zero" if zero else ""
        )
    out, rope = rope_to_config(out, config, FLUX_ROPE_LAYOUT)
    check_target(out, config)
    report = ImportReport(
        source=source,
        rope=rope,
        img_in=img_in,
        reinitialised=list(IO_KEYS) if reinit else [],
        dropped=dropped,
        ignored=ignored,
        notes=notes,
    )
    return out, report


def convert_flux_state_dict(
    state: Mapping[str, torch.Tensor],
    config: MMDiTConfig,
    *,
    ignore: Iterable[str] = (),
    reinit_io: bool | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A FLUX state dict (black-forest-labs names) → MMDiT(config)'s state dict.

    reinit_io: re-initialise img_in and final_layer.linear with the model's init from `seed`
    (None: exactly when the checkpoint's latent width differs from config's C·p²; False: a
    differing width is a shape error). `ignore`: fnmatch patterns of names to skip. Raises
    ValueError listing every unknown, missing and misshapen tensor. `load_flux` also returns
    a report of what was re-initialised, dropped and permuted.
    """
    return _flux(state, config, ignore=ignore, reinit_io=reinit_io, seed=seed)[0]


def load_flux(
    path: str | os.PathLike,
    config: MMDiTConfig,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    ignore: Iterable[str] = (),
    reinit_io: bool | None = None,
    seed: int = 0,
) -> tuple[MMDiT, ImportReport]:
    """MMDiT(config) initialised from the FLUX checkpoint at `path` (a .safetensors file, a
    shard index, or a folder with one), and the ImportReport (str() it for a log).

    Tensors are read onto `device`; with `dtype` they are cast before conversion (None keeps
    the checkpoint's, e.g. bf16). See `convert_flux_state_dict` for the other arguments.
    """
    tensors, origin = read_safetensors_checkpoint(path, device)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    state, report = _flux(
        tensors,
        config,
        ignore=ignore,
        reinit_io=reinit_io,
        seed=seed,
        source=str(Path(path)),
        origin=origin,
    )
    return build_mmdit(state, config, device, dtype), report
