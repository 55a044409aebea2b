"""A free TCP port on 127.0.0.1 for a test's process group (never a fixed port: tests run in
parallel workers)."""

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo(rank: int, world: int, port: int):
    """In a spawned test worker: one intra-op thread, torchrun's environment for `rank` of
    `world` on 127.0.0.1:`port`, and the gloo process group (close it with
    osora.train.parallel.close_distributed)."""
    import os

    import torch

    from osora.train.parallel import init_distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return init_distributed("gloo")
