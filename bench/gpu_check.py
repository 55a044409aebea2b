"""The prepared GPU check (run through bench/gpu_check.sh): on one CUDA machine, within 8
minutes, one JSON with

- kernel_tests: the repo's gpu-marked tests (the Triton kernels against their torch
  references), when pytest imports; skipped with the reason where it does not (pytest is no
  dependency of torch);
- dit_step_1gpu / dit_step_all_gpus: bench/gpu_dit_step.py, a tiny MMDiT trained by osora's
  loop under torchrun on NCCL, on one GPU and, where there are several, on all of them with
  context parallel 2;
- train_<frames>f: bench/bench_mmdit.py train at paper width (depth 4 double + 8 single), bf16,
  tokens/s and MFU at the 256px buckets, each with the paper profile's stage-1 batch size;
- sample_256px: bench/bench_mmdit.py sample, the whole 11B, 50 steps, 129 frames at 256px.

Each part runs in its own process with a time cap, cut to what the overall deadline leaves;
a part that fails is recorded with its output's tail and the others still run. Exit status 0
when no part failed, 1 when one did, 2 without CUDA. Needs torch and triton; the model parts
need einops (osora.models' one dependency beyond torch) and are skipped with the reason
without it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 450  # all parts together: 7.5 of the 8 minutes, the rest for start-up and margin
MIN_PART_S = 20  # a part with less time left is skipped rather than started
OUTPUT_TAIL = 3000  # characters of a failed part's output kept in the JSON
# (frames, latent frames, batch) of the 256px 1:1 buckets (latent 32 × 32, patch 2: 256 tokens
# a latent frame) at the top of each range of params/profiles/paper/buckets.yaml stage1
TRAIN_BUCKETS = ((33, 9, 12), (65, 17, 6), (97, 25, 4), (129, 33, 3))


@dataclass(frozen=True)
class Part:
    name: str
    argv: list[str]
    cap_s: float  # its own limit; the deadline may leave less
    needs: tuple[str, ...] = ()  # modules it imports beyond torch
    result_line: bool = True  # its last stdout line is a JSON result


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda else [],
        **{name: _version(name) for name in ("triton", "einops", "pytest")},
    }


def _version(module: str) -> str | None:
    """The installed version of `module`, None when it does not import."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def gpu_test_files() -> list[str]:
    """The test files that hold gpu-marked tests (pytest.mark.gpu)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text())


def parts(gpus: int, workdir: Path) -> list[Part]:
    python, bench = sys.executable, str(REPO / "bench" / "bench_mmdit.py")

    def dit_step(name: str, ranks: int, cp: int) -> Part:
        return Part(name, [python, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={ranks}", str(REPO / "bench" / "gpu_dit_step.py"),
                           "--checkpoints", str(workdir / name), "--cp", str(cp)],
                    90, ("einops",))

    found = [Part("kernel_tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "-m", "gpu", *gpu_test_files()], 150, ("pytest", "triton"),
                  result_line=False),
             dit_step("dit_step_1gpu", 1, 1)]
    if gpus > 1:
        found.append(dit_step("dit_step_all_gpus", gpus, 2 if gpus % 2 == 0 else 1))
    found += [Part(f"train_{frames}f", [python, bench, "train", "--device", "cuda",
                                        "--latent", str(t), "32", "32", "--batch", str(batch)],
                   60, ("einops",))
              for frames, t, batch in TRAIN_BUCKETS]
    found.append(Part("sample_256px", [python, bench, "sample", "--device", "cuda",
                                       "--latent", "33", "32", "32", "--steps", "50"],
                      180, ("einops",)))
    return found


def run_part(part: Part, seconds_left: float, env: dict) -> dict:
    missing = [m for m in part.needs if importlib.util.find_spec(m) is None]
    if missing:
        return {"status": "skipped", "reason": f"{', '.join(missing)} not installed "
                f"(pip install {' '.join(missing)}, or copy the wheels over)"}
    if seconds_left < MIN_PART_S:
        return {"status": "skipped", "reason": f"{seconds_left:.0f} s of the {DEADLINE_S} s "
                "deadline left"}
    limit = min(part.cap_s, seconds_left)
    start = time.perf_counter()
    # its own session, so a timeout kills torchrun's ranks with it and frees the GPU
    with subprocess.Popen(part.argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return {"status": "timeout", "limit_s": round(limit),
                    "output_tail": (out + err)[-OUTPUT_TAIL:]}
    report = {"status": "passed" if proc.returncode == 0 else "failed",
              "seconds": round(time.perf_counter() - start, 1)}
    lines = out.strip().splitlines()
    if proc.returncode == 0 and lines:
        report["result"] = json.loads(lines[-1]) if part.result_line else lines[-1]
    else:
        report["output_tail"] = (out + err)[-OUTPUT_TAIL:]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write")
    args = parser.parse_args()
    report: dict = {"env": environment(), "parts": {}}
    if not report["env"]["cuda_available"]:
        report["error"] = "no CUDA device: torch.cuda.is_available() is False"
        _write(args.out, report)
        print(f"gpu_check: {report['error']}; run it on a GPU machine ({args.out})",
              file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as workdir:
        for part in parts(len(report["env"]["devices"]), Path(workdir)):
            left = DEADLINE_S - (time.perf_counter() - start)
            report["parts"][part.name] = result = run_part(part, left, env)
            print(f"gpu_check: {part.name}: {result['status']}", file=sys.stderr, flush=True)
            _write(args.out, report)  # what has run so far survives a kill
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = not any(r["status"] in ("failed", "timeout")
                           for r in report["parts"].values())
    _write(args.out, report)
    print(f"gpu_check: {'ok' if report['ok'] else 'FAILED'} in {report['seconds']} s; "
          f"{args.out}", file=sys.stderr)
    return 0 if report["ok"] else 1


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
