"""torchtitan's Trainer launched as on a cluster — `torchrun --nproc_per_node 2 -m
osora.titan.train --job.config_file osora/titan/configs/tiny_cpu.toml` — on 2 gloo processes,
from a shared seed checkpoint. Each logged step loss equals osora's:
- FSDP2 over both ranks (each its own batch and noise): the mean of the ranks' losses, with
  gradients averaged, as emulated in one process;
- context parallelism 2 (osora's Ulysses forward; both ranks one batch): osora's own loop on
  that one rank's batches.
torchtitan prints losses with 5 decimals."""

import pytest
from titan_reference import data_parallel_losses, logged_losses, osora_loop_losses, torchrun

STEPS = 3


def run(tmp_path, seed_ckpt, *extra: str) -> list[float]:
    done = torchrun(2, tmp_path, seed_ckpt[0], STEPS, *extra)
    assert done.returncode == 0, done.stdout[-5000:]
    losses = logged_losses(done.stdout)
    assert len(losses) == STEPS, done.stdout[-3000:]
    return losses


def test_fsdp_on_two_gloo_ranks_equals_osoras_data_parallel_step(tmp_path, seed_ckpt):
    losses = run(tmp_path, seed_ckpt)  # data_parallel_shard_degree -1: FSDP2 over 2 ranks
    assert losses == pytest.approx(data_parallel_losses(seed_ckpt[1], STEPS, 2), abs=2e-5)
    assert (tmp_path / "checkpoint" / f"step-{STEPS}").is_dir()


def test_context_parallel_on_two_gloo_ranks_equals_osoras_loop(tmp_path, seed_ckpt):
    losses = run(tmp_path, seed_ckpt, "--parallelism.context_parallel_degree", "2")
    want = [loss for loss, _ in osora_loop_losses(seed_ckpt[1], STEPS)]
    assert losses == pytest.approx(want, abs=2e-5)
