"""Every params key is read by some code: a key nobody reads would change what DVC tracks (and
rerun stages) while changing nothing.

A static check: each leaf key of the loaded Settings (tiny and paper profiles; params models,
their mappings and lists of models, and the `params_of` dataclasses walked into) must appear as
an attribute access `.name` or a string "name" / 'name' in some osora/**/*.py or pipelines/*.py
outside osora/config/, where it is only declared. A name read for another key passes too; the
check catches keys whose name no code uses at all. READ_GENERICALLY lists the keys read whole,
each with the reason."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from osora.config import load_settings
from osora.config.base import sub_fields

REPO = Path(__file__).resolve().parents[2]

# key (a mapping's entries as *) → why no code names it
READ_GENERICALLY: dict[str, str] = {
    "dit.train.stages.*.lora.alpha": "passed whole as osora.models.lora.lora_config(**lora."
                                     "model_dump()), whose argument alpha becomes lora_alpha",
}


def leaf_keys(value: object, path: str = "", metadata: tuple = ()) -> Iterator[tuple[str, str]]:
    """(dotted path, key name) of every leaf under `value`; mapping keys are names the params
    choose (stages, sets), not keys code reads: the path says * for them and their values are
    walked."""
    if isinstance(value, dict):
        for item in value.values():
            yield from leaf_keys(item, f"{path}*.", metadata)
        return
    if isinstance(value, (list, tuple)) and any(isinstance(v, BaseModel) for v in value):
        for item in value:
            yield from leaf_keys(item, f"{path}*.", metadata)
        return
    fields = sub_fields(type(value), metadata)
    if not fields:
        yield path.rstrip("."), path.rstrip(".").rsplit(".", 1)[-1]
        return
    for name, (_, field_metadata) in fields.items():
        yield from leaf_keys(getattr(value, name), f"{path}{name}.", field_metadata)


def source_text() -> str:
    files = [p for p in (REPO / "osora").rglob("*.py") if "config" not in p.relative_to(
        REPO / "osora").parts[:1]]
    files += sorted((REPO / "pipelines").glob("*.py"))
    return "\n".join(p.read_text() for p in files)


SOURCE = source_text()


def is_read(name: str) -> bool:
    return re.search(rf"\.{name}\b|[\"']{name}[\"']", SOURCE) is not None


def unread_keys(profile: str) -> list[str]:
    settings = load_settings(profile, params_dir=REPO / "params")
    return sorted({path for path, name in leaf_keys(settings)
                   if not is_read(name) and path not in READ_GENERICALLY})


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_every_params_key_is_read_by_some_code(profile):
    assert unread_keys(profile) == []


def test_the_walk_reaches_nested_models_mappings_and_dataclasses():
    paths = {path for path, _ in leaf_keys(load_settings(params_dir=REPO / "params"))}
    assert {"dit.model.hidden_size", "ae.dcae.widths", "dit.train.recovery.spike_sigma",
            "dit.conditioning.loss_on_conditioned", "dit.train.stages.*.grad_accum"} <= paths
    assert "ae.dcae.in_channels" not in paths  # fixed by the code, no params key


def test_allow_list_names_real_keys():
    paths = {path for profile in ("tiny", "paper")
             for path, _ in leaf_keys(load_settings(profile, params_dir=REPO / "params"))}
    assert set(READ_GENERICALLY) <= paths
