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
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV",
                "RANK", "WORLD_SIZE", "GROUP_WORLD_SIZE"):  # a process on its own
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
    assert "dvc.exp_name" not in logged.data.tags  # not under `dvc exp run`
    assert logged.data.metrics["videos"] == 17
    m = logged.data.metrics
    assert m["cost.wall_seconds"] > 0
    assert m["cost.gpu_hours"] == 0.0
    assert m["cost.cpu_hours"] == pytest.approx(m["cost.wall_seconds"] / 3600 * m["cost.cpu_cores"])
    assert m["cost.usd"] == pytest.approx(m["cost.cpu_hours"] * settings.cost.cpu_core_hour_usd)
    assert logged.data.params["cost.device_kind"] == "cpu"
    assert logged.data.params["parallel.world_size"] == "1"
    assert [a.path for a in client.list_artifacts(logged.info.run_id)] == ["note.txt"]
    everything = str(logged.data.params) + str(logged.data.tags)
    assert "hunter2-secret" not in everything


def test_dvc_experiment_variables_become_tags(project, monkeypatch):
    """What `dvc exp run` sets for a stage's command (tests/test_experiments.py runs a real
    one)."""
    monkeypatch.setenv("DVC_EXP_NAME", "pawky-bags")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "c0ffee" * 6 + "abcd")
    settings = load_settings()
    with stage_run("synth", settings, "data.synth"):
        pass
    _, logged = only_run(settings)
    assert logged.data.tags["dvc.exp_name"] == "pawky-bags"
    assert logged.data.tags["dvc.baseline"] == "c0ffee" * 6 + "abcd"


def test_the_experiment_is_marked_as_model_training_unless_it_has_a_kind(project, monkeypatch):
    """MLflow 3 experiments of kind GenAI open on traces; osora's are model training. An
    experiment made before (no kind) gets the kind; a kind chosen in the UI stays."""
    from osora.tracking import EXPERIMENT_KIND

    key, _ = EXPERIMENT_KIND
    client = client_for(load_settings())
    client.create_experiment("older", artifact_location=(project / "a").as_uri())
    client.create_experiment("chosen", artifact_location=(project / "b").as_uri(),
                             tags={key: "genai_development"})
    kinds = {}
    for name in ("new", "older", "chosen"):
        monkeypatch.setenv("OSORA_TRACKING__EXPERIMENT", name)
        with stage_run("synth", load_settings(), "data.synth"):
            pass
        kinds[name] = client.get_experiment_by_name(name).tags.get(key)
    assert kinds == {"new": "custom_model_development", "older": "custom_model_development",
                     "chosen": "genai_development"}


def test_no_credentials_reach_mlflow_from_an_s3_store(project, s3_server):
    """The S3 store's keys live in its settings, never in a URI MLflow records; a URI that
    carries a user and password loses them."""
    from osora.lineage import TableRef
    from osora.schemas import schema_of
    from osora.store import Store
    from osora.tracking import public_uri

    store = Store.from_settings(s3_server.store_settings("tracking"))
    rows = pa.Table.from_pylist([{"id": "a" * 32, "uri": "/x.mp4"}], schema=schema_of("videos"))
    ref = TableRef("videos", store.table_uri("videos"), store.sync("videos", rows, key="id"))
    settings = load_settings()
    with stage_run("preprocess", settings, "data.preprocess") as run:
        run.log_input(ref)
    _, logged = only_run(settings)
    (read,) = logged.inputs.dataset_inputs
    source = json.loads(read.dataset.source)
    assert source["uri"] == f"s3://{s3_server.bucket}/tracking/videos.lance"
    recorded = str(logged.data.params) + str(logged.data.tags) + str(logged.inputs)
    assert s3_server.secret_access_key not in recorded
    assert s3_server.access_key_id not in recorded
    assert public_uri("s3://KEY:SECRET@bucket/p/videos.lance") == "s3://bucket/p/videos.lance"
    assert public_uri("/data/store/videos.lance") == "/data/store/videos.lance"


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

    # The input is an MLflow dataset too: the UI's Dataset column, a filter, a loadable source.
    (read,) = consumer.inputs.dataset_inputs
    assert read.dataset.name == f"videos@{version}"
    assert read.dataset.source_type == "lance"
    assert json.loads(read.dataset.source) == {"uri": store.table_uri("videos"),
                                               "version": version}
    assert len(read.dataset.digest) == 8
    assert {t.key: t.value for t in read.tags} == {"mlflow.data.context": "input"}
    assert logged.inputs.dataset_inputs == []  # ingest reads files, not tables
    found = client.search_runs([experiment.experiment_id],
                               filter_string=f"dataset.name = 'videos@{version}'")
    assert [r.info.run_id for r in found] == [consumer.info.run_id]
    import mlflow.data

    assert mlflow.data.get_source(read).load().count_rows() == 1


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


