"""dvc.yaml's code deps are each stage's import closure (osora/pipeline_deps.py): the guard CI
runs, the resolver on a package made up for the test, `osora dvc-deps`, and what DVC itself then
reports when a module changes."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from dvc_project import BIN, copy_project, sh

from osora.pipeline_deps import ImportGraph, stage_deps

REPO = Path(__file__).resolve().parents[1]
ROPE = "osora/models/rope.py"


def test_every_stage_lists_exactly_its_import_closure():
    """The guard: a stage's deps hold its script and every osora file it imports, transitively,
    and no other osora path; the fix is `osora dvc-deps --write`."""
    wrong = {d.stage: {"missing": d.missing, "extra": d.extra}
             for d in stage_deps(REPO) if d.missing or d.extra}
    assert not wrong, f"run `osora dvc-deps --write`: {wrong}"


def test_the_dit_stages_run_the_whole_model_and_the_sampler():
    """The modules the hand-kept lists missed (issue 19): RoPE, attention, norms, the MMDiT's
    weights for training; the sampler for sampling and VBench; the prompt suite VBench reads."""
    deps = {d.stage: set(d.required) for d in stage_deps(REPO)}
    model = {ROPE, "osora/models/attention.py", "osora/models/layers.py",
             "osora/weights/mmdit.py"}
    for stage in ("dit_stage1", "dit_stage2", "dit_stage3", "dit_sample", "vbench"):
        assert model <= deps[stage], (stage, model - deps[stage])
    for stage in ("dit_sample", "vbench"):
        assert "osora/diffusion/sampler.py" in deps[stage]
    assert "osora/eval/prompts/vbench_excerpt.json" in deps["vbench"]
    assert "osora/tune/probe_worker.py" in deps["tune_buckets"]  # run by name: python -m


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_resolver_on_a_made_up_package(tmp_path):
    """Imports anywhere (a function's included), not under TYPE_CHECKING; `from pkg.a import b`
    is pkg/a/b.py for a submodule and only pkg/a for a name; each package's __init__; relative
    imports from a module and from an __init__, one and two levels up; a module named in a
    string runs, one named in a docstring does not; data files."""
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": "from .. import from_init\nNAME = 1\n",
        "pkg/a/b.py": "",
        "pkg/a/c.py": "from ..up import y\n",
        "pkg/from_init.py": "",
        "pkg/up.py": "y = 1\n",
        "pkg/m.py": "from .rel_target import x\n",
        "pkg/rel_target.py": "x = 1\n",
        "pkg/lazy.py": "",
        "pkg/by_name.py": "",
        "pkg/typing_only.py": "",
        "pkg/in_docstring.py": "",
        "pkg/never.py": "",
        "run.py": '"""pkg.in_docstring"""\n'
                  "from typing import TYPE_CHECKING\n"
                  "from pkg.a import b, NAME\n"
                  "from pkg.m import x\n"
                  "if TYPE_CHECKING:\n"
                  "    import pkg.typing_only\n"
                  "else:\n"
                  "    import pkg.a.c\n"
                  "WORKER = 'pkg.by_name'\n"
                  "def later():\n"
                  "    import pkg.lazy\n",
    })
    graph = ImportGraph(tmp_path, prefix="pkg", data_files={"pkg/lazy.py": ("pkg/table.json",)})
    found = graph.closure([tmp_path / "run.py"])
    assert found == {"pkg/__init__.py", "pkg/a/__init__.py", "pkg/from_init.py", "pkg/a/b.py",
                     "pkg/a/c.py", "pkg/up.py", "pkg/m.py", "pkg/rel_target.py", "pkg/lazy.py",
                     "pkg/by_name.py", "pkg/table.json"}

    # `from pkg.a import NAME` alone: the package (and what it imports), not its submodules
    _write(tmp_path, {"only_name.py": "from pkg.a import NAME\n"})
    assert graph.closure([tmp_path / "only_name.py"]) == {
        "pkg/__init__.py", "pkg/a/__init__.py", "pkg/from_init.py"}


def _project_copy(dest: Path) -> Path:
    """What `osora dvc-deps` reads: dvc.yaml, params/ (the project's marker), the scripts and
    osora."""
    shutil.copy(REPO / "dvc.yaml", dest / "dvc.yaml")
    for folder in ("params", "pipelines", "osora"):
        shutil.copytree(REPO / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _dvc_deps(project: Path, flag: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "osora.cli", "dvc-deps", flag], cwd=project,
                          capture_output=True, text=True)


def test_check_names_the_difference_and_write_restores_the_file(tmp_path):
    """dit_stage1's deps as they were kept by hand (a folder, no rope.py): --check exits 1
    naming both and the fix; --write gives back dvc.yaml byte for byte, so it changes the deps
    lists alone (comments, folded commands and the rest of the layout survive)."""
    project = _project_copy(tmp_path)
    before = (project / "dvc.yaml").read_text()
    stage1 = before.index("  dit_stage1:")
    deps = re.compile(r"    deps:\n(      - .*\n)+").search(before, stage1)
    by_hand = ("    deps: [pipelines/dit_train.py, osora/train, osora/models/mmdit.py,\n"
               "           lineage/latents.json, lineage/text_embeds.json]\n")
    (project / "dvc.yaml").write_text(before[:deps.start()] + by_hand + before[deps.end():])

    check = _dvc_deps(project, "--check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert check.stdout.startswith("dit_stage1:\n"), check.stdout
    assert f"  missing {ROPE}\n" in check.stdout
    assert "  extra   osora/train\n" in check.stdout
    assert "fix: osora dvc-deps --write" in check.stdout

    write = _dvc_deps(project, "--write")
    assert write.returncode == 0, write.stderr
    assert write.stdout == "dvc.yaml: rewrote the deps of dit_stage1\n"
    assert (project / "dvc.yaml").read_text() == before
    assert _dvc_deps(project, "--check").returncode == 0


# Records every stage's deps in dvc.lock as they are in the workspace, without running the
# pipeline: Stage.save with allow_missing (outputs and data deps do not exist) and no run cache
# (it would need the outputs), then one dump of the lock file. `dvc commit -f` does the same but
# has no allow-missing on its command line and saves to the run cache.
LOCK_WITHOUT_RUNNING = """\
from dvc.repo import Repo

with Repo(".") as repo, repo.lock:
    stages = repo.index.stages
    for stage in stages:
        stage.save(allow_missing=True, run_cache=False)
    stages[0].dvcfile.dump_stages(stages, update_pipeline=False)
"""


def _changed_code(project: Path) -> dict[str, set[str]]:
    """`dvc status --json`'s changed osora deps, per stage that has any."""
    done = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=project,
                          capture_output=True, text=True, check=True)
    changed = {}
    for stage, entries in json.loads(done.stdout).items():
        code = {path for e in entries if isinstance(e, dict)
                for path in e.get("changed deps", {}) if path.startswith("osora/")}
        if code:
            changed[stage] = code
    return changed


def test_dvc_reruns_the_stages_that_import_a_changed_module(tmp_path):
    """Real DVC on a copy of the project whose dvc.lock records the deps as they are (written
    through DVC's own Stage.save, LOCK_WITHOUT_RUNNING: running the pipeline would take 10
    minutes and change nothing here): `dvc status` sees no changed code; after a comment is
    appended to osora/models/rope.py it reports exactly the stages whose closure holds rope.py,
    dit_stage1 and every stage after it, none before (ae_train, latents, text_embed...).
    tune_buckets imports rope.py too, but it is frozen: DVC never reports a frozen stage's
    deps."""
    project = copy_project(tmp_path)
    sh(sys.executable, "-c", LOCK_WITHOUT_RUNNING, cwd=project)
    assert _changed_code(project) == {}

    with (project / ROPE).open("a") as f:
        f.write("# a comment changes no behaviour, but DVC cannot know\n")
    changed = _changed_code(project)

    spec = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    frozen = {name for name, s in spec.items() if s.get("frozen")}
    expected = {d.stage for d in stage_deps(project) if ROPE in d.required} - frozen
    assert set(changed) == expected
    assert all(paths == {ROPE} for paths in changed.values()), changed
    order = [name for name in spec if name not in frozen]
    assert set(changed) == set(order[order.index("dit_stage1"):]), changed
    assert not {"ae_train", "latents", "text_embed"} & set(changed)
