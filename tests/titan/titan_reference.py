"""osora's own training of the tiny MMDiT, the reference the torchtitan runs must equal: the
same initial weights (a DCP seed checkpoint torchtitan loads), the same synthetic batches, the
same per-step seeds, osora's FlowObjective and AdamW with the tiny_cpu.toml settings."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: torchtitan's dependency
    import tomli as tomllib

from osora.models.mmdit import MMDiT
from osora.titan.data import SyntheticLatents
from osora.titan.job_config import Osora
from osora.titan.spec import register
from osora.train.flow_objective import FlowObjective
from osora.train.loop import LoopSettings, train

REPO = Path(__file__).resolve().parents[2]
TINY_TOML = REPO / "osora" / "titan" / "configs" / "tiny_cpu.toml"
TOML = tomllib.loads(TINY_TOML.read_text())
SEED = TOML["debug"]["seed"]
BATCH = TOML["training"]["local_batch_size"]
OPTS = Osora(**TOML["osora"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config():
    return register().model_args["tiny"].mmdit


def seed_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """osora's initialisation of the tiny MMDiT, saved as the model-only DCP checkpoint
    torchtitan's `checkpoint.initial_load_path` loads; returns the weights."""
    torch.manual_seed(1234)
    state = MMDiT(tiny_config()).state_dict()
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    return {k: v.clone() for k, v in state.items()}


def _objective(state: dict[str, torch.Tensor]) -> FlowObjective:
    model = MMDiT(tiny_config())
    model.load_state_dict(state)
    o = TOML["optimizer"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=o["lr"], betas=(o["beta1"], o["beta2"]),
                                  eps=o["eps"], weight_decay=o["weight_decay"])
    return FlowObjective(model, optimizer, patch_size=model.config.patch_size,
                         sigma_min=OPTS.sigma_min)


def osora_loop_losses(state: dict[str, torch.Tensor], steps: int) -> list[tuple[float, float]]:
    """(loss, grad norm) per step of osora's own loop (osora.train.loop.train), one rank."""
    objective = _objective(state)
    batches = SyntheticLatents(objective.model.config, OPTS, BATCH, seed=SEED, rank=0)
    logged: list[tuple[float, float]] = []
    settings = LoopSettings(steps=steps, grad_clip=TOML["training"]["max_norm"], log_every=1,
                            checkpoint_every=10**9, seed=SEED)
    train(objective, batches, settings,
          log=lambda m, step: logged.append((m["dit/loss"], m["dit/grad_norm"])))
    return logged


def data_parallel_losses(state: dict[str, torch.Tensor], steps: int, world: int) -> list[float]:
    """Mean loss per step of `world` data-parallel ranks, emulated in one process: rank r
    takes its batch and its noise (seed (seed, r, step), as osora's loop and OsoraTrainer),
    the gradients are averaged, clipped and stepped once."""
    objective = _objective(state)
    cfg = objective.model.config
    ranks = [SyntheticLatents(cfg, OPTS, BATCH, seed=SEED, rank=r) for r in range(world)]
    means = []
    for step in range(steps):
        objective.optimizer.zero_grad(set_to_none=True)
        losses = []
        for r, batches in enumerate(ranks):
            torch.manual_seed(hash((SEED, r, step)) % 2**63)
            batch = batches(step)
            loss, _ = next(objective.updates(batch, step)).loss()
            (loss / world).backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(objective.params, TOML["training"]["max_norm"])
        objective.optimizer.step()
        means.append(sum(losses) / world)
    return means


def torchrun(nproc: int, dump: Path, seed_ckpt: Path, steps: int, *extra: str):
    """`torchrun --nproc_per_node N -m osora.titan.train` on tiny_cpu.toml (gloo), starting
    from the seed checkpoint; returns the finished process (stdout + stderr in .stdout)."""
    import subprocess

    runner = Path(sys.executable).with_name("torchrun")
    launcher = [str(runner)] if runner.exists() else [sys.executable, "-m",
                                                      "torch.distributed.run"]
    cmd = [*launcher, "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "--local-ranks-filter", "0",
           "-m", "osora.titan.train", "--job.config_file", str(TINY_TOML),
           "--job.dump_folder", str(dump), "--training.steps", str(steps),
           "--checkpoint.enable", "--checkpoint.initial_load_path", str(seed_ckpt),
           "--checkpoint.interval", "1000", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def logged_losses(output: str) -> list[float]:
    """The `step: N  loss: X` values torchtitan's MetricsProcessor printed, by step."""
    import re

    found = {int(s): float(v) for s, v in re.findall(r"step:\s*(\d+)\s+loss:\s*(\S+)", output)}
    return [found[s] for s in sorted(found)]
