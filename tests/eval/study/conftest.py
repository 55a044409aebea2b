"""The study tests' fake models (see study_fakes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_fakes import COLOURS, write_model


@pytest.fixture(scope="session")
def fake_models(tmp_path_factory) -> dict[str, Path]:
    """name → sample folder of each fake model (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("models")
    return {name: write_model(root / name, colour) for name, colour in COLOURS.items()}
