"""The Ray backend on a Ray cluster of three nodes on 127.0.0.1 (a head and two workers, one
with a GPU, which Ray only counts): the local backend's results, the per-row time limit on Ray's
worker threads, a bug stopping the stage, and GPU requests; and which operators request GPUs."""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pyarrow as pa
import pytest
from runner_ops import Pieces, Square
from runner_ray_ops import Stalls, Where, WhereOnGpu

from osora.config import load_settings
from osora.config.data import RunnerParams
from osora.data.runner import StageFailed, WorkLog, fingerprint, run_operator
from osora.schemas import schema_of
from osora.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]


def params(**change) -> RunnerParams:
    base = dict(backend="local", workers=2, timeout_s=20, commit_every=2)
    return RunnerParams(**{**base, **change})


@pytest.fixture
def cluster(monkeypatch):
    """A head and two worker nodes of one CPU each, the second with one GPU; everything binds
    127.0.0.1 and lives in one temporary folder. Torn down after the test, checking that none
    of its processes (raylets, agents, workers) is left."""
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # Short: Ray's socket paths in it must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="osora-ray-"))
    (root / "ray").mkdir()
    monkeypatch.setenv("RAY_TMPDIR", str(root))  # Ray's files outside temp_dir (address file)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # nothing is reported anywhere
    # Ray takes the address of the route to the internet for "this node", even to connect to
    # 127.0.0.1; with its cluster mode off (its setting for laptops) it takes the loopback.
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    # The nodes' workers import what this process imports (runner_ops from tests/data).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    node = dict(node_ip_address="127.0.0.1", temp_dir=str(root / "ray"),
                object_store_memory=80 * 2**20)
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False, **node})
    started: list[psutil.Process] = []
    try:
        cpu = cluster.add_node(num_cpus=1, **node)
        gpu = cluster.add_node(num_cpus=1, num_gpus=1, **node)
        yield SimpleNamespace(address=cluster.address, cpu=cpu.node_id, gpu=gpu.node_id)
        started = ray_processes()
        assert any("raylet" in " ".join(p.cmdline()) for p in started)  # the check sees them
        addresses = listening([psutil.Process(), *started])
        assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, f"Ray processes left after the test: {[p.cmdline()[:2] for p in alive]}"


def listening(processes: list[psutil.Process]) -> set[str]:
    """The addresses these processes listen on (TCP or UDP)."""
    found = set()
    for p in processes:
        try:
            sockets = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        found |= {c.laddr.ip for c in sockets if c.status in (psutil.CONN_LISTEN, psutil.CONN_NONE)}
    return found


