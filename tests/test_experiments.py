"""DVC experiments in MLflow, by real `dvc exp run`s of the first data stages on a small demo
set: every stage run is tagged with its experiment's name and baseline revision, logs the table
versions it read as MLflow datasets and the metrics `dvc exp show` shows, and `osora report
--experiment` picks an experiment's runs; two queued experiments running at once share the
store and each reads exactly the versions it wrote, as two stages publishing one table at once
each get a version of their own rows."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from dvc_project import BIN, copy_project, sh

from osora.schemas import schema_of
from osora.store import Store

# One clean video and the twelve defective ones, no training grid: synth → ingest →
# preprocess take ~50 s on 2 cores.
SMALL = ("-S", "params/data.yaml:synth.num_clean=1", "-S", "params/data.yaml:synth.grid.count=0")
STAGES = {"synth", "ingest", "preprocess"}


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The project as a new git repository (tests/dvc_project.py) after `dvc exp run -n small`
    of the small set, which made the tables (as a first `dvc repro` does); queue workers
    stopped at the end."""
    dest = copy_project(tmp_path_factory.mktemp("exps"))
    sh("dvc", "exp", "run", "-n", "small", *SMALL, "preprocess", cwd=dest)
    yield dest
    subprocess.run([str(BIN / "dvc"), "queue", "stop"], cwd=dest, capture_output=True)


def mlflow_client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")


def runs_of(project: Path, dvc_exp: str) -> dict:
    """The runs of a DVC experiment by stage (each stage ran once)."""
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("osora")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`dvc.exp_name` = '{dvc_exp}'")
    by_stage = {r.data.tags["osora.stage"]: r for r in runs}
    assert len(by_stage) == len(runs), [r.data.tags["osora.stage"] for r in runs]
    return by_stage


