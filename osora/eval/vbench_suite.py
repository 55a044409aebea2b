"""VBench's prompt suite: which prompts a VBench run samples and which dimension reads each.

The suite is a file in the format of VBench's VBench_full_info.json: a list of entries
{"prompt_en": text, "dimension": [names], "auxiliary_info": {...}}. VBench's standard protocol
samples every prompt `videos_per_prompt` (5) times, named `{prompt}-{index}.mp4`, and scores
each dimension on the videos of the prompts listed for it. Plain Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from osora.eval.vbench_score import DIMENSIONS


@dataclass(frozen=True)
class SuitePrompt:
    text: str
    dimensions: tuple[str, ...]  # the selected dimensions that read this prompt's videos


def load_suite(path: Path) -> list[dict]:
    """The suite's entries, checked: a list of objects with a non-empty "prompt_en" and a
    "dimension" list of VBench dimension names. Errors name the file and the entry."""
    try:
        entries = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"VBench prompt suite {path}: no such file; set params/eval.yaml "
                                "vbench.prompts to VBench's VBench_full_info.json (or the "
                                "excerpt osora/eval/prompts/vbench_excerpt.json)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"VBench prompt suite {path}: not JSON ({err})") from None
    if not isinstance(entries, list):
        raise ValueError(f"VBench prompt suite {path}: expected a list of entries")
    for i, entry in enumerate(entries):
        dims = entry.get("dimension") if isinstance(entry, dict) else None
        text = entry.get("prompt_en") if isinstance(entry, dict) else None
        if not isinstance(text, str) or not text.strip() or not isinstance(dims, list):
            raise ValueError(f"VBench prompt suite {path}, entry {i}: expected "
                             "{\"prompt_en\": text, \"dimension\": [names]}, got "
                             f"{str(entry)[:120]}")
        unknown = [d for d in dims if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"VBench prompt suite {path}, entry {i} ({text!r}): unknown "
                             f"dimensions {unknown}; known: {', '.join(DIMENSIONS)}")
    return entries


def select_prompts(entries: list[dict], dimensions: list[str],
                   max_per_dimension: int | None = None) -> list[SuitePrompt]:
    """The prompts to sample, in suite order, each once: those read by a selected dimension,
    at most `max_per_dimension` per dimension (the first ones; None: all)."""
    taken: dict[str, int] = dict.fromkeys(dimensions, 0)
    chosen: dict[str, list[str]] = {}
    for entry in entries:
        for dim in entry["dimension"]:
            if dim not in taken or (max_per_dimension and taken[dim] >= max_per_dimension):
                continue
            dims = chosen.setdefault(entry["prompt_en"], [])
            if dim not in dims:
                dims.append(dim)
                taken[dim] += 1
    return [SuitePrompt(text, tuple(dims)) for text, dims in chosen.items()]


def suite_for(params, root: Path) -> tuple[list[dict], list[SuitePrompt]]:
    """params/eval.yaml vbench's suite (path relative to `root`) and the prompts it selects."""
    entries = load_suite(root / params.prompts)
    return entries, select_prompts(entries, params.dimensions, params.max_prompts_per_dimension)


def restricted_suite(entries: list[dict], prompts: list[SuitePrompt]) -> list[dict]:
    """The suite as VBench must read it for this run: one entry per sampled prompt listing only
    the dimensions it was sampled for (so VBench looks for no video that was not made), with the
    auxiliary info of every suite entry of that prompt merged."""
    wanted = {p.text: p.dimensions for p in prompts}
    merged: dict[str, dict] = {}
    for entry in entries:
        text = entry["prompt_en"]
        if text not in wanted:
            continue
        out = merged.setdefault(text, {"prompt_en": text, "dimension": list(wanted[text])})
        aux = {d: v for d, v in entry.get("auxiliary_info", {}).items() if d in wanted[text]}
        if aux:
            out.setdefault("auxiliary_info", {}).update(aux)
    return list(merged.values())
