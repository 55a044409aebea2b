"""`osora cost`: Table 3's layout from logged runs, and the forecast against a hand count."""

import shutil
from pathlib import Path

import pytest
from dvc_project import edit_yaml

from osora.config import load_settings
from osora.cost_table import StageCost, forecast_stage, format_table, logged_costs
from osora.tracking import stage_run, tracking_uri

REPO = Path(__file__).resolve().parents[1]


def test_forecast_weights_buckets_by_their_global_batches():
    # 60% of samples in bucket 33 (batch 12, 1.5 samples/s/GPU), 40% in 129 (batch 3, 0.4)
    row = forecast_stage("stage1", 1000, 8, {33: 12, 129: 3}, {33: 1.5, 129: 0.4},
                         {33: 0.6, 129: 0.4}, usd_per_gpu_hour=2.0)
    w33, w129 = 0.6 / 12, 0.4 / 3  # global batches per sample share
    per_step = (w33 * 12 / 1.5 + w129 * 3 / 0.4) / (w33 + w129)
    assert row.gpu_days == pytest.approx(1000 * per_step * 8 / 86400)
    assert row.usd == pytest.approx(row.gpu_days * 24 * 2.0)
    with_cp = forecast_stage("stage3", 1000, 8, {33: 12, 129: 3}, {33: 1.5, 129: 0.4},
                             {33: 0.6, 129: 0.4}, usd_per_gpu_hour=2.0, cp=4)
    assert with_cp.gpu_days == pytest.approx(row.gpu_days / 4)
    with pytest.raises(ValueError, match="no throughput or batch size"):
        forecast_stage("s", 1, 1, {33: 1}, {}, {33: 1.0}, 2.0)


def test_table_3_layout_with_a_total():
    text = format_table([StageCost("stage1", 70_000_000, 1, 85_000, 224, 2240.0, 107_520.0),
                         StageCost("stage2", None, 1, 13_000, 192, 384.0, 18_432.0)])
    lines = text.splitlines()
    assert lines[0] == "| stage | data | CP | iters | devices | GPU-days | USD |"
    assert lines[2] == "| stage1 | 70,000,000 | 1 | 85,000 | 224 | 2,240.00 | 107,520.00 |"
    assert lines[-1] == "| total | | | | | 2,624.00 | 125,952.00 |"


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A throwaway project as cwd (its MLflow store under it), as one process."""
    shutil.copytree(REPO / "params", tmp_path / "params")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV",
                "RANK", "WORLD_SIZE", "GROUP_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def logged_rows(settings, stages: list[str]) -> list[StageCost]:
    from mlflow import MlflowClient

    return logged_costs(MlflowClient(tracking_uri(settings)), settings.tracking.experiment,
                        stages)


def test_report_reads_the_newest_finished_stage_runs(project):
    settings = load_settings()
    for steps in (10, 20):  # the newer run wins
        with stage_run("dit_stage1", settings, "dit.train") as run:
            run.log_metrics({"steps": steps, "train_clips": 15})
    rows = logged_rows(settings, ["stage1", "stage2"])
    assert [(r.stage, r.iters, r.data, r.devices, r.on_cpu) for r in rows] == \
        [("stage1", 20, 15, 1, True)]
    assert rows[0].usd > 0  # CPU core-hours are priced


def test_report_shows_each_stages_own_cp_degree_and_devices(project, monkeypatch):
    edit_yaml(project / "params" / "dit.yaml",  # stage 3 only, on 2 ranks
              lambda d: d["train"]["stages"]["stage3"].update(context_parallel=2))
    edit_yaml(project / "params" / "launch.yaml", lambda d: d.update(nproc_per_node=2))
    settings = load_settings()
    for stage, world in (("stage2", 1), ("stage3", 2)):  # rank 0 of a 1- and a 2-process job
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", str(world))
        with stage_run(f"dit_{stage}", settings, "dit.train") as run:
            run.log_metrics({"steps": 5})
    rows = logged_rows(settings, ["stage1", "stage2", "stage3"])
    assert [(r.stage, r.cp, r.devices) for r in rows] == [("stage2", 1, 1), ("stage3", 2, 2)]
    assert "| stage3 |  | 2 | 5 | 2 CPU | 0.00 |" in format_table(rows)


def test_cli_forecasts_the_paper_recipe(capsys):
    from osora.cli import main

    assert main(["cost", "--forecast", str(REPO / "bench" / "throughput_table5.yaml"),
                 "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    assert "| stage3 | 5,000,000 | 4 | 13,000 | 192 |" in out and "| total |" in out
