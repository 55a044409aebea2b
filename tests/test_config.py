"""The one config schema: params/*.yaml validated at load, profiles, the few environment
overrides allowed (secrets, machine-local keys) and the refusal of every other OSORA_ variable."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from osora.config import SECTIONS, ConfigError, load_settings
from osora.config.environment import ENVIRONMENT_KEYS, OTHER_VARIABLES
from osora.config.settings import SETTING_KEYS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params_dir(tmp_path: Path) -> Path:
    """A private copy of params/ to break."""
    return Path(shutil.copytree(REPO / "params", tmp_path / "params"))


def edit(path: Path, change) -> None:
    content = yaml.safe_load(path.read_text())
    change(content)
    path.write_text(yaml.safe_dump(content))


def test_tiny_profile_loads_every_section():
    settings = load_settings()
    assert set(SECTIONS) == {p.stem for p in (REPO / "params").glob("*.yaml")}
    assert settings.data.synth.fps == 24
    assert settings.cost.gpu_hour_usd["H200"] == 2.0  # the paper's price


def test_paper_profile_overrides_only_what_its_files_name():
    tiny, paper = load_settings(), load_settings("paper")
    assert paper.store.uri.startswith("s3://")
    assert (paper.data.synth.width, paper.data.synth.height) == (1024, 576)
    assert paper.data.synth.seed == tiny.data.synth.seed
    assert paper.cost == tiny.cost


def test_a_profile_mapping_marked_replace_stands_for_the_whole_mapping():
    """The paper's bucket table and latent sets replace the tiny ones (`__replace__: true`);
    unmarked mappings merge key by key (the paper adds a pyramid level to the tiny ones)."""
    tiny, paper = load_settings(), load_settings("paper")
    assert set(paper.buckets.stages["stage1"]) == {1, *range(5, 130, 4)}  # no tiny 16, 32, …
    assert set(paper.ae.latents.sets) == {"256px", "768px"}
    assert set(paper.data.pyramid.levels) == set(tiny.data.pyramid.levels) | {"stage3_768px"}


def test_unknown_profile_lists_the_known_ones(params_dir):
    with pytest.raises(ConfigError, match=r"profile 'huge'.*tiny, paper"):
        load_settings("huge", params_dir)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["synth"].update(fps=8),
         r"data.yaml: synth.fps = 8: .*greater than or equal to 16"),
        (lambda c: c["synth"].update(width="wide"),
         r"data.yaml: synth.width = 'wide': .*valid integer"),
        (lambda c: c["synth"].update(colour=3),
         r"data.yaml: unknown key 'synth.colour'; allowed here: seed, "),
        (lambda c: c["synth"].pop("crf"), r"data.yaml: key 'synth.crf' is missing"),
    ],
    ids=["out-of-range", "wrong-type", "unknown-key", "missing-key"],
)
def test_bad_value_gives_one_line_naming_file_key_value(params_dir, change, expected):
    edit(params_dir / "data.yaml", change)
    with pytest.raises(ConfigError) as err:
        load_settings(params_dir=params_dir)
    assert len(err.value.lines) == 1
    assert str(params_dir / "data.yaml") in err.value.lines[0]
    assert err.value.lines[0] == str(err.value)
    assert re.search(expected, str(err.value)), str(err.value)


def test_a_stray_params_file_is_an_error(params_dir):
    (params_dir / "vae.yaml").write_text("depth: 3\n")
    with pytest.raises(ConfigError, match="vae.yaml: not a params file"):
        load_settings(params_dir=params_dir)


def test_a_machine_local_variable_overrides_one_run(params_dir, monkeypatch):
    monkeypatch.setenv("OSORA_DATA__RUNNER__WORKERS", "7")
    monkeypatch.setenv("OSORA_STORE__URI", "s3://elsewhere/x")
    monkeypatch.setenv("OSORA_DIT__SAMPLE__DEVICE", "cuda")
    settings = load_settings(params_dir=params_dir)
    assert settings.data.runner.workers == 7
    assert settings.store.uri == "s3://elsewhere/x"
    assert settings.dit.sample.device == "cuda"


def test_an_output_changing_variable_is_refused_naming_its_params_file(params_dir, monkeypatch):
    """A seed set in the environment would change the stage's output without DVC seeing it."""
    monkeypatch.setenv("OSORA_DATA__SYNTH__SEED", "99")
    with pytest.raises(ConfigError) as err:
        load_settings(params_dir=params_dir)
    assert err.value.lines == [
        "environment OSORA_DATA__SYNTH__SEED: synth.seed changes what stages produce, so only "
        "params/data.yaml sets it, where DVC tracks it: edit that file, or run "
        "`dvc exp run -S params/data.yaml:synth.seed=99`"
    ]


def test_every_refused_variable_is_one_line(params_dir, monkeypatch):
    monkeypatch.setenv("OSORA_TUNE__STEPS", "1")
    monkeypatch.setenv("OSORA_DATA__SYNTH__SED", "3")
    with pytest.raises(ConfigError) as err:
        load_settings(params_dir=params_dir)
    assert err.value.lines == [
        "environment OSORA_DATA__SYNTH__SED: unknown; did you mean OSORA_DATA__SYNTH__SEED? "
        "That one changes what stages produce: set synth.seed in params/data.yaml instead",
        "environment OSORA_TUNE__STEPS: steps changes what stages produce, so only "
        "params/tune.yaml sets it, where DVC tracks it: edit that file, or run "
        "`dvc exp run -S params/tune.yaml:steps=1`",
    ]


