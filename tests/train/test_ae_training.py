"""Video DC-AE training assembled from params: phases, every optional part loaded from local
files (tiny random LPIPS and DINOv2 that the test writes), windows, resume, and learning."""

from pathlib import Path

import pytest
import torch
from clip_files import clip_rows

from osora.config import load_settings
from osora.models.lpips import LPIPS
from osora.store import Store
from osora.train.ae_setup import build_objective
from osora.train.clip_windows import ClipWindows
from osora.train.loop import LoopSettings, train
from osora.weights.safetensors_io import save_weights

REPO = Path(__file__).resolve().parents[2]
AE = load_settings(params_dir=REPO / "params").ae


def tiny_lpips(folder: Path) -> tuple[Path, Path]:
    torch.manual_seed(3)
    state = LPIPS(widths=(4, 8, 8, 16, 16)).state_dict()
    trunk = save_weights({k: v for k, v in state.items() if k.startswith("features.")},
                         folder / "trunk.safetensors")
    heads = save_weights({k: v.abs() for k, v in state.items() if k.startswith("lin")},
                         folder / "heads.safetensors")
    return trunk, heads


def tiny_dinov2(folder: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(4)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, patch_size=8, image_size=32)
    Dinov2Model(config).save_pretrained(folder / "dinov2")
    return folder / "dinov2"


def all_parts_on(tmp_path: Path):
    trunk, heads = tiny_lpips(tmp_path)
    train_params = AE.train.model_copy(update={
        "phase1_steps": 2, "phase2_steps": 2, "ema_decay": 0.5,
        "perceptual": AE.train.perceptual.model_copy(
            update={"weight": 0.5, "trunk": str(trunk), "heads": str(heads)}),
        "distill": AE.train.distill.model_copy(
            update={"weight": 0.1, "dinov2": str(tiny_dinov2(tmp_path))}),
    })
    return AE.model_copy(update={"train": train_params})


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[dict]:
    """Three real clip files (ffmpeg), 12 frames of 48×40, as pyramid rows."""
    return clip_rows(tmp_path_factory.mktemp("clips"), {f"c{i}": (48, 40, 12) for i in range(3)})


def windows(rows: list[dict], rank: int = 0) -> ClipWindows:
    """One 8-frame 32×32 window a step from the clips at their own size."""
    return ClipWindows(rows, Store(str(Path(rows[0]["uri"]).parent)), "pyramid_t@1",
                       short_side=None, frames=8, crop=32, batch_size=1, seed=0, rank=rank)


def test_phases_and_every_part_from_local_files(tmp_path, clips):
    params = all_parts_on(tmp_path)
    ae, objective = build_objective(params, "cpu")
    seen, logged = [], []
    original = objective.updates

    def spy(batch, step):
        for update in original(batch, step):
            seen.append((step, update.name))
            yield update

    objective.updates = spy
    train(objective, windows(clips), LoopSettings(steps=4, grad_clip=1.0, log_every=1,
                                                  checkpoint_every=10),
          log=lambda m, s: logged.append(m))
    assert seen == [(0, "ae"), (1, "ae"), (2, "ae"), (2, "disc"), (3, "ae"), (3, "disc")]
    assert {"l1", "lpips", "distill"} <= set(logged[0]) and "g_hinge" not in logged[0]
    assert {"g_hinge", "d_real", "d_fake", "disc/loss"} <= set(logged[3])
    assert all(torch.isfinite(torch.tensor(v)) for m in logged for v in m.values())
    # the teacher and the LPIPS network stay frozen; the distillation head trains with the AE
    assert not any(p.requires_grad for p in objective.teacher.parameters())
    assert not any(p.requires_grad for p in objective.perceptual.parameters())
    assert any(p.grad is not None for p in objective.distill.parameters())


