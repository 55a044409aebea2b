"""Where the project lives on disk.

DVC runs queued and `--temp` experiments in a copy of the repository, and sets DVC_ROOT to the
main checkout for them (and to the repository root for a plain `dvc repro`). Relative store and
tracking locations resolve against `workspace_root()`, so an experiment's tables and MLflow runs
land in the main checkout's stores rather than in a temporary copy that is deleted afterwards.
"""

import os
from pathlib import Path


def project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: cwd) holding params/ and dvc.yaml."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params").is_dir() and (candidate / "dvc.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no osora project at or above {here}: run from a checkout (a folder with params/ and "
        "dvc.yaml) or pass params_dir explicitly"
    )


def workspace_root() -> Path:
    """The main checkout: DVC's DVC_ROOT inside a DVC stage, else the project around cwd."""
    dvc_root = os.environ.get("DVC_ROOT")
    return Path(dvc_root).resolve() if dvc_root else project_root()