def test_variables_that_are_no_setting_are_known(params_dir, monkeypatch):
    """The captioning key by the name params/data.yaml gives it (any name), and the tests'
    own variables."""
    edit(params_dir / "data.yaml",
         lambda c: c["captions"]["openai"].update(api_key_env="OSORA_QWEN_KEY"))
    for name in ("OSORA_QWEN_KEY", *OTHER_VARIABLES):
        monkeypatch.setenv(name, "sk-x")
    assert load_settings(params_dir=params_dir).data.captions.openai.api_key_env == "OSORA_QWEN_KEY"


def test_the_environment_keys_are_settings():
    """Renaming a key the environment may set must rename it in the allow-list too."""
    assert set(ENVIRONMENT_KEYS) <= set(SETTING_KEYS)
    assert {"store.s3.secret_access_key", "data.runner.workers", "dit.train.device"} <= set(
        ENVIRONMENT_KEYS)
    assert not any(k.startswith("tune.") or k.endswith((".seed", ".crf")) for k in ENVIRONMENT_KEYS)


def test_bad_environment_value_names_the_variable(params_dir, monkeypatch):
    monkeypatch.setenv("OSORA_DATA__RUNNER__WORKERS", "many")
    expected = r"^environment OSORA_DATA__RUNNER__WORKERS: runner.workers = 'many'"
    with pytest.raises(ConfigError, match=expected):
        load_settings(params_dir=params_dir)


def test_profile_overlay_errors_name_the_overlay_file(params_dir):
    (params_dir / "profiles" / "paper" / "data.yaml").write_text("synth: {fps: 1}\n")
    with pytest.raises(ConfigError, match=r"profiles/paper/data.yaml: synth.fps = 1"):
        load_settings("paper", params_dir)


def osora(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "osora.cli", *args], cwd=REPO, capture_output=True, text=True,
        env=env,
    )


def test_config_show_prints_the_resolved_profile_without_secrets(monkeypatch):
    import os

    env = {**os.environ, "OSORA_STORE__S3__SECRET_ACCESS_KEY": "hunter2-secret"}
    done = osora("config", "show", "--profile", "paper", env=env)
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["data"]["synth"]["width"] == 1024
    assert shown["store"]["uri"].startswith("s3://")
    assert "hunter2-secret" not in done.stdout


def test_cli_reports_config_errors_in_one_line_and_exit_2():
    import os

    done = osora("config", "show", env={**os.environ, "OSORA_DATA__RUNNER__WORKERS": "9999"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "osora: environment OSORA_DATA__RUNNER__WORKERS: runner.workers = '9999': "
        "Input should be less than or equal to 1024"
    ]


def test_cli_names_the_nearest_variable_for_an_unknown_one():
    import os

    done = osora("config", "show", env={**os.environ, "OSORA_STORE__URL": "s3://b/p"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "osora: environment OSORA_STORE__URL: unknown; did you mean OSORA_STORE__URI?"
    ]


def test_dvc_tracks_the_keys_each_stage_reads():
    """Each pipeline script names the settings sections it reads (PARAMS: one dotted key or a
    tuple, with `{...}` filled by a foreach stage's item); dvc.yaml must list each of them as a
    params dependency."""
    import importlib.util

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages, "dvc.yaml declares no stage"
    for name, stage in stages.items():
        items, body = (stage["foreach"], stage["do"]) if "foreach" in stage else ([None], stage)
        script = REPO / re.search(r"python (?:-m osora\.launch )?(pipelines/\w+\.py)",
                                  body["cmd"]).group(1)
        spec = importlib.util.spec_from_file_location(f"pipelines_{name}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        # a script serving several stages (dit_train: --stage NAME) names none
        assert getattr(module, "STAGE", name) == name
        read = (module.PARAMS,) if isinstance(module.PARAMS, str) else module.PARAMS
        for item in items:
            declared = [p for p in body["params"] if isinstance(p, dict)]
            tracked = {
                f: [k.replace("${item}", str(item)) for k in keys or []]
                for d in declared for f, keys in d.items()
            }
            whole = {f for d in declared for f, keys in d.items() if keys is None}
            for dotted in read:
                if "." not in dotted:  # a whole section: the whole file is tracked
                    assert f"params/{dotted}.yaml" in whole, (name, dotted, declared)
                    continue
                section, key = re.sub(r"\{\w+\}", str(item), dotted).split(".", 1)
                assert key in tracked.get(f"params/{section}.yaml", []), (name, item, tracked)


def test_params_rewritten_by_dvc_load_as_before(tmp_path):
    """`dvc exp run -S` rewrites the whole params file (DVC's apply_overrides, YAML 1.2): the
    aspect ratios "1:1", "2:1" lose their quotes, which YAML 1.1 reads as the base-60 integers
    61 and 121. Settings read from the rewritten file must equal the original's."""
    from dvc.utils.hydra import apply_overrides

    from osora.paths import project_root

    params = tmp_path / "params"
    shutil.copytree(project_root() / "params", params)
    steps = load_settings().ae.train.phase1_steps
    apply_overrides(params / "ae.yaml", [f"train.phase1_steps={steps}"])  # the same value
    assert "- 1:1\n" in (params / "ae.yaml").read_text()  # unquoted now
    assert load_settings(params_dir=params) == load_settings()
