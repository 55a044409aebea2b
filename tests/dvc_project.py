"""A copy of this project as a fresh git + DVC repository, and running commands in it the way a
user does (the virtualenv's dvc and osora on PATH, no DVC variables of an outer run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(*cmd: str, cwd: Path, timeout: float = 1800, env: dict[str, str] | None = None) -> str:
    """Run a command in `cwd` and return its stdout + stderr; a non-zero exit fails the test
    with the output. `env`: variables to set on top of this process' environment."""
    done = _run(cmd, cwd, timeout, env)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def sh_status(*cmd: str, cwd: Path, timeout: float = 1800,
              env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit code, stdout + stderr) of a command that may fail."""
    done = _run(cmd, cwd, timeout, env)
    return done.returncode, done.stdout + done.stderr


def _run(cmd: tuple[str, ...], cwd: Path, timeout: float,
         extra: dict[str, str] | None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **(extra or {}),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "osora-test", "GIT_AUTHOR_EMAIL": "test@osora.invalid",
        "GIT_COMMITTER_NAME": "osora-test", "GIT_COMMITTER_EMAIL": "test@osora.invalid",
    }
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        env.pop(var, None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def copy_project(dest: Path) -> Path:
    """The project's files as git sees them (committed or not, never ignored) in `dest`, as a
    new git repository with one commit."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    sh("git", "init", "-q", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-q", "-m", "clone", cwd=dest)
    return dest


def edit_yaml(path: Path, change: Callable[[dict], object]) -> None:
    """Change a params file in place: `change` edits its parsed mapping."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def write_latents(project: Path, tables: dict[str, list[dict]]) -> None:
    """Latents tables in the project's local store (`tables`: name such as "latents_256px" →
    rows of osora.schemas.LATENTS) and the receipt the latents stage writes for them,
    lineage/latents.json: what the DiT stages read, without encoding any video."""
    import pyarrow as pa

    from osora.lineage import TableRef, write_receipt
    from osora.schemas import schema_of
    from osora.store import Store

    store = Store(str(project / "store"))
    refs = [TableRef(name, store.table_uri(name),
                     store.sync(name, pa.Table.from_pylist(rows, schema=schema_of(name)),
                                key="id"))
            for name, rows in tables.items()]
    write_receipt(project / "lineage" / "latents.json", stage="latents", outputs=refs)
    write_text_embeds(project, store, [r["text"] for rows in tables.values() for r in rows])


def write_text_embeds(project: Path, store, texts: list[str]) -> None:
    """The text_embed stage's table and receipt (lineage/text_embeds.json) for `texts`, by the
    project's text encoder, when a DiT stage of its params reads the table (else empty)."""
    import pyarrow as pa

    from osora.config import load_settings
    from osora.data.text_embeds import TABLE, embedding_row, text_inputs
    from osora.lineage import TableRef, write_receipt
    from osora.models.text import build_text_encoder
    from osora.schemas import TEXT_EMBEDS

    params = load_settings(params_dir=project / "params").dit
    rows = []
    if any(s.text_source == "table" for s in params.train.stages.values()):
        encoder = build_text_encoder(params.text)
        inputs = text_inputs(texts, encoder.identity).to_pylist()
        emb = encoder.encode([r["text"] for r in inputs])
        rows = [embedding_row(r["id"], r["text"], encoder.identity, emb.seq[i], emb.mask[i],
                              emb.pooled[i], params.text.table_dtype)
                for i, r in enumerate(inputs)]
    version = store.sync(TABLE, pa.Table.from_pylist(rows, schema=TEXT_EMBEDS), key="id")
    write_receipt(project / "lineage" / "text_embeds.json", stage="text_embed",
                  outputs=[TableRef(TABLE, store.table_uri(TABLE), version)])