def shown_metrics(project: Path, dvc_exp: str, metrics_file: str) -> dict:
    """An experiment's metrics file as `dvc exp show --json` shows it."""
    done = subprocess.run([str(BIN / "dvc"), "exp", "show", "--json"], cwd=project,
                          capture_output=True, text=True, check=True)
    for baseline in json.loads(done.stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                if rev["name"] == dvc_exp:
                    return rev["data"]["metrics"][metrics_file]["data"]
    raise AssertionError(f"{dvc_exp} not in `dvc exp show`:\n{done.stdout}")


@pytest.mark.slow
def test_an_experiments_runs_carry_its_name_revision_inputs_and_metrics(clone):
    baseline = sh("git", "rev-parse", "HEAD", cwd=clone).strip()
    runs = runs_of(clone, "small")
    assert set(runs) == STAGES
    for run in runs.values():
        tags = run.data.tags
        assert tags["dvc.baseline"] == baseline
        assert tags["git.commit"] == tags["mlflow.source.git.commit"] == baseline
        assert tags["git.dirty"] == "True"  # -S edited params/data.yaml

    # preprocess read the videos version ingest wrote, as a dataset.
    (read,) = runs["preprocess"].inputs.dataset_inputs
    version = int(runs["ingest"].data.tags["lance.output.videos.version"])
    assert read.dataset.name == f"videos@{version}"
    assert json.loads(read.dataset.source) == {"uri": str(clone / "store" / "videos.lance"),
                                               "version": version}

    experiment = mlflow_client(clone).get_experiment_by_name("osora")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # MLflow holds the metrics `dvc exp show` shows.
    for stage in ("synth", "preprocess"):
        shown = shown_metrics(clone, "small", f"metrics/{stage}.json")
        logged = runs[stage].data.metrics
        assert shown and {k: logged[k] for k in shown} == pytest.approx(shown), stage


def wait_for_queue(project: Path, timeout_s: float) -> str:
    """`dvc queue status` once no experiment is queued or running."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = sh("dvc", "queue", "status", cwd=project)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(5)


@pytest.mark.slow
def test_queued_experiments_run_at_once_and_each_reads_what_it_wrote(clone):
    for name, seed in (("seed-1", 1), ("seed-2", 2)):
        sh("dvc", "exp", "run", "--queue", "-n", name, *SMALL, "-S",
           f"params/data.yaml:synth.seed={seed}", "preprocess", cwd=clone)
    sh("dvc", "queue", "start", "-j", "2", cwd=clone)
    status = wait_for_queue(clone, timeout_s=900)
    assert status.count("Success") == 2, status + sh("dvc", "queue", "logs", "seed-1",
                                                     cwd=clone)

    runs = {name: runs_of(clone, name) for name in ("seed-1", "seed-2")}
    assert all(set(r) == STAGES for r in runs.values())
    spans = [(min(r.info.start_time for r in exp.values()),
              max(r.info.end_time for r in exp.values())) for exp in runs.values()]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # they ran at once

    # Each experiment's preprocess read the videos version its own ingest wrote; the versions
    # differ (other seeds, other videos), and every version of both tables reads back whole.
    store = Store(str(clone / "store"))
    pinned = {}
    for name, exp in runs.items():
        wrote = int(exp["ingest"].data.tags["lance.output.videos.version"])
        (read,) = exp["preprocess"].inputs.dataset_inputs
        assert read.dataset.name == f"videos@{wrote}"
        verdicts = int(exp["preprocess"].data.tags["lance.output.preprocess.version"])
        videos = set(store.read("videos", version=wrote).column("id").to_pylist())
        judged = set(store.read("preprocess", version=verdicts).column("id").to_pylist())
        assert len(videos) == 13 and judged == videos, name
        pinned[name] = videos
    assert not pinned["seed-1"] & pinned["seed-2"]
    for table in ("videos", "preprocess"):
        for v in store.versions(table):
            store.read(table, version=v["version"])

    # The report of one experiment holds its runs only.
    out = clone / "reports" / "seed-1.md"
    sh(str(BIN / "osora"), "report", "--experiment", "seed-1", "--out", str(out), cwd=clone)
    text = out.read_text()
    assert all(r.info.run_id[:8] in text for r in runs["seed-1"].values())
    assert not any(r.info.run_id[:8] in text for r in runs["seed-2"].values())


# A stage's publish step (osora.data.stage.publish) outside any lease: once told to go,
# `syncs` times, sync the `videos` table to this writer's own rows and print the version;
# the clock before the first and after the last.
PUBLISHER = """
import json, sys, time
import pyarrow as pa
from osora.schemas import schema_of
from osora.store import Store
spec = json.loads(sys.stdin.readline())
store = Store(spec["uri"], spec["storage_options"])
print("ready", flush=True)
sys.stdin.readline()
print(time.time(), flush=True)
for i in range(spec["syncs"]):
    rows = [{"id": f"{spec['who']}-{i}-{k}", "uri": f"/{spec['who']}/{k}.mp4"} for k in range(8)]
    table = pa.Table.from_pylist(rows, schema=schema_of("videos"))
    print(store.sync("videos", table, key="id", update_matched=True), flush=True)
print(time.time(), flush=True)
"""


@pytest.mark.parametrize("table_exists", [True, False])
def test_two_stages_publishing_one_table_at_once_never_mix_their_rows(store, table_exists):
    """Queued experiments hold a stage's lease while they work, but publish its table after
    (osora/data/stage.py publish). Lance commits each sync as one version, retrying against
    the newer one on a conflict: every version holds one writer's rows, and each writer's
    version reads back exactly what it wrote; on a local folder and on S3 (moto). Whether the
    table exists already (after a first `dvc repro`) or the two writers are its first: the one
    that loses the race to create it merges into the winner's (Store.sync)."""
    if table_exists:
        store.sync("videos", pa.Table.from_pylist([{"id": "first", "uri": "/first.mp4"}],
                                                  schema=schema_of("videos")), key="id")
    spec = {"uri": store.root, "storage_options": store.storage_options, "syncs": 30}
    writers = {}
    for who in ("a", "b"):
        writers[who] = subprocess.Popen([sys.executable, "-c", PUBLISHER], text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        # the credentials go through stdin, never on a command line
        writers[who].stdin.write(json.dumps({**spec, "who": who}) + "\n")
        writers[who].stdin.flush()
    assert all(child.stdout.readline() == "ready\n" for child in writers.values())
    for child in writers.values():
        child.stdin.write("go\n")
        child.stdin.close()
    got, spans = {}, {}
    for who, child in writers.items():
        start, *versions, end = child.stdout.read().split()
        got[who], spans[who] = [int(v) for v in versions], (float(start), float(end))
        assert child.wait(timeout=300) == 0
    assert spans["a"][0] < spans["b"][1] and spans["b"][0] < spans["a"][1]  # at once
    assert len(set(got["a"] + got["b"])) == 60  # one version per sync, none lost
    for who, versions in got.items():
        for i, v in enumerate(versions):
            ids = sorted(store.read("videos", version=v).column("id").to_pylist())
            assert ids == sorted(f"{who}-{i}-{k}" for k in range(8)), (who, i, v)
