"""Where this process sits in the torchrun job that started it, read from the environment
torchrun gives each rank, so that stages which never import torch (tracking, cost) can ask."""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    rank: int = 0  # RANK: this process among all of the job's
    world_size: int = 1  # WORLD_SIZE: the job's processes
    nodes: int = 1  # GROUP_WORLD_SIZE: torchrun agents, one per node


def current_job() -> Job:
    """This process' place; rank 0 of a 1-process job when not started by torchrun."""
    env = os.environ
    return Job(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
               int(env.get("GROUP_WORLD_SIZE", 1)))
