"""The committed dvc.lock is the tiny default's run of this very code and these params: `dvc
status` in the checkout (a fresh clone in CI, with no outputs at all) may report outputs
missing, never a source (code, params, a command) changed since the lock was written."""

import json
import subprocess
from pathlib import Path

from dvc_project import BIN

REPO = Path(__file__).resolve().parents[1]
REFRESH = ("refresh it: `bash scripts/run_pipeline.sh` (the tiny default, ~10 min), then "
           "`git add dvc.lock metrics reports` and commit them with the change")


def git_files() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return set(out.splitlines())


def is_source(path: str, tracked: set[str]) -> bool:
    """A dep git holds (a file, or a folder of tracked files), not another stage's output."""
    return path in tracked or any(f.startswith(path.rstrip("/") + "/") for f in tracked)


def stale_sources(status: dict, tracked: set[str]) -> dict[str, list[str]]:
    """stage → what changed in its sources since the lock (`dvc status --json` entries)."""
    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if entry == "always changed":  # ingest rescans its sources by design
                continue
            if isinstance(entry, str):  # e.g. "changed command"
                stale.setdefault(stage, []).append(entry)
                continue
            for path, change in entry.get("changed deps", {}).items():
                if isinstance(change, dict):  # a params file: key → change
                    stale.setdefault(stage, []).extend(f"{path}:{k} {v}"
                                                       for k, v in change.items())
                elif is_source(path, tracked):
                    stale.setdefault(stage, []).append(f"{path} {change}")
    return stale


def test_the_committed_lock_is_this_codes_and_these_params():
    lock = REPO / "dvc.lock"
    assert lock.is_file() and "dvc.lock" in git_files(), f"dvc.lock is not committed; {REFRESH}"
    done = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout or "{}")
    stale = stale_sources(status, git_files())
    assert not stale, ("dvc.lock is stale: " + "; ".join(
        f"{stage}: {', '.join(changes)}" for stage, changes in sorted(stale.items()))
        + f"; {REFRESH}")


def test_staleness_is_told_from_missing_outputs():
    """The classifier on `dvc status --json` entries of the kinds DVC writes."""
    tracked = {"osora/models/rope.py", "params/dit.yaml", "pipelines/dit_train.py"}
    status = {
        "ingest": ["always changed"],
        "dit_stage1": [{"changed deps": {"lineage/latents.json": "deleted",
                                         "osora/models/rope.py": "modified"}},
                       {"changed outs": {"models/dit/stage1": "deleted"}}],
        "dit_stage2": [{"changed deps": {"params/dit.yaml": {"train.seed": "modified"}}}],
        "dit_stage3": [{"changed deps": {"models/dit/stage2": "deleted"}},
                       {"changed outs": {"models/dit/stage3": "deleted"}}],
        "vbench": ["changed command"],
    }
    assert stale_sources(status, tracked) == {
        "dit_stage1": ["osora/models/rope.py modified"],
        "dit_stage2": ["params/dit.yaml:train.seed modified"],
        "vbench": ["changed command"],
    }
