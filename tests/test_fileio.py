"""Atomic writes: whole files only, with the permissions a plain open() would give."""

import os
import stat

from osora.fileio import atomic_write_json, atomic_write_text


def test_written_file_has_the_default_mode_and_no_temp_left(tmp_path):
    path = tmp_path / "sub" / "receipt.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert os.listdir(path.parent) == ["receipt.json"]


def test_overwrite_replaces_the_whole_file(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old content that is longer")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
