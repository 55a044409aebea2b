"""params/dit.yaml conditioning.loss_on_conditioned: false leaves the frames a condition gives
out of the flow loss (the loss of before it was read), true keeps every frame in it; and the
training setup passes the key to the objective."""

from pathlib import Path

import torch

from osora.config import load_settings
from osora.diffusion.conditioning import build_cond, generated_frames
from osora.diffusion.flow import flow_inputs, flow_loss
from osora.models.mmdit import MMDIT_TINY, MMDiT
from osora.train.dit_setup import build_objective
from osora.train.flow_objective import FlowObjective, LatentBatch

REPO = Path(__file__).resolve().parents[2]
SEED = 7


def conditioned_batch() -> LatentBatch:
    """Two samples of 4 latent frames; the first frame given (i2v_head) in the first sample."""
    g = torch.Generator().manual_seed(0)
    c = MMDIT_TINY.in_channels
    latent = torch.randn(2, c, 4, 4, 4, generator=g)  # (B, C, T, H, W)
    mask = torch.tensor([[True, False, False, False], [False, False, False, False]])  # (B, T)
    return LatentBatch(latent, torch.randn(2, 3, MMDIT_TINY.text_dim, generator=g),
                       torch.randn(2, MMDIT_TINY.vec_dim, generator=g),
                       cond=build_cond(latent, mask))


def objective_loss(model: MMDiT, batch: LatentBatch, **kw) -> torch.Tensor:
    objective = FlowObjective(model, torch.optim.SGD(model.parameters(), lr=0.0),
                              patch_size=MMDIT_TINY.patch_size, **kw)
    torch.manual_seed(SEED)  # the loop's per-step reseed: the same t and noise each time
    (update,) = objective.updates(batch, step=0)
    with torch.no_grad():
        return update.loss()[0]


def test_false_leaves_conditioned_frames_out_and_true_keeps_them():
    torch.manual_seed(0)
    model = MMDiT(MMDIT_TINY).eval()
    batch = conditioned_batch()
    left_out = objective_loss(model, batch, loss_on_conditioned=False)
    kept = objective_loss(model, batch, loss_on_conditioned=True)
    assert objective_loss(model, batch) == left_out  # the default: today's loss

    torch.manual_seed(SEED)  # the objective's draws, made here by hand
    generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
    x = flow_inputs(batch.latent, patch_size=MMDIT_TINY.patch_size, generator=generator)
    with torch.no_grad():
        v = model(x.x_t, x.t, batch.text, batch.pooled, cond=batch.cond)  # (B, C, T, H, W)
        assert left_out == flow_loss(v, batch.latent, x.noise, generated_frames(batch.cond))
        assert kept == flow_loss(v, batch.latent, x.noise)  # every frame
    assert kept != left_out


def test_the_setup_passes_the_params_key():
    dit = load_settings(params_dir=REPO / "params").dit
    for value in (False, True):
        params = dit.model_copy(update={"conditioning": dit.conditioning.model_copy(
            update={"loss_on_conditioned": value})})
        objective = build_objective(params, MMDiT(dit.model), "stage1", world_size=1)
        assert objective.loss_on_conditioned is value
