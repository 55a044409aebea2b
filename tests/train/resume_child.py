"""One rank of a 2-rank FSDP2 MMDiT flow-matching run under torchrun, with asynchronous
checkpoints and a 5 s watchdog. Faults, injected at a step before rank 1 takes its batch:
`KILL_AT=<step>` SIGKILLs rank 1, as a crashed node; `HANG_AT=<step>` makes rank 1 sleep for
good on torchrun's first attempt, as a stuck node (rank 0 then waits in a collective). Rank 0
appends "step loss" lines to `<out>/losses.txt`."""

import os
import signal
import sys
import time
from pathlib import Path

import torch

from osora.models.mmdit import MMDIT_TINY, MMDiT
from osora.train.dit_setup import MMDIT_SHARD_UNITS
from osora.train.flow_objective import FlowObjective, LatentBatch
from osora.train.loop import LoopSettings, train
from osora.train.parallel import close_distributed, init_distributed, shard_model
from osora.train.recovery import RecoverySettings

STEPS, EVERY = 8, 2


def main(out: Path) -> None:
    torch.set_num_threads(1)
    where = init_distributed("gloo")
    kill_at = int(os.environ.get("KILL_AT", -1))
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    hang_at = int(os.environ.get("HANG_AT", -1)) if first_attempt else -1
    torch.manual_seed(0)
    model = shard_model(MMDiT(MMDIT_TINY), MMDIT_SHARD_UNITS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-15)
    objective = FlowObjective(model, optimizer, patch_size=1)
    cfg = MMDIT_TINY

    def batch_for(step: int) -> LatentBatch:
        if step == kill_at and where.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == hang_at and where.rank == 1:
            time.sleep(3600)
        g = torch.Generator().manual_seed(1000 * step + where.rank)  # this rank's data
        return LatentBatch(torch.randn(2, cfg.in_channels, 2, 4, 4, generator=g),
                           torch.randn(2, 6, cfg.text_dim, generator=g),
                           torch.randn(2, cfg.vec_dim, generator=g))

    def log(metrics: dict, step: int) -> None:
        with open(out / "losses.txt", "a") as f:
            f.write(f"{step} {metrics['dit/loss']!r}\n")

    train(objective, batch_for,
          LoopSettings(steps=STEPS, grad_clip=1.0, log_every=1, checkpoint_every=EVERY,
                       async_checkpoint=True, recovery=RecoverySettings(hang_seconds=5.0)),
          checkpoint_dir=out / "checkpoints", log=log, rank=where.rank)
    close_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
