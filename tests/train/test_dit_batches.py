"""DiT training batches from latent rows: the step's bucket for every rank, the rows' own
latents and texts, conditions built from the clips' frames, dropouts, determinism per step."""

import pytest
import torch

from osora.data.latents import latent_columns
from osora.diffusion.conditioning import conditioned_frames
from osora.models.text import EmbeddingCache, MiniLMEncoder
from osora.prompts import conditioned_text
from osora.train.bucket_batches import BucketRule
from osora.train.dit_batches import LatentBatches

C = 4
SHAPES = {8: (C, 2, 3, 5), 16: (C, 4, 3, 5)}  # bucket frames → latent (C, T, H, W)


def rows(n=12):
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        frames = (8, 16)[i % 2]
        # ids sort in list order: LatentBatches indexes rows in id order
        out.append({"id": f"clip{i:02d}", "text": conditioned_text(f"shape {i} moves", 24, i % 3),
                    "frames": frames, "height": 24, "width": 40,
                    **latent_columns(torch.randn(SHAPES[frames], generator=gen), "float32")})
    return out


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder(max_length=12)


def batches(encoder, data=None, **kw):
    args = dict(world=2, rank=0, seed=0)
    args.update(kw)
    return LatentBatches(rows() if data is None else data, encoder, EmbeddingCache(),
                         {8: BucketRule(2), 16: BucketRule(3)}, **args)


def at(b, step):
    torch.manual_seed(12345 + step)  # the global RNG: a batch must not depend on it
    return b(step)


def test_ranks_share_the_bucket_and_get_their_own_rows(encoder):
    r0, r1 = batches(encoder, rank=0), batches(encoder, rank=1)
    data = rows()
    for step in range(6):  # crosses an epoch boundary (1 + 1 steps per epoch)
        a, b = r0.step_batch(step), r1.step_batch(step)
        assert a.bucket == b.bucket and not set(a.items) & set(b.items)
        batch = at(r0, step)
        want = torch.stack([torch.frombuffer(bytearray(data[i]["latent"]), dtype=torch.float32)
                            .reshape(SHAPES[data[i]["frames"]]) for i in a.items])
        assert torch.equal(batch.latent, want)
        assert batch.cond is None  # T2V
        emb = encoder.encode([data[i]["text"] for i in a.items])
        torch.testing.assert_close(batch.pooled, emb.pooled)


def test_batches_do_not_depend_on_the_tables_row_order(encoder):
    """The latents stage's workers append rows in the order they finish: two runs of the same
    data must still train on the same batches."""
    shuffled = rows()
    shuffled.reverse()
    a, b = batches(encoder), batches(encoder, data=shuffled)
    for step in range(4):
        x, y = at(a, step), at(b, step)
        assert torch.equal(x.latent, y.latent) and torch.equal(x.pooled, y.pooled)


def test_conditions_come_from_the_clips_frames_and_dropouts_apply(encoder):
    b = batches(encoder, world=1, condition_weights={"i2v_head": 1.0, "i2v_tail": 1.0},
                text_dropout=1.0)
    batch = at(b, 0)
    given = conditioned_frames(batch.cond)  # (B, T)
    assert bool((given.sum(1) == 1).all())  # one given frame per sample, first or last
    assert bool((given[:, 0] | given[:, -1]).all())
    frames = batch.cond[:, 1:]  # (B, C, T, H, W)
    m = given[:, None, :, None, None].expand_as(frames)
    assert torch.equal(frames[m], batch.latent[m]) and bool((frames[~m] == 0).all())
    null = encoder.encode([""])
    torch.testing.assert_close(batch.text, null.seq.expand_as(batch.text))  # p = 1: all dropped
    dropped = at(batches(encoder, world=1, condition_weights={"i2v_head": 1.0},
                         image_dropout=1.0), 0)
    assert bool((dropped.cond == 0).all())


def test_the_same_step_gives_the_same_batch(encoder):
    b = batches(encoder, world=1, condition_weights={"t2v": 1.0, "i2v_head": 1.0},
                text_dropout=0.5)
    one, two = at(b, 3), at(b, 3)
    for x, y in zip(vars(one).values(), vars(two).values()):
        assert torch.equal(x, y)


def test_a_bucket_without_a_batch_size_is_named(encoder):
    with pytest.raises(ValueError, match=r"no batch size for \[16\]-frame buckets"):
        LatentBatches(rows(), encoder, EmbeddingCache(), {8: BucketRule(2)}, world=1, rank=0,
                      seed=0)
