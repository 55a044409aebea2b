"""The settings objects the models and loop take are the params field types (osora.config.base
`params_of`): one schema, validated once by the dataclass's own checks; a params file still
states every key, an unknown key is named with the allowed ones, and the loaded value is the
dataclass itself."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from dvc_project import edit_yaml

from osora.config import ConfigError, load_settings
from osora.data.latents import LatentEncoder
from osora.data.runner import _jsonable
from osora.models.dcae_config import DCAEConfig
from osora.models.mmdit import MMDiTConfig
from osora.models.mmdit_config import ROPE_LAYOUTS
from osora.models.rope import LAYOUTS
from osora.models.tile_spec import TileSpec
from osora.tracking import flatten, section
from osora.train.recovery_settings import RecoverySettings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def params_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(REPO / "params", tmp_path / "params"))


def test_loaded_sections_are_the_dataclasses():
    settings = load_settings(params_dir=REPO / "params")
    assert type(settings.dit.model) is MMDiTConfig
    assert type(settings.ae.dcae) is DCAEConfig
    assert type(settings.dit.train.recovery) is RecoverySettings
    assert type(settings.ae.latents.tile) is type(settings.dit.sample.decode_tile) is TileSpec
    assert isinstance(settings.ae.dcae.widths, tuple)  # YAML lists: hashable, comparable
    assert hash(settings.dit.model) == hash(settings.dit.model)
    assert "in_channels" not in settings.model_dump(mode="json")["ae"]["dcae"]


def test_rope_layouts_are_the_ropes():
    assert set(ROPE_LAYOUTS) == set(LAYOUTS)


def test_unknown_key_is_named_with_the_allowed_ones(params_dir):
    edit_yaml(params_dir / "dit.yaml", lambda c: c["model"].update(hiddn_size=8))
    with pytest.raises(ConfigError, match=r"dit.yaml: unknown key 'model.hiddn_size'; allowed "
                                          r"here: in_channels, patch_size"):
        load_settings(params_dir=params_dir)


def test_missing_key_is_an_error_not_the_dataclass_default(params_dir):
    edit_yaml(params_dir / "dit.yaml", lambda c: c["train"]["recovery"].pop("spike_window"))
    with pytest.raises(ConfigError, match=r"train.recovery: .*\['spike_window'\] are missing"):
        load_settings(params_dir=params_dir)


def test_a_key_the_code_fixes_is_refused(params_dir):
    edit_yaml(params_dir / "ae.yaml", lambda c: c["dcae"].update(in_channels=4))
    with pytest.raises(ConfigError, match=r"dcae: .*\['in_channels'\] are fixed by the code"):
        load_settings(params_dir=params_dir)


@pytest.mark.parametrize(("file", "section", "key", "value", "message"), [
    ("dit.yaml", "model", "hidden_size", 130, "not divisible by num_heads"),
    ("dit.yaml", "model", "theta", 0, "theta must be > 0"),
    ("ae.yaml", "dcae", "head_dim", 0, "head_dim must be ≥ 1"),
    ("dit.yaml", "recovery", "slow_patience", 0, "slow_patience must be ≥ 1"),
    ("ae.yaml", "eval", "tile", {"spatial": 4, "temporal": None, "overlap": 0.25},
     "TileSpec.spatial must be an int ≥ 8"),
])
def test_the_dataclass_checks_are_the_validation(params_dir, file, section, key, value, message):
    def change(content):
        node = content["train"]["recovery"] if section == "recovery" else content[section]
        node[key] = value

    edit_yaml(params_dir / file, change)
    with pytest.raises(ConfigError, match=message):
        load_settings(params_dir=params_dir)


def test_mlflow_logs_a_dataclass_section_key_by_key():
    settings = load_settings(params_dir=REPO / "params")
    logged = flatten("ae.dcae", section(settings, "ae.dcae"))
    assert set(logged) == {f"ae.dcae.{k}" for k in yaml.safe_load(
        (REPO / "params" / "ae.yaml").read_text())["dcae"]}
    assert logged["ae.dcae.widths"] == list(settings.ae.dcae.widths)
    assert flatten("dit.model", section(settings, "dit.model"))["dit.model.hidden_size"] == \
        settings.dit.model.hidden_size


def test_the_latents_fingerprint_reads_the_dcae_keys_as_before():
    """The latents stage's work log is keyed by a fingerprint of its settings: the DC-AE enters
    it as its params keys (JSON), as when it was a params model, not as a dataclass repr."""
    settings = load_settings(params_dir=REPO / "params")
    encoder = LatentEncoder.__new__(LatentEncoder)  # describe() reads only these
    encoder.params, encoder.ae_params, encoder.ae_sha256 = settings.ae.latents, settings.ae, "x"
    described = json.loads(json.dumps(encoder.describe(), default=_jsonable))
    assert described["dcae"] == yaml.safe_load((REPO / "params" / "ae.yaml").read_text())["dcae"]
