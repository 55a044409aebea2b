"""Shared by the torchtitan adapter's tests: one seed checkpoint of the tiny MMDiT. Without
torchtitan (the `titan` extra) the directory is not collected."""

import importlib.util

import pytest

if importlib.util.find_spec("torchtitan") is None:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def seed_ckpt(tmp_path_factory):
    """(folder of the DCP seed checkpoint, its weights)."""
    from titan_reference import seed_checkpoint

    folder = tmp_path_factory.mktemp("titan_seed") / "step-0"
    return folder, seed_checkpoint(folder)
