"""`python -m osora.launch`: the torchrun command params/launch.yaml declares, and a real launch
of 2 processes from a project's params."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from osora.config import ConfigError, load_settings
from osora.launch import LAUNCH_ENV, process_group_backend, torchrun_argv

REPO = Path(__file__).resolve().parents[1]
TINY = load_settings(params_dir=REPO / "params").launch


def launch(**changes):
    return TINY.model_copy(update=changes)


def test_one_node_is_standalone_with_the_declared_ranks_and_restarts():
    argv = torchrun_argv(launch(nproc_per_node=2, max_restarts=3), "pipelines/dit_train.py",
                         ["--stage", "stage1"], python="py")
    assert argv == ["py", "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
                    "2", "--max-restarts", "3", "--standalone", "pipelines/dit_train.py",
                    "--stage", "stage1"]


def test_several_nodes_meet_at_the_rendezvous_endpoint():
    argv = torchrun_argv(launch(nodes=4, nproc_per_node=8, rdzv_endpoint="node001:29500",
                                rdzv_id="job7"), "s.py", [], python="py")
    assert argv == ["py", "-m", "torch.distributed.run", "--nnodes", "4", "--nproc-per-node",
                    "8", "--max-restarts", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                    "node001:29500", "--rdzv-id", "job7", "s.py"]
    srun = torchrun_argv(launch(nodes=4, rdzv_endpoint="node001:29500", node_launcher="srun"),
                         "s.py", [], python="py")
    assert srun[:4] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert srun[4:] == torchrun_argv(launch(nodes=4, rdzv_endpoint="node001:29500"), "s.py",
                                     [], python="py")
    # one node never goes through srun: `dvc repro` on a workstation
    assert torchrun_argv(launch(node_launcher="srun"), "s.py", [], python="py")[0] == "py"


def test_one_process_never_restarted_runs_the_script_itself():
    assert torchrun_argv(launch(), "s.py", ["--x"], python="py") == ["py", "s.py", "--x"]
    restarted = torchrun_argv(launch(max_restarts=1), "s.py", [], python="py")
    assert restarted[1:3] == ["-m", "torch.distributed.run"]


def test_several_nodes_without_an_endpoint_name_the_key_and_the_variable():
    with pytest.raises(ValueError, match=r"nodes = 2 needs rdzv_endpoint.*"
                                         r"OSORA_LAUNCH__RDZV_ENDPOINT=node001:29500"):
        torchrun_argv(launch(nodes=2), "s.py", [])


def test_the_endpoint_must_be_host_and_port(tmp_path):
    params = shutil.copytree(REPO / "params", tmp_path / "params")
    text = (params / "launch.yaml").read_text()
    (params / "launch.yaml").write_text(text.replace("rdzv_endpoint: null",
                                                     "rdzv_endpoint: node001"))
    with pytest.raises(ConfigError, match=r"launch.yaml: rdzv_endpoint = 'node001': .*host:port"):
        load_settings(params_dir=params)


def test_backend_follows_the_stage_device_unless_set():
    assert process_group_backend(launch(backend="auto"), "cuda") == "nccl"
    assert process_group_backend(launch(backend="auto"), "cpu") == "gloo"
    assert process_group_backend(launch(backend="gloo"), "cuda") == "gloo"
    with pytest.raises(ValueError, match="nccl needs a CUDA stage.*backend: auto or gloo"):
        process_group_backend(launch(backend="nccl"), "cpu")


def test_profiles_launch_one_cpu_process_or_eight_gpus_per_node():
    assert (TINY.nodes, TINY.nproc_per_node, TINY.backend) == (1, 1, "auto")
    paper = load_settings("paper", params_dir=REPO / "params").launch
    assert (paper.nodes, paper.nproc_per_node, paper.max_restarts) == (1, 8, 3)


# What each rank of the launched script sees, written to <out>/rank<RANK>.json.
RANK_SCRIPT = """
import json, os, sys
keys = ("RANK", "WORLD_SIZE", "GROUP_WORLD_SIZE", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE")
out = os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".json")
json.dump({"env": {k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:]}, open(out, "w"))
"""


def test_the_launcher_starts_the_declared_ranks_from_the_projects_params(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(REPO / "params", project / "params")
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    path = project / "params" / "launch.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "nproc_per_node": 2}))
    (project / "ranks.py").write_text(RANK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSORA_", "DVC_"))}
    done = subprocess.run([sys.executable, "-m", "osora.launch", "ranks.py", str(tmp_path),
                           "--flag"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.distributed.run --nnodes 1 --nproc-per-node 2" in done.stderr
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, got in enumerate(seen):
        assert got["argv"] == [str(tmp_path), "--flag"]
        assert got["env"] == {"RANK": str(rank), "WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1",
                              **LAUNCH_ENV}