def ray_processes() -> list[psutil.Process]:
    """This process's descendants that belong to Ray: GCS, raylets, agents, workers (whose
    titles start with "ray::")."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            words = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if words.startswith("ray::") or f"{os.sep}ray{os.sep}" in words:
            found.append(p)
    return found


def run(op, inputs: pa.Table, store: Path, **change):
    return run_operator(op, inputs, stage="t", store=Store(str(store)), params=params(**change),
                        progress=False)


@pytest.mark.slow
def test_a_cluster_gives_the_local_result(cluster, tmp_path):
    # Square's "slow-" rows sleep in one C call, which the limit on Ray only ends when it
    # returns (a minute): test_the_time_limit_holds_on_ray_workers stalls in Python instead.
    ids = ["a", "b", "none-c", "bad-d", "e", "f", "bad-g"]
    squares = pa.table({"id": ids, "n": list(range(len(ids)))})
    pieces = pa.table({"id": ["p", "q", "r", "s"], "n": [0, 1, 2, 3]})
    for op, inputs in [(Square(), squares), (Pieces(), pieces)]:
        name = type(op).__name__
        local = run(op, inputs, tmp_path / f"local-{name}")
        on_ray = run(op, inputs, tmp_path / f"ray-{name}", backend="ray",
                     ray_address=cluster.address)
        assert on_ray.rows.sort_by("id").equals(local.rows.sort_by("id"))
        assert on_ray.quarantine.sort_by("id").equals(local.quarantine.sort_by("id"))
        assert on_ray.processed == inputs.num_rows and on_ray.resumed == 0
    assert on_ray.rows.num_rows == 0 + 1 + 2 + 3  # Pieces: n rows for input n
    import ray

    assert not ray.is_initialized()  # each run let go of the cluster it connected to
    assert local.quarantine.num_rows == 0
    # A rerun resumes everything from the work log written on Ray.
    again = run(Square(), squares, tmp_path / "ray-Square", backend="ray",
                ray_address=cluster.address)
    assert again.processed == 0 and again.resumed == len(ids)


@pytest.mark.slow
def test_the_time_limit_holds_on_ray_workers(cluster, tmp_path):
    (tmp_path / "pids").mkdir()
    op = Stalls(str(tmp_path / "pids"))
    inputs = pa.table({"id": ["a", "slow-b", "hang-c", "d"], "n": [1, 2, 3, 4]})
    start = time.monotonic()
    result = run(op, inputs, tmp_path / "store", backend="ray", ray_address=cluster.address,
                 timeout_s=2, commit_every=1)
    took = time.monotonic() - start
    reasons = dict(zip(result.quarantine.column("id").to_pylist(),
                       result.quarantine.column("reason").to_pylist()))
    assert reasons == {"slow-b": "timeout: took longer than the 2 s limit per row",
                       "hang-c": "timeout: took longer than the 2 s limit per row"}
    assert dict(zip(result.rows.column("id").to_pylist(),
                    result.rows.column("motion").to_pylist())) == {"a": 1.0, "d": 16.0}
    # The stuck child process was killed, not waited for (it sleeps two minutes).
    child = int((tmp_path / "pids" / "hang-c").read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    assert took < 50, f"the stalled rows held the stage for {took:.0f} s"


@pytest.mark.slow
def test_a_bug_stops_the_stage_on_ray(cluster, tmp_path):
    store = Store(str(tmp_path))
    inputs = pa.table({"id": ["a", "b", "boom-c", "d"], "n": [1, 2, 3, 4]})
    with pytest.raises(StageFailed, match=r"boom-c: a bug, not bad input \(ZeroDivisionError"):
        run_operator(Square(), inputs, stage="t", store=store, progress=False,
                     params=params(backend="ray", ray_address=cluster.address, workers=1,
                                   commit_every=1))
    dataset = WorkLog(store, "t", fingerprint(Square()), schema_of("score_motion"))._dataset()
    log = dataset.to_table() if dataset is not None else None
    if log is not None:  # what finished before the bug is kept; nothing for the bug's row
        assert "boom-c" not in log.column("_input").to_pylist()
        assert set(log.column("_status").to_pylist()) <= {"ok"}
    # A row that kills its actor each time is retried a bounded number of times, then the
    # stage fails (Ray's default would retry it forever).
    start = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - Ray's own error type for a dead actor
        run_operator(Square(), pa.table({"id": ["die-x"], "n": [1]}), stage="t2", store=store,
                     progress=False, params=params(backend="ray", ray_address=cluster.address,
                                                   workers=1, commit_every=1))
    assert time.monotonic() - start < 120


def records(folder: Path, prefix: str) -> list[tuple[str, str]]:
    """(node id, GPU ids) of each record Where wrote with this prefix."""
    out = []
    for path in sorted(folder.glob(f"{prefix}*")):
        node, _, gpus = path.read_text().partition(" ")
        out.append((node, gpus))
    return out


@pytest.mark.slow
def test_gpu_operators_get_a_gpu_and_others_none(cluster, tmp_path):
    inputs = pa.table({"id": [f"r{i}" for i in range(6)], "n": list(range(6))})
    on_gpu, on_cpu = tmp_path / "gpu", tmp_path / "cpu"
    on_gpu.mkdir()
    on_cpu.mkdir()
    # One GPU in the cluster, so one worker: it must be on the GPU node and hold GPU 0.
    result = run(WhereOnGpu(str(on_gpu)), inputs, tmp_path / "s1", backend="ray",
                 ray_address=cluster.address, workers=1)
    assert result.rows.num_rows == 6
    assert records(on_gpu, "setup-") == [(cluster.gpu, "0")]
    assert records(on_gpu, "row-") == [(cluster.gpu, "0")] * 6
    # A CPU operator asks for none: two workers (one CPU each) on two nodes, no GPU to see.
    result = run(Where(str(on_cpu)), inputs, tmp_path / "s2", backend="ray",
                 ray_address=cluster.address, workers=2)
    assert result.rows.num_rows == 6
    setups = records(on_cpu, "setup-")
    assert len(setups) == 2 and len({node for node, _ in setups}) == 2
    assert {gpus for _, gpus in setups + records(on_cpu, "row-")} == {""}


def test_model_operators_on_cuda_request_a_gpu(tmp_path):
    from osora.config.data import CaptionsParams
    from osora.config.store import StoreSettings
    from osora.data.captions.operator import CaptionOperator
    from osora.data.scores.aesthetic import AestheticScorer

    data = load_settings(params_dir=REPO_ROOT / "params").data
    store = StoreSettings(uri=str(tmp_path / "store"))
    weights = dict(clip_path=str(tmp_path), head_path=str(tmp_path / "head.safetensors"))
    for device, gpus in [("cuda", 1.0), ("cuda:1", 1.0), ("cpu", 0.0)]:
        aesthetic = data.scores.aesthetic.model_copy(update={**weights, "device": device})
        assert AestheticScorer(aesthetic, store).num_gpus == gpus
        captions = data.captions.model_dump()
        captions.update(backend="local")
        captions["local"].update(model_path=str(tmp_path), device=device)
        assert CaptionOperator(CaptionsParams.model_validate(captions), store).num_gpus == gpus
    # An aesthetic scorer with no weights is off and loads nothing: no GPU for it.
    off = data.scores.aesthetic.model_copy(update={"clip_path": None, "device": "cuda"})
    assert AestheticScorer(off, store).num_gpus == 0.0
    # Other backends' work is elsewhere; the fingerprint never counts the request.
    sidecar = CaptionOperator(data.captions.model_copy(update={"backend": "sidecar"}), store)
    assert sidecar.num_gpus == 0.0 and "num_gpus" not in sidecar.describe()
