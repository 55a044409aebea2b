"""VBench as an external tool: run its `vbench evaluate` in VBench's own environment (which
pins numpy<2, transformers 4.33 and decord, so it cannot share osora's), one dimension per
process, and read its result file.

The contract, from Vchitect/VBench (vbench/cli/evaluate.py, vbench/launch/evaluate.py,
vbench/__init__.py):
- `vbench evaluate --videos_path DIR --dimension D --full_json_dir SUITE --output_path OUT
  --mode vbench_standard --load_ckpt_from_local True` finds `{prompt}-{i}.mp4` in DIR for the
  prompts SUITE lists under D, and writes OUT/results_<time>_eval_results.json =
  {D: [mean score, [{"video_path": …, "video_results": score}, …]]};
- models load from VBENCH_CACHE_DIR (osora.eval.vbench_weights), downloaded when missing;
- the CLI re-launches itself through a shell with `python` from PATH and unquoted paths, and
  exits 0 even when that fails: so the executable's folder goes first on PATH, paths with shell
  characters are refused, and a run counts only when its result file exists.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from osora.eval.vbench_weights import CACHE_PATHS

RESULTS_GLOB = "*_eval_results.json"
SHELL_SAFE = re.compile(r"^[\w./@%+=:,-]+$")  # what VBench's unquoted shell command survives


class VBenchError(RuntimeError):
    """VBench ran but gave no usable result; the message names its log."""


@dataclass(frozen=True)
class DimensionResult:
    dimension: str
    score: float  # VBench's mean over the dimension's videos
    per_video: dict[str, float]  # video file name → its score


def weights_cache(weights: dict[str, str | None], dest: Path) -> Path:
    """A VBENCH_CACHE_DIR at `dest` of links to the given local weights, at the paths VBench
    reads. A given path that does not exist is an error naming its params key."""
    for name, path in weights.items():
        if not path:
            continue
        source = Path(path).expanduser().resolve()
        if not source.exists():
            raise FileNotFoundError(f"params/eval.yaml vbench.weights.{name}: {path} does not "
                                    "exist; give the local file (VBench's own download) or null")
        link = dest / CACHE_PATHS[name]
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def _shell_safe(path: Path, what: str) -> str:
    text = str(Path(path).resolve())
    if not SHELL_SAFE.match(text):
        raise ValueError(f"VBench {what} {text!r}: VBench's CLI passes paths to a shell "
                         "unquoted; use a path of letters, digits and ./_-@%+=:, only")
    return text


def run_dimension(executable: str, dimension: str, *, videos: Path, suite: Path, out: Path,
                  cache: Path, timeout_s: float) -> DimensionResult:
    """Evaluate one dimension with VBench; its output and log (vbench.log) stay in `out`."""
    exe = Path(executable).expanduser()
    if not exe.is_file() or not os.access(exe, os.X_OK):
        raise FileNotFoundError(f"params/eval.yaml vbench.executable {executable}: not an "
                                "executable file; give VBench's console script in its own "
                                "environment, e.g. /opt/vbench/.venv/bin/vbench")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(exe), "evaluate", "--videos_path", _shell_safe(videos, "videos folder"),
           "--dimension", dimension, "--full_json_dir", _shell_safe(suite, "suite file"),
           "--output_path", _shell_safe(out, "output folder"), "--mode", "vbench_standard",
           "--load_ckpt_from_local", "True"]
    env = {**os.environ, "VBENCH_CACHE_DIR": str(cache.resolve()),
           "PATH": f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = out / "vbench.log"
    with open(log, "w") as sink:
        try:
            code = subprocess.run(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                  timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            raise VBenchError(f"VBench {dimension}: no result within {timeout_s:g} s "
                              f"(params/eval.yaml vbench.timeout_s); see {log}") from None
    if code != 0:
        raise VBenchError(f"VBench {dimension} exited with {code}; see {log}")
    return read_result(out, dimension, log)


def read_result(out: Path, dimension: str, log: Path | None = None) -> DimensionResult:
    """The dimension's score from the one VBench result file in `out`."""
    found = sorted(out.glob(RESULTS_GLOB))
    where = f"; see {log}" if log else ""
    if len(found) != 1:
        raise VBenchError(f"VBench {dimension}: expected one {RESULTS_GLOB} in {out}, found "
                          f"{len(found)}{where}")
    results = json.loads(found[0].read_text())
    if dimension not in results:
        raise VBenchError(f"VBench {dimension}: {found[0]} has no result for it{where}")
    score, videos = results[dimension]
    per_video = {Path(v["video_path"]).name: float(v["video_results"]) for v in videos
                 if isinstance(v.get("video_results"), (int, float))}
    return DimensionResult(dimension, float(score), per_video)