def test_each_update_steps_only_its_own_network_on_its_own_loss(clips):
    params = AE.model_copy(update={"train": AE.train.model_copy(
        update={"phase1_steps": 0, "phase2_steps": 1})})
    _, objective = build_objective(params, "cpu")
    disc = objective.discriminator
    for module in disc.modules():  # no dropout: the reference below draws no random numbers
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
    batch = windows(clips)(0)
    disc_before = [p.detach().clone() for p in disc.parameters()]
    ae_before = [p.detach().clone() for p in objective.ae.parameters()]
    logged = []
    train(objective, lambda step: batch, LoopSettings(steps=1, grad_clip=1e9, log_every=1,
                                                      checkpoint_every=10),
          log=lambda m, s: logged.append(m))
    # the discriminator's gradient is that of its own loss alone (the generator's loss also
    # reached it, and was zeroed before the discriminator's update)
    from osora.models.losses import hinge_d_loss

    disc_grads = [p.grad.clone() for p in disc.parameters()]
    for p, before in zip(disc.parameters(), disc_before):
        p.data.copy_(before)
        p.grad = None
    recon = objective.ae.__class__(objective.ae.config)
    recon.load_state_dict(dict(zip(objective.ae.state_dict(), ae_before)))
    with torch.no_grad():
        fake = recon(batch)
    hinge_d_loss(disc(batch), disc(fake)).backward()
    for got, want in zip(disc_grads, (p.grad for p in disc.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert {"d_real", "d_fake", "g_hinge"} <= set(logged[0])


def test_resume_with_discriminator_and_ema_equals_straight_run(tmp_path, clips):
    params = AE.model_copy(update={"train": AE.train.model_copy(
        update={"phase1_steps": 1, "phase2_steps": 2, "ema_decay": 0.9})})
    batches = windows(clips)

    def run(steps, folder=None):
        ae, objective = build_objective(params, "cpu")
        train(objective, batches, LoopSettings(steps=steps, grad_clip=1.0, log_every=10,
                                               checkpoint_every=2), checkpoint_dir=folder)
        return ae, objective

    ae_straight, obj_straight = run(3)
    run(2, tmp_path)
    ae_resumed, obj_resumed = run(3, tmp_path)
    for a, b in zip(ae_straight.state_dict().values(), ae_resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(obj_straight.discriminator.parameters(),
                    obj_resumed.discriminator.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(obj_straight.ema.shadow, obj_resumed.ema.shadow):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_tiny_dcae_learns_a_smooth_video():
    """L1 alone, 40 steps on one smooth moving pattern: the reconstruction error falls by
    more than half (the untrained AE is its parameter-free shortcut path)."""
    t, y, x = torch.meshgrid(torch.arange(8.0), torch.arange(32.0), torch.arange(32.0),
                             indexing="ij")
    video = torch.stack([torch.sin((x + 2 * t) / 5), torch.cos((y - t) / 7),
                         torch.sin((x + y) / 9)])[None] * 0.8  # (1, 3, 8, 32, 32)
    params = AE.model_copy(update={"train": AE.train.model_copy(
        update={"phase1_steps": 40, "phase2_steps": 0, "lr": 2e-3})})
    ae, objective = build_objective(params, "cpu")
    with torch.no_grad():
        before = (ae(video) - video).abs().mean().item()
    train(objective, lambda step: video, LoopSettings(steps=40, grad_clip=1.0, log_every=40,
                                                      checkpoint_every=100))
    with torch.no_grad():
        after = (ae(video) - video).abs().mean().item()
    assert after < 0.5 * before, (before, after)


def _sharded_worker(rank: int, port: int, folder: str, clips: list[dict]) -> None:
    import os

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from osora.train.ae_setup import fsdp
    from osora.train.parallel import close_distributed, init_distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = init_distributed("gloo")
    params = AE.model_copy(update={"train": AE.train.model_copy(
        update={"phase1_steps": 1, "phase2_steps": 1, "ema_decay": 0.9})})
    ae, objective = build_objective(params, "cpu", fsdp(dist.world_size))
    logged = []
    train(objective, windows(clips, dist.rank),
          LoopSettings(steps=2, grad_clip=1.0, log_every=1, checkpoint_every=2),
          checkpoint_dir=Path(folder), log=lambda m, s: logged.append(m), rank=dist.rank)
    full = get_model_state_dict(ae, options=StateDictOptions(full_state_dict=True,
                                                             cpu_offload=True))
    if rank == 0:  # with cpu_offload the gathered weights land on rank 0 only
        torch.save(full, Path(folder) / "full.pt")
        assert {"l1", "g_hinge", "disc/loss"} <= set(logged[-1]), logged
    close_distributed()


def test_ae_training_shards_over_two_gloo_processes(tmp_path, clips):
    """The same objective and loop under FSDP2 on 2 processes (each its own windows): both
    phases run, the checkpoint is written once, and the gathered full weights load into a
    plain DC-AE."""
    import torch.multiprocessing as mp
    from free_port import free_port

    from osora.models.dcae import DCAE

    mp.spawn(_sharded_worker, args=(free_port(), str(tmp_path), clips), nprocs=2, join=True)
    assert (tmp_path / "step_00000002" / ".metadata").is_file()
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    DCAE(AE.dcae).load_state_dict(full)  # strict: every key, every shape
