"""The study tests' fake models (see study_fakes.py) and a rating server over them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from study_fakes import COLOURS, write_model

from osora.eval.study.build import build_study
from osora.eval.study.server import StudyServer


@pytest.fixture(scope="session")
def fake_models(tmp_path_factory) -> dict[str, Path]:
    """name → sample folder of each fake model (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("models")
    return {name: write_model(root / name, colour) for name, colour in COLOURS.items()}


@pytest.fixture
def server(fake_models, tmp_path):
    """A rating server on 127.0.0.1 (port 0) over a study of the fake models, in a thread."""
    server = StudyServer(build_study(fake_models, tmp_path / "study", seed=5), ("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
