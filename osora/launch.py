"""Start a training stage's ranks: `python -m osora.launch SCRIPT [ARGS ...]` runs SCRIPT under
torchrun (`python -m torch.distributed.run`) as params/launch.yaml says (docs/launch.md).

dvc.yaml starts every training stage (ae_train, dit_stage*) this way. One process with no
restarts (the tiny default) runs SCRIPT directly, alone, without a process group: torchrun
would add ~3 s a stage on 2 CPU cores and nothing else (docs/launch.md). With
`max_restarts` > 0 a single process goes through torchrun too, which restarts it after a hang.
"""

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from osora.config import load_settings
from osora.config.launch import LaunchParams

# Each attempt's ranks get their own TCPStore: with the one torchrun shares by default, a
# restarted rank can read the dead attempt's addresses and fail to connect
# (pytorch/pytorch#135712; seen with gloo on torch 2.13; see osora.train.recovery).
LAUNCH_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def torchrun_argv(launch: LaunchParams, script: str, args: Sequence[str],
                  python: str = sys.executable) -> list[str]:
    """The command that starts torchrun for `script args`: on this node, or with
    `node_launcher: srun` one agent on each node of the SLURM allocation; for one process
    that is never restarted, the script itself."""
    if launch.nodes == launch.nproc_per_node == 1 and launch.max_restarts == 0:
        return [python, script, *args]
    if launch.nodes == 1:
        rendezvous = ["--standalone"]  # a free local port, a fresh run id
    elif launch.rdzv_endpoint is None:
        raise ValueError(f"params/launch.yaml: nodes = {launch.nodes} needs rdzv_endpoint, "
                         "host:port on the first node: set it there or per job, e.g. "
                         "OSORA_LAUNCH__RDZV_ENDPOINT=node001:29500")
    else:
        rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", launch.rdzv_endpoint,
                      "--rdzv-id", launch.rdzv_id]
    argv = [python, "-m", "torch.distributed.run", "--nnodes", str(launch.nodes),
            "--nproc-per-node", str(launch.nproc_per_node),
            "--max-restarts", str(launch.max_restarts), *rendezvous, script, *args]
    if launch.nodes > 1 and launch.node_launcher == "srun":
        argv = ["srun", f"--nodes={launch.nodes}", "--ntasks-per-node=1",
                "--kill-on-bad-exit=1", *argv]
    return argv


def process_group_backend(launch: LaunchParams, device: str) -> str:
    """The backend the ranks of a stage computing on `device` ("cpu", "cuda") initialise."""
    on_cuda = device.startswith("cuda")
    if launch.backend == "auto":
        return "nccl" if on_cuda else "gloo"
    if launch.backend == "nccl" and not on_cuda:
        raise ValueError("params/launch.yaml backend: nccl needs a CUDA stage, this one runs "
                         "on the CPU; set backend: auto or gloo")
    return launch.backend


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m osora.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", help="the stage's script, e.g. pipelines/dit_train.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    ns = parser.parse_args(argv)
    try:
        command = torchrun_argv(load_settings().launch, ns.script, ns.args)
    except ValueError as err:  # ConfigError included: it names the file and key
        raise SystemExit(f"osora.launch: {err}") from None
    print(f"osora.launch: {shlex.join(command)}", file=sys.stderr, flush=True)
    os.execvpe(command[0], command, {**os.environ, **LAUNCH_ENV})


if __name__ == "__main__":
    main()
