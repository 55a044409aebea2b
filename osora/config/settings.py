"""Loading params/: YAML files, then a profile's overlay, then OSORA_<SECTION>__<KEY> variables.

Each file params/<section>.yaml is one section of `Settings`. A profile other than `tiny` is a
folder params/profiles/<name>/ of partial files deep-merged over the base files. Environment
variables set only secrets and machine-local keys (osora/config/environment.py): what changes a
stage's output lives in the files DVC tracks, and any other OSORA_ variable stops the load.
"""

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from osora.config.ae import AEParams
from osora.config.base import sub_fields
from osora.config.buckets import BucketsParams
from osora.config.cost import CostParams
from osora.config.data import DataParams
from osora.config.dit import DiTParams
from osora.config.environment import ENV_DELIMITER, ENV_PREFIX, environment_errors, setting_keys
from osora.config.eval import EvalParams
from osora.config.launch import LaunchParams
from osora.config.store import StoreSettings
from osora.config.tracking import TrackingSettings
from osora.config.tune import TuneParams
from osora.config.yaml12 import load_yaml12
from osora.paths import project_root

DEFAULT_PROFILE = "tiny"


class Settings(BaseSettings):
    """The whole resolved configuration: one field per file in params/."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    data: DataParams
    ae: AEParams
    dit: DiTParams
    buckets: BucketsParams
    cost: CostParams
    tune: TuneParams
    eval: EvalParams
    store: StoreSettings
    tracking: TrackingSettings
    launch: LaunchParams

    @model_validator(mode="after")
    def _latent_sets_exist(self) -> "Settings":
        """The names that cross files: a latent set's pyramid level, a DiT stage's latent set,
        the tuned stage."""
        levels, sets = self.data.pyramid.levels, self.ae.latents.sets
        for name, latent_set in sets.items():
            if latent_set.level not in levels:
                raise ValueError(f"params/ae.yaml latents.sets.{name}.level: "
                                 f"{latent_set.level!r} is no level of params/data.yaml "
                                 f"pyramid.levels ({', '.join(levels)})")
        for name, stage in self.dit.train.stages.items():
            if stage.latents not in sets:
                raise ValueError(f"params/dit.yaml train.stages.{name}.latents: "
                                 f"{stage.latents!r} is no set of params/ae.yaml latents.sets "
                                 f"({', '.join(sets)})")
        stage = self.tune.stage
        if stage not in self.dit.train.stages or stage not in self.buckets.stages:
            raise ValueError(f"params/tune.yaml stage: {stage!r} must be a stage of both "
                             "params/dit.yaml train.stages and params/buckets.yaml stages")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML values arrive as init kwargs; the environment must win over them.
        return (env_settings, init_settings)


SECTIONS: tuple[str, ...] = tuple(Settings.model_fields)
SETTING_KEYS: tuple[str, ...] = tuple(setting_keys(Settings))


class ConfigError(ValueError):
    """Invalid params: one line per problem, each naming its file (or variable), key and value."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def load_settings(profile: str = DEFAULT_PROFILE, params_dir: Path | None = None) -> Settings:
    """Read, merge and validate every params file, with the OSORA_ variables the environment
    may set; raise ConfigError on any problem, an OSORA_ variable it may not set included."""
    params_dir = params_dir or project_root() / "params"
    raw = {name: _read_yaml(params_dir / f"{name}.yaml") for name in SECTIONS}
    unexpected = sorted(
        p.name for p in params_dir.glob("*.yaml") if p.stem not in SECTIONS
    )
    if unexpected:
        raise ConfigError(
            [f"{params_dir / n}: not a params file; allowed: {', '.join(SECTIONS)}"
             for n in unexpected]
        )
    if profile != DEFAULT_PROFILE:
        overlay_dir = params_dir / "profiles" / profile
        if not overlay_dir.is_dir():
            known = sorted(p.name for p in (params_dir / "profiles").glob("*") if p.is_dir())
            raise ConfigError(
                [f"profile {profile!r}: no folder {overlay_dir}; profiles: "
                 f"{', '.join([DEFAULT_PROFILE, *known])}"]
            )
        for name in SECTIONS:
            path = overlay_dir / f"{name}.yaml"
            if path.is_file():
                raw[name] = _deep_merge(raw[name], _read_yaml(path))
    refused = environment_errors(os.environ, SETTING_KEYS, _named_secrets(raw))
    if refused:
        raise ConfigError(refused)
    try:
        return Settings(**raw)
    except ValidationError as err:
        raise ConfigError(_explain(err, raw, params_dir, profile)) from None


