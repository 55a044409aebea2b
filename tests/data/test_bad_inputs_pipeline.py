"""Bad input never crashes a stage: the whole bad-input corpus through every row-wise stage
of the pyramid, on the real runner. Each video ends up with output or a quarantine reason."""

from pathlib import Path

import pyarrow.compute as pc
import pytest

from osora.config import load_settings
from osora.config.store import StoreSettings
from osora.data.bad_inputs import make_bad_inputs
from osora.data.captions import CaptionOperator
from osora.data.clips import ClipCutter, clip_inputs
from osora.data.ingest import ingest
from osora.data.preprocess import preprocess_table
from osora.data.runner import run_operator
from osora.data.scores import SCORERS
from osora.data.shots import ShotDetector
from osora.store import Store

pytestmark = pytest.mark.slow


def test_corpus_through_shots_clips_scores_and_captions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray `touch pwned` would land here
    raw = tmp_path / "raw"
    corpus = make_bad_inputs(raw)
    settings = load_settings(params_dir=Path(__file__).resolve().parents[2] / "params")
    store_settings = StoreSettings(uri=str(tmp_path / "store"))
    store = Store.from_settings(store_settings)
    # Every row of this corpus is bad on purpose (and none has a caption), so the guard that
    # takes many quarantines of one cause for a broken environment is off (1.0).
    runner = settings.data.runner.model_copy(update={"timeout_s": 60, "stop_fraction": 1.0})

    videos = ingest(raw, [".mp4", ".mkv"]).rows
    assert videos.num_rows == len(corpus)
    verdicts = preprocess_table(videos, settings.data.preprocess)
    kept = verdicts.filter(verdicts.column("keep")).column("id").combine_chunks()
    kept_videos = videos.filter(pc.is_in(videos.column("id"), value_set=kept))
    names = {r["id"]: Path(r["uri"]).name for r in videos.to_pylist()}
    assert {names[i] for i in kept.to_pylist()} >= {
        "vfr.mp4", "yuv444p10.mp4", "ffv1_alpha.mkv", "rotated_90.mp4", "-y.mp4",
        "$(touch pwned).mp4", "vidéo 日本.mp4",
    }

    def run(op, inputs, stage):
        result = run_operator(op, inputs, stage=stage, store=store, params=runner,
                              progress=False)
        assert result.processed == inputs.num_rows, stage  # every input was handled
        return result

    shots = run(ShotDetector(settings.data.shots), kept_videos, "shots")
    clips = run(ClipCutter(settings.data.clips, store_settings),
                clip_inputs(videos, shots.rows), "clips")
    clip_videos = {names[v] for v in clips.rows.column("video_id").to_pylist()}
    # Every awkward name, the VFR, 10-bit, alpha and rotated videos yield clips.
    assert clip_videos >= {"vfr.mp4", "yuv444p10.mp4", "ffv1_alpha.mkv", "rotated_90.mp4",
                           "-y.mp4", "$(touch pwned).mp4", "vidéo 日本.mp4", "semi;colon.mp4"}
    rotated = [r for r in clips.rows.to_pylist() if names[r["video_id"]] == "rotated_90.mp4"]
    assert all(r["height"] > r["width"] for r in rotated)  # cut upright, as displayed

    for name in ("motion", "blur", "jitter"):
        scorer = SCORERS[name](getattr(settings.data.scores, name), store_settings)
        scored = run(scorer, clips.rows, f"score_{name}")
        assert scored.rows.num_rows + scored.quarantine.num_rows == clips.rows.num_rows

    # No caption comes with these files: every clip is quarantined, with the reason.
    sources = videos.select(["id", "caption"]).rename_columns(["video_id", "source_caption"])
    captions = run(CaptionOperator(settings.data.captions, store_settings),
                   clips.rows.join(sources, "video_id", join_type="left outer"), "captions")
    assert captions.rows.num_rows == 0
    assert all("no sidecar caption" in r for r in captions.quarantine.column("reason").to_pylist())
    assert not list(tmp_path.rglob("pwned")) and not Path("pwned").exists()
