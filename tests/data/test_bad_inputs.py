"""The bad-input corpus through ingest and preprocessing: nothing escapes, unreadable files are
quarantined with a reason, odd names run nothing, and ffmpeg/PyAV never read a name as an option
or a protocol."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from osora.config import load_settings
from osora.data.bad_inputs import AWKWARD_NAMES, make_bad_inputs
from osora.data.ingest import ingest
from osora.data.preprocess import preprocess_table
from osora.media import ProbeError, filter_metadata, probe, run_ffmpeg

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"

# What ingest + preprocess make of each broken file: "keep", a drop reason, or the start of
# the probe error ("unreadable: <prefix>").
EXPECTED = {
    "truncated_tail.mp4": "unreadable: truncated",
    "truncated_index.mp4": "unreadable: InvalidDataError",
    "empty.mp4": "unreadable: empty file",
    "text.mp4": "unreadable: InvalidDataError",
    "audio_only.mp4": "unreadable: no video stream",
    "single_frame.mp4": "too_short",
    "wide_8192x64.mp4": "aspect_ratio",
    "huge_header.mp4": "unreadable: frame size 16000x16000",
    "vfr.mp4": "keep",
    "yuv444p10.mp4": "keep",
    "ffv1_alpha.mkv": "keep",
    "rotated_90.mp4": "keep",
    **{name: "keep" for name in AWKWARD_NAMES},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str], float, Path]:
    """(folder, what make_bad_inputs returned, seconds it took, the working directory it ran
    in). Runs in an empty working directory, so a name run as a command would leave a trace."""
    folder = tmp_path_factory.mktemp("bad")
    cwd = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        start = time.perf_counter()
        written = make_bad_inputs(folder)
        return folder, written, time.perf_counter() - start, cwd
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def verdicts(corpus) -> dict[str, tuple[dict, dict]]:
    """File name -> (videos row, preprocess row)."""
    folder, _, _, cwd = corpus
    settings = load_settings(params_dir=PARAMS_DIR)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        rows, duplicates, *_ = ingest(folder, settings.data.ingest.extensions)
    finally:
        os.chdir(old)
    assert duplicates == 0  # every file has its own content
    table = preprocess_table(rows, settings.data.preprocess)
    return {Path(v["uri"]).name: (v, p) for v, p in
            zip(rows.to_pylist(), table.to_pylist(), strict=True)}


def test_corpus_is_small_fast_and_complete(corpus):
    folder, written, seconds, _ = corpus
    assert set(written) == set(EXPECTED)
    assert all(written.values())
    assert sorted(p.name for p in folder.iterdir()) == sorted(written)  # no scratch left
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2_000_000
    assert seconds < 10


def test_ingest_and_preprocess_judge_every_file(verdicts):
    assert set(verdicts) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        video, verdict = verdicts[name]
        if expected == "keep":
            assert verdict["keep"], (name, verdict["reason"])
            assert video["probe_error"] is None
        elif expected.startswith("unreadable: "):
            assert video["probe_error"], name
            assert verdict["reason"].startswith(expected), (name, verdict["reason"])
        else:
            assert verdict["reason"] == expected, (name, verdict["reason"])


def test_names_run_nothing(corpus, verdicts):
    folder, _, _, cwd = corpus
    for place in (folder, cwd, Path.cwd()):
        assert not (place / "pwned").exists()
    assert list(cwd.iterdir()) == []
    for name in AWKWARD_NAMES:
        assert verdicts[name][0]["uri"] == str(folder / name)


def test_probe_reports_displayed_size_and_refuses_huge_frames(corpus):
    folder = corpus[0]
    rotated = probe(folder / "rotated_90.mp4")
    assert (rotated.width, rotated.height, rotated.rotation) == (96, 160, 90)
    vfr = probe(folder / "vfr.mp4")
    assert 16 < vfr.fps < 30  # the average over both segments
    assert "over the" in probe_reason(folder / "huge_header.mp4")


def probe_reason(path: Path) -> str:
    with pytest.raises(ProbeError) as err:
        probe(path)
    return err.value.reason


def test_ffmpeg_and_probe_take_odd_names_as_files(corpus, tmp_path, monkeypatch):
    """Relative names that ffmpeg would read as an option ("-y.mp4") or a protocol
    ("pipe:0") are passed as absolute paths when given as Path objects."""
    folder = corpus[0]
    monkeypatch.chdir(tmp_path)
    shutil.copy(folder / "-i.mp4", tmp_path / "pipe:0")
    assert len(filter_metadata("pipe:0", "scdet")) == probe("pipe:0").num_frames

    run_ffmpeg(["-i", Path("pipe:0"), "-frames:v", "2", "-c", "copy", "-y", Path("-y.mp4")])
    assert probe(tmp_path / "-y.mp4").num_frames == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["-y.mp4", "pipe:0"]