def as_torchrun_rank(monkeypatch, rank: int, world_size: int, nodes: int) -> None:
    """This process as one rank of a torchrun job: the variables torchrun gives each rank."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("GROUP_WORLD_SIZE", str(nodes))


def test_only_rank_0_of_a_job_opens_the_run_and_it_records_the_jobs_size(project, monkeypatch,
                                                                         capsys):
    import os

    from osora.lineage import TableRef, write_receipt
    from osora.schemas import schema_of
    from osora.store import Store

    settings = load_settings()
    store = Store.from_settings(settings.store)
    rows = pa.Table.from_pylist([{"id": "a" * 32, "uri": "/x.mp4"}], schema=schema_of("videos"))
    version = store.sync("videos", rows, key="id")
    receipt = project / "lineage" / "ingest.json"
    write_receipt(receipt, stage="ingest",
                  outputs=[TableRef("videos", store.table_uri("videos"), version)])

    as_torchrun_rank(monkeypatch, rank=1, world_size=4, nodes=2)
    with stage_run("dit_stage1", settings, "dit.train") as run:
        assert run.read_input(store, receipt, "videos").num_rows == 1  # every rank reads
        run.log_metrics({"dit/loss": 1.0}, step=1)
        run.log_event({"kind": "slow", "step": 3, "detail": "step took 2.5 s"})
        with pytest.raises(RuntimeError, match="rank 1 recorded the output table videos"):
            run.log_output(store, "videos", version)
    assert not (project / "mlflow").exists()  # no run, not even the sqlite file
    assert "dit_stage1 rank 1: slow at step 3: step took 2.5 s" in capsys.readouterr().err

    as_torchrun_rank(monkeypatch, rank=0, world_size=4, nodes=2)
    with stage_run("dit_stage1", settings, "dit.train") as run:
        run.read_input(store, receipt, "videos")
    _, logged = only_run(settings)
    assert logged.data.params["parallel.world_size"] == "4"
    assert logged.data.params["parallel.nodes"] == "2"
    assert logged.data.tags["lance.input.videos.version"] == str(version)
    m = logged.data.metrics
    assert m["cost.cpu_cores"] == 2 * len(os.sched_getaffinity(0))  # both nodes' cores
    assert m["cost.device_count"] == 0 and m["cost.gpu_hours"] == 0.0


# A stage that holds its run open until a signal ends it.
WAITING_STAGE = """
import time
from osora.config import load_settings
from osora.tracking import stage_run
with stage_run("dit_stage1", load_settings(), "dit.train"):
    print("open", flush=True)
    time.sleep(120)
"""


def test_a_stage_stopped_by_sigterm_ends_failed_with_its_cost(project):
    """torchrun stops the surviving ranks with SIGTERM when one fails: rank 0's run must not
    stay RUNNING without a cost."""
    import signal
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", WAITING_STAGE], cwd=project,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "open\n"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 128 + signal.SIGTERM
    _, logged = only_run(load_settings())
    assert logged.info.status == "FAILED"
    assert logged.data.metrics["cost.wall_seconds"] > 0
