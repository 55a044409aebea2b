"""MLflow stage runs: params, tags, lineage and cost, read back through MlflowClient."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from osora.config import load_settings
from osora.lineage import read_receipt
from osora.tracking import stage_run, tracking_uri

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A throwaway project (params/ + dvc.yaml) as cwd, so MLflow and the store live in it."""
    shutil.copytree(REPO / "params", tmp_path / "params")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def client_for(settings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri(settings))


def only_run(settings):
    client = client_for(settings)
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_default_store_is_the_checkouts_sqlite_by_absolute_uri(project, monkeypatch):
    settings = load_settings()
    assert tracking_uri(settings) == f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"
    # Inside a DVC temp experiment (cwd a copy), DVC_ROOT points back to the main checkout.
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc"
    shutil.copytree(project / "params", copy / "params")
    shutil.copy(project / "dvc.yaml", copy / "dvc.yaml")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert tracking_uri(load_settings()) == f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"


def test_stage_run_logs_params_tags_metrics_and_cost(project, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "synth")
    monkeypatch.setenv("OSORA_STORE__S3__SECRET_ACCESS_KEY", "hunter2-secret")
    settings = load_settings()
    with stage_run("synth", settings, "data.synth") as run:
        run.log_metrics({"videos": 17})
        (project / "note.txt").write_text("hello")
        run.log_artifact(project / "note.txt")

    client, logged = only_run(settings)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["data.synth.seed"] == str(settings.data.synth.seed)
    assert logged.data.params["data.synth.crf"] == str(settings.data.synth.crf)
    assert logged.data.tags["dvc.stage"] == "synth"
    assert logged.data.tags["git.commit"] == "unknown"  # the throwaway project is no git repo
    assert logged.data.metrics["videos"] == 17
    m = logged.data.metrics
    assert m["cost.wall_seconds"] > 0
    assert m["cost.gpu_hours"] == 0.0
    assert m["cost.cpu_hours"] == pytest.approx(m["cost.wall_seconds"] / 3600 * m["cost.cpu_cores"])
    assert m["cost.usd"] == pytest.approx(m["cost.cpu_hours"] * settings.cost.cpu_core_hour_usd)
    assert logged.data.params["cost.device_kind"] == "cpu"
    assert [a.path for a in client.list_artifacts(logged.info.run_id)] == ["note.txt"]
    everything = str(logged.data.params) + str(logged.data.tags)
    assert "hunter2-secret" not in everything


def test_failed_stage_still_logs_its_cost(project):
    settings = load_settings()
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run("synth", settings, "data.synth"):
            raise RuntimeError("boom")
    _, logged = only_run(settings)
    assert logged.info.status == "FAILED"
    assert logged.data.metrics["cost.wall_seconds"] > 0


def test_output_tables_are_tagged_and_recorded_as_lineage(project):
    from osora.schemas import schema_of
    from osora.store import Store

    settings = load_settings()
    store = Store.from_settings(settings.store)
    rows = pa.Table.from_pylist([{"id": "a" * 32, "uri": "/x.mp4"}], schema=schema_of("videos"))
    with stage_run("ingest", settings, "data.ingest") as run:
        version = store.sync("videos", rows, key="id")
        ref = run.log_output(store, "videos", version)
        run.write_receipt(project / "lineage" / "ingest.json")

    with stage_run("consumer", settings, "data.ingest") as run:
        run.log_input(read_receipt(project / "lineage" / "ingest.json")["videos"])

    client = client_for(settings)
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    logged, consumer = runs["ingest"], runs["consumer"]
    assert consumer.data.tags["lance.input.videos.version"] == str(version)
    assert consumer.data.tags["lance.input.videos.uri"] == store.table_uri("videos")
    assert store.tags("videos")[ref.tag] == version
    assert ref.tag == f"ingest-{logged.info.run_id}"
    assert logged.data.tags["lance.output.videos.version"] == str(version)
    assert read_receipt(project / "lineage" / "ingest.json") == {"videos": ref}
    assert store.read("videos", version=ref.tag).num_rows == 1


def test_a_rerun_that_changes_nothing_writes_the_same_receipt(project):
    from osora.schemas import schema_of
    from osora.store import Store

    settings = load_settings()
    store = Store.from_settings(settings.store)
    rows = pa.Table.from_pylist([{"id": "a" * 32, "uri": "/x.mp4"}], schema=schema_of("videos"))
    receipts = []
    for _ in range(2):
        with stage_run("ingest", settings, "data.ingest") as run:
            run.log_output(store, "videos", store.sync("videos", rows, key="id"))
            run.write_receipt(project / "r.json")
        receipts.append((project / "r.json").read_bytes())
    assert receipts[0] == receipts[1]
    assert len(store.tags("videos")) == 1


def test_training_events_become_metrics_and_an_events_artifact(project):
    settings = load_settings()
    events = [{"kind": "nan", "step": 7, "detail": "loss is nan"},
              {"kind": "restored", "step": 7, "detail": "from the checkpoint of step 6"}]
    with stage_run("dit_stage1", settings, "dit.train") as run:
        for event in events:
            run.log_event(event)
    client, logged = only_run(settings)
    assert logged.data.metrics["event/nan"] == 1.0
    history = client.get_metric_history(logged.info.run_id, "event/restored")
    assert [(m.step, m.value) for m in history] == [(7, 1.0)]
    path = client.download_artifacts(logged.info.run_id, "events.json", str(project))
    assert json.loads(Path(path).read_text()) == {"events": events}


def test_torchtitan_metric_names_are_made_valid_for_mlflow():
    from osora.tracking import mlflow_metric_name

    assert mlflow_metric_name("mfu(%)") == "mfu_pct"
    assert mlflow_metric_name("throughput(tps)") == "throughput_tps"
    assert mlflow_metric_name("memory/max_reserved(GiB)") == "memory/max_reserved_GiB"
    assert mlflow_metric_name("time_metrics/data_loading(%)") == "time_metrics/data_loading_pct"
    assert mlflow_metric_name("dit/loss") == "dit/loss"


def test_logging_torchtitan_names_reaches_mlflow(project):
    settings = load_settings()
    with stage_run("dit_stage1", settings, "dit.train") as run:
        run.log_metrics({"mfu(%)": 40.0, "throughput(tps)": 1e4}, step=3)
    _, logged = only_run(settings)
    assert logged.data.metrics["mfu_pct"] == 40.0 and logged.data.metrics["throughput_tps"] == 1e4
