"""The prepared GPU check (bench/gpu_check.sh) on a machine without a GPU: its shell syntax, a
clear stop without CUDA from the script and from each Python part it runs, the parts it plans
for one and for eight GPUs, and how a part's outcome is recorded: a JSON result, a failure's
output, a missing module, and a part past its limit killed with the processes it started."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine without CUDA")


@pytest.fixture(scope="module")
def gpu_check():
    """bench/gpu_check.py as a module (bench/ is no package; dataclasses need it registered)."""
    name = "bench_gpu_check"
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "gpu_check.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]


def test_the_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@no_cuda
def test_without_cuda_the_check_stops_at_once_writing_why(tmp_path):
    out = tmp_path / "out" / "gpu_check.json"
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(out)],
                          cwd=tmp_path, env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "gpu_check: no CUDA device: torch.cuda.is_available() is False" in done.stderr
    report = json.loads(out.read_text())
    assert report["parts"] == {} and report["error"].startswith("no CUDA device")
    assert report["env"]["torch"] == torch.__version__ and report["env"]["devices"] == []


@no_cuda
@pytest.mark.parametrize("argv, message", [
    (["bench/gpu_dit_step.py", "--checkpoints", "ckpt"],
     "gpu_dit_step: no CUDA device (torch.cuda.is_available() is False)"),
    (["bench/bench_mmdit.py", "train", "--device", "cuda"],
     "bench_mmdit: --device cuda but there is no CUDA device"),
    (["bench/bench_mmdit.py", "sample", "--device", "cuda"],
     "bench_mmdit: --device cuda but there is no CUDA device"),
])
def test_each_python_part_stops_without_cuda_saying_why(argv, message, tmp_path):
    done = subprocess.run([sys.executable, *(str(REPO / argv[0]), *argv[1:])], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_parts_for_one_and_for_eight_gpus(gpu_check, tmp_path):
    one = {p.name: p for p in gpu_check.parts(1, tmp_path)}
    assert list(one) == ["kernel_tests", "dit_step_1gpu", "train_33f", "train_65f", "train_97f",
                         "train_129f", "sample_256px"]
    assert "tests/kernels/test_cuda.py" in one["kernel_tests"].argv  # its tests are gpu-marked
    assert one["train_129f"].argv[-6:] == ["--latent", "33", "32", "32", "--batch", "3"]
    eight = {p.name: p for p in gpu_check.parts(8, tmp_path)}
    argv = eight["dit_step_all_gpus"].argv
    assert "--nproc-per-node=8" in argv and argv[-2:] == ["--cp", "2"]
    assert argv[argv.index("--checkpoints") + 1] == str(tmp_path / "dit_step_all_gpus")


def test_a_part_s_outcome_is_recorded(gpu_check):
    env = dict(os.environ)
    ok = gpu_check.Part("ok", [sys.executable, "-c", "print('warming up'); print('{\"x\": 1}')"],
                        30)
    assert gpu_check.run_part(ok, 100, env) == {"status": "passed",
                                                "seconds": pytest.approx(0, abs=30),
                                                "result": {"x": 1}}
    bad = gpu_check.Part("bad", [sys.executable, "-c", "import sys; sys.exit('it broke')"], 30)
    failed = gpu_check.run_part(bad, 100, env)
    assert failed["status"] == "failed" and "it broke" in failed["output_tail"]
    absent = gpu_check.Part("absent", [sys.executable, "-c", ""], 30, ("no_such_module_osora",))
    assert gpu_check.run_part(absent, 100, env) == {
        "status": "skipped", "reason": "no_such_module_osora not installed (pip install "
        "no_such_module_osora, or copy the wheels over)"}
    late = gpu_check.run_part(ok, gpu_check.MIN_PART_S - 1, env)
    assert late["status"] == "skipped" and "deadline left" in late["reason"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped


def test_a_part_past_its_limit_is_killed_with_the_processes_it_started(gpu_check, tmp_path):
    """As torchrun's ranks must be when torchrun times out: else they keep the GPU."""
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
              "print('started', flush=True)\n"
              "time.sleep(300)\n")
    start = time.monotonic()
    result = gpu_check.run_part(gpu_check.Part("sleeper", [sys.executable, "-c", script], 3),
                                100, dict(os.environ))
    assert time.monotonic() - start < 60
    assert result["status"] == "timeout" and result["limit_s"] == 3
    assert "started" in result["output_tail"]
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


# The GPU machines carry torch, triton and pytest, nothing of osora's pipeline extra: a gpu test
# file that imports more fails its collection there and with it the check's kernel_tests part.
TORCH_ONLY = """
import importlib, importlib.abc, sys
BLOCKED = {"pydantic", "pydantic_settings", "yaml", "ruamel", "lance", "pyarrow", "mlflow",
           "dvc", "torchtitan", "transformers", "diffusers", "peft", "av", "safetensors",
           "cv2", "boto3", "s3fs", "optuna", "PIL", "scipy", "skimage"}
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not on a GPU machine (torch, triton, pytest only)")
sys.meta_path.insert(0, Blocked())
path = sys.argv[1]
sys.path.insert(0, path.rsplit("/", 1)[0])
importlib.import_module(path.rsplit("/", 1)[1].removesuffix(".py"))
"""


def test_every_gpu_test_file_imports_with_torch_alone(gpu_check):
    files = gpu_check.gpu_test_files()
    assert "tests/train/test_fsdp_offload.py" in files and len(files) >= 3
    for name in files:
        run = subprocess.run([sys.executable, "-c", TORCH_ONLY, str(REPO / name)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{name}: {run.stderr[-1500:]}"
