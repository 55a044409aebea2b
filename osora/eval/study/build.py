"""Build a blinded pairwise study from the sample folders of two or more models.

Protocol (docs/recipe.md §7): one sample per prompt per model, the sampler's index 0, so no one
picks a model's best video; every model answers the same prompts; every unordered model pair ×
prompt is one item, shown left/right in a seeded random order. Raters see only random media
names, so nothing they are served names a model; the key that undoes the blinding stays on disk.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path

from osora.eval.study.layout import ANSWERS, ASPECTS, CHOICES, ITEMS, KEY, MEDIA
from osora.fileio import atomic_write_json

SAMPLE_INDEX = 0  # the one sample per prompt every model contributes


def build_study(models: dict[str, Path], out: Path, seed: int) -> Path:
    """Write the study into `out` (items.json, key.json, media/) and return `out`.

    Each model contributes exactly its index-0 sample of each prompt (one per prompt, never a
    chosen best of several), and every model must have the same prompts.

    `models` maps a model's name to its folder of `osora sample` outputs; its order is the
    models' order in the key (the first is the analysis's default reference). Prompts are read
    from the sidecars, not from file names (long prompts are cut and hashed there).
    """
    if len(models) < 2:
        raise ValueError(f"a pairwise study needs at least two models, got {list(models)}: "
                         "give --model NAME=DIR once per model")
    out = Path(out)
    _check_out(out)
    samples = {name: _index0_samples(name, Path(folder)) for name, folder in models.items()}
    prompts = _common_prompts(models, samples)
    rng = random.Random(seed)

    pairs = list(itertools.combinations(models, 2))
    sides = [(prompt, *(pair if rng.random() < 0.5 else pair[::-1]))
             for pair in pairs for prompt in prompts]
    rng.shuffle(sides)  # item ids then say nothing about pair or prompt

    taken: set[str] = set()
    media = {(name, prompt): _random_media_name(rng, taken)
             for name in models for prompt in prompts}

    (out / MEDIA).mkdir(parents=True, exist_ok=True)
    key_models = []
    for name, folder in models.items():
        entries = {}
        for prompt in prompts:
            video = samples[name][prompt]
            entries[prompt] = {
                "media": media[name, prompt],
                "sidecar": video.with_suffix(".json").name,
                "sidecar_sha256": _sha256(video.with_suffix(".json")),
                "video_sha256": _copy_hashing(video, out / MEDIA / media[name, prompt]),
            }
        key_models.append({"name": name, "folder": str(Path(folder).resolve()),
                           "samples": entries})

    items, key_items = [], {}
    for k, (prompt, left, right) in enumerate(sides):
        item = f"item-{k:04d}"
        items.append({"id": item, "prompt": prompt,
                      "left": media[left, prompt], "right": media[right, prompt]})
        key_items[item] = {"prompt": prompt, "left": left, "right": right}

    atomic_write_json(out / KEY, {"seed": seed, "sample_index": SAMPLE_INDEX,
                                  "models": key_models, "items": key_items})
    # items.json last: its presence marks a complete study
    atomic_write_json(out / ITEMS, {"items": items, "aspects": list(ASPECTS),
                                    "choices": list(CHOICES)})
    return out


def _check_out(out: Path) -> None:
    """Answers are never overwritten; an unanswered (or half-built) study is rebuilt in place."""
    answered = sorted(p.name for p in (out / ANSWERS).glob("*.jsonl") if p.stat().st_size)
    if answered:
        raise ValueError(f"{out} is a study with answers ({', '.join(answered)} in "
                         f"{out / ANSWERS}); give a new --out, or move {out} away first")
    ours = {ITEMS, KEY, MEDIA, ANSWERS}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if foreign:
        raise ValueError(f"{out} holds files of no study ({', '.join(foreign[:3])}, ...): give a "
                         "new or empty --out")
    (out / ITEMS).unlink(missing_ok=True)  # first: a crash below leaves no half-valid study
    for old in (out / MEDIA).glob("*.mp4"):  # the previous build's names are stale
        old.unlink()


def _index0_samples(name: str, folder: Path) -> dict[str, Path]:
    """prompt → video of the model's index-0 samples, found through their sidecars."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model {name!r}: sample folder {folder} not found; give "
                                f"--model {name}=DIR with the folder `osora sample --out` wrote")
    found: dict[str, Path] = {}
    for sidecar in sorted(folder.glob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"model {name!r}: {sidecar} is not JSON ({err}); repair it or "
                             "move it out of the sample folder") from err
        if not (isinstance(meta, dict) and "prompt" in meta and "index" in meta):
            continue  # not a sample sidecar
        if meta["index"] != SAMPLE_INDEX:
            continue
        video = sidecar.with_suffix(".mp4")
        if not video.is_file():
            raise FileNotFoundError(f"model {name!r}: {sidecar} has no video {video.name}; "
                                    "render the sample again or remove the sidecar")
        if meta["prompt"] in found:
            raise ValueError(f"model {name!r}: two index-{SAMPLE_INDEX} samples of prompt "
                             f"{meta['prompt']!r} in {folder} ({found[meta['prompt']].name}, "
                             f"{video.name}); keep one")
        found[meta["prompt"]] = video
    if not found:
        raise ValueError(f"model {name!r}: no index-{SAMPLE_INDEX} samples in {folder} (sidecars "
                         "'{prompt}-0.json' with a 'prompt' field); render them with "
                         f"`osora sample --out {folder} ...`")
    return found


def _common_prompts(models: dict[str, Path], samples: dict[str, dict[str, Path]]) -> list[str]:
    """The one prompt set of the study; a prompt some model lacks is an error, never a
    silently smaller study (the pairs would then compare models on different prompts)."""
    every = sorted(set().union(*samples.values()))
    for name, found in samples.items():
        missing = [p for p in every if p not in found]
        if missing:
            raise ValueError(
                f"model {name!r} has no index-{SAMPLE_INDEX} sample of prompt {missing[0]!r} "
                f"in {models[name]} ({len(missing)} prompt(s) missing) that other models have: "
                f"render it with `osora sample --out {models[name]} --prompt ...`, or remove "
                "the prompt's samples from the other models' folders")
    return every


def _random_media_name(rng: random.Random, taken: set[str]) -> str:
    """16 random hex digits from the study's RNG: reproducible, and free of model and prompt."""
    while (name := f"{rng.getrandbits(64):016x}.mp4") in taken:
        pass
    taken.add(name)
    return name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy src to dst and return the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()