def _named_secrets(raw: dict[str, Any]) -> list[str]:
    """The variable the params name as holding the captioning key (captions.openai.api_key_env):
    the environment may set it whatever it is called."""
    node: Any = raw
    for key in ("data", "captions", "openai", "api_key_env"):
        node = node.get(key) if isinstance(node, dict) else None
    return [node] if isinstance(node, str) else []


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"{path}: missing; every section needs its params file"])
    try:
        content = load_yaml12(path.read_text())  # DVC's `-S` writes YAML 1.2
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: not valid YAML: {err}".replace("\n", " ")]) from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        kind = type(content).__name__
        raise ConfigError([f"{path}: must be a mapping of keys to values, got {kind}"])
    return content


REPLACE_KEY = "__replace__"  # in a profile's mapping: `__replace__: true` replaces, not merges


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` over `base`, mappings merged key by key, except a mapping of the overlay that
    says `__replace__: true`: it stands for the whole mapping (a profile's own bucket table or
    latent sets, not the tiny ones plus its own)."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and value.get(REPLACE_KEY) is True:
            merged[key] = {k: v for k, v in value.items() if k != REPLACE_KEY}
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _explain(err: ValidationError, raw: dict, params_dir: Path, profile: str) -> list[str]:
    lines = []
    for e in err.errors():
        loc = [str(part) for part in e["loc"]]
        section, key = loc[0], ".".join(loc[1:])
        source = key_source(loc, profile, params_dir)
        # a params model says extra_forbidden, a `params_of` dataclass the keyword's error
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            allowed = ", ".join(_allowed_keys(loc[:-1])) or "none"
            lines.append(f"{source}: unknown key {key!r}; allowed here: {allowed}")
        elif e["type"] == "missing":
            lines.append(f"{source}: key {key!r} is missing; add it (see the field's description "
                         f"in osora/config/{section}.py)")
        else:
            # a whole section's mapping is no help to read: its key names it
            value = "" if isinstance(e["input"], dict) else f" = {e['input']!r}"
            lines.append(f"{source}: {key}{value}: {e['msg']}")
    return lines


def key_source(loc: list[str], profile: str = DEFAULT_PROFILE,
               params_dir: Path | None = None) -> str:
    """Where the value at `loc` ([section, key, ...]) comes from: an OSORA_* variable, the
    profile's overlay file, or params/<section>.yaml."""
    params_dir = params_dir or project_root() / "params"
    section = loc[0]
    env_name = ENV_PREFIX + ENV_DELIMITER.join(loc).upper()
    if env_name in os.environ:
        return f"environment {env_name}"
    overlay = params_dir / "profiles" / profile / f"{section}.yaml"
    if profile != DEFAULT_PROFILE and _has_key(overlay, loc[1:]):
        return str(overlay)
    return str(params_dir / f"{section}.yaml")


def _has_key(path: Path, keys: list[str]) -> bool:
    if not path.is_file():
        return False
    node: Any = load_yaml12(path.read_text())
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return True


def _allowed_keys(loc: list[str]) -> list[str]:
    """The keys found by walking `loc` down from Settings (models and `params_of` dataclasses)."""
    field_type, metadata = Settings, ()
    for part in loc:
        fields = sub_fields(field_type, metadata)
        if part not in fields:
            return []
        field_type, metadata = fields[part]
    return list(sub_fields(field_type, metadata))
