"""torchtitan's own Trainer (OsoraTrainer) trains the tiny MMDiT on CPU in this process, and
each step equals osora's own training loop (osora.train.loop + FlowObjective) from the same
weights on the same batches: loss and gradient norm, step by step."""

import gc
import os

import pytest
import torch
import torch.distributed as dist
from titan_reference import TINY_TOML, free_port, osora_loop_losses

from osora.titan.train import with_osora_config

STEPS = 3


@pytest.fixture
def one_process(monkeypatch):
    """torchrun's environment for a world of one; the environment (torchtitan sets NCCL and
    PYTHONHASHSEED variables), threads and GC restored afterwards."""
    saved = dict(os.environ)
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: more threads only contend on a shared CI box
    yield
    torch.set_num_threads(threads)
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.enable()  # torchtitan's GarbageCollection turns Python's GC off
    os.environ.clear()
    os.environ.update(saved)


def test_trainer_steps_equal_osoras_loop(one_process, seed_ckpt, tmp_path):
    from torchtitan.config import ConfigManager

    from osora.titan.trainer import OsoraTrainer

    folder, weights = seed_ckpt
    config = ConfigManager().parse_args(with_osora_config([
        "--job.config_file", str(TINY_TOML), "--job.dump_folder", str(tmp_path),
        "--training.steps", str(STEPS), "--checkpoint.enable",
        "--checkpoint.initial_load_path", str(folder), "--checkpoint.interval", "1000"]))
    trainer = OsoraTrainer(config)
    logged = []
    log = trainer.metrics_processor.log

    def spy(step, avg_loss, max_loss, grad_norm, extra_metrics=None):
        logged.append((avg_loss, grad_norm))
        log(step, avg_loss, max_loss, grad_norm, extra_metrics=extra_metrics)

    trainer.metrics_processor.log = spy
    try:
        trainer.train()
    finally:
        trainer.close()
    assert trainer.step == STEPS and len(logged) == STEPS
    want = osora_loop_losses(weights, STEPS)
    torch.testing.assert_close(logged, want, rtol=1e-5, atol=1e-6)
    assert all(torch.isfinite(torch.tensor(logged)).flatten())
    assert logged[-1][0] < logged[0][0]  # it learns
    # the last step's weights were written as torchtitan's model-only DCP checkpoint
    assert (tmp_path / "checkpoint" / f"step-{STEPS}").is_dir()
