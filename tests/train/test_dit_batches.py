"""DiT training batches from a latents table in a real Lance store: the step's bucket for every
rank, the rows' own latents and texts read per step (only the rank's rows, never the whole
table), the same items as an in-memory reference, conditions built from the clips' frames,
dropouts, determinism per step, and bad rows named with the table version."""

import random

import pyarrow as pa
import pytest
import torch

from osora.data.latents import latent_columns
from osora.diffusion.conditioning import conditioned_frames
from osora.models.text import MiniLMEncoder
from osora.prompts import conditioned_text
from osora.schemas import LATENTS
from osora.store import Store
from osora.train.bucket_batches import BucketRule, epoch_schedule
from osora.train.dit_batches import LatentBatches
from osora.train.latent_table import LatentTable
from osora.train.text_source import OnlineText

C = 4
SHAPES = {8: (C, 2, 3, 5), 16: (C, 4, 3, 5)}  # bucket frames → latent (C, T, H, W)
RULES = {8: BucketRule(2), 16: BucketRule(3)}
TABLE = "latents_test"


def rows(n=12):
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        frames = (8, 16)[i % 2]
        out.append({"id": f"clip{i:02d}", "video_id": f"video{i // 4}",
                    "text": conditioned_text(f"shape {i} moves", 24, i % 3), "fps": 24.0,
                    "frames": frames, "height": 24, "width": 40, "dit_scale": True,
                    "ae_kind": "dcae", "ae_sha256": "0" * 64,
                    **latent_columns(torch.randn(SHAPES[frames], generator=gen), "float32")})
    return out


def write(store, data, max_rows_per_file=None):
    """The rows as a new version of TABLE; returns the version."""
    return store.write(TABLE, pa.Table.from_pylist(data, schema=LATENTS),
                       mode="overwrite" if store.exists(TABLE) else "create",
                       max_rows_per_file=max_rows_per_file)


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder(max_length=12)


@pytest.fixture
def local(tmp_path):
    return Store(str(tmp_path / "store"))


def batches(encoder, store, data=None, **kw):
    version = write(store, rows() if data is None else data)
    args = dict(world=2, rank=0, seed=0)
    args.update(kw)
    return LatentBatches(LatentTable(store, TABLE, version), OnlineText(encoder), RULES, **args)


def at(b, step):
    torch.manual_seed(12345 + step)  # the global RNG: a batch must not depend on it
    return b(step)


def reference_items(data, *, world, rank, step):
    """The ids a rank trains on at a step by the former in-memory loader: every row held,
    sorted by id, the schedule over all rows' buckets (steps within epoch 0 only)."""
    held = sorted(data, key=lambda r: r["id"])
    buckets = [(r["frames"], r["height"], r["width"]) for r in held]
    rules = {b: RULES[b[0]] for b in set(buckets)}
    schedule = epoch_schedule(buckets, rules, world=world, seed=0, epoch=0)
    return [held[i] for i in schedule[step][rank].items]


def test_the_same_batches_as_the_in_memory_reference_wherever_the_table_is(encoder, store):
    """Local or on S3, shuffled and spread over several data files, each rank gets the items
    of the in-memory loader: the same ids, latents and texts at every step."""
    data = rows(40)
    random.Random(0).shuffle(data)
    version = write(store, data, max_rows_per_file=7)
    table = LatentTable(store, TABLE, version)
    for rank in range(2):
        b = LatentBatches(table, OnlineText(encoder), RULES, world=2, rank=rank, seed=0)
        for step in range(4):
            want = reference_items(data, world=2, rank=rank, step=step)
            assert [table.id_of(i) for i in b.step_batch(step).items] == [r["id"] for r in want]
            batch = at(b, step)
            latent = torch.stack([torch.frombuffer(bytearray(r["latent"]), dtype=torch.float32)
                                  .reshape(r["latent_shape"]) for r in want])
            assert torch.equal(batch.latent, latent)
            emb = encoder.encode([r["text"] for r in want])
            torch.testing.assert_close(batch.pooled, emb.pooled)
            torch.testing.assert_close(batch.text, emb.seq)


class CountingStore(Store):
    """A real local store that records what is read from it."""

    def __init__(self, root):
        super().__init__(root)
        self.reads, self.takes = [], []

    def read(self, name, version=None, columns=None):
        self.reads.append(columns)
        return super().read(name, version, columns)

    def take(self, name, positions, version, columns=None):
        self.takes.append(list(positions))
        return super().take(name, positions, version, columns)


def test_a_step_reads_only_its_ranks_rows_and_start_up_no_latents(encoder, tmp_path):
    store = CountingStore(str(tmp_path / "store"))
    b = batches(encoder, store, world=2, rank=1)
    assert all(columns is not None and "latent" not in columns for columns in store.reads)
    assert store.takes == []
    at(b, 0)
    items = b.step_batch(0).items
    assert store.takes == [[b.table.positions[i] for i in items]]
    assert len(items) == RULES[b.step_batch(0).bucket[0]].batch_size  # not the other rank's


def test_ranks_share_the_bucket_and_get_their_own_rows(encoder, local):
    r0, r1 = batches(encoder, local, rank=0), batches(encoder, local, rank=1)
    by_id = {r["id"]: r for r in rows()}
    for step in range(6):  # crosses an epoch boundary (1 + 1 steps per epoch)
        a, b = r0.step_batch(step), r1.step_batch(step)
        assert a.bucket == b.bucket and not set(a.items) & set(b.items)
        mine = [by_id[r0.table.id_of(i)] for i in a.items]
        batch = at(r0, step)
        assert batch.latent.shape == (len(mine), *SHAPES[a.bucket[0]])
        assert batch.cond is None  # T2V
        emb = encoder.encode([r["text"] for r in mine])
        torch.testing.assert_close(batch.pooled, emb.pooled)


def test_batches_do_not_depend_on_the_tables_row_order(encoder, tmp_path):
    """The latents stage's workers append rows in the order they finish: two runs of the same
    data must still train on the same batches."""
    shuffled = rows()
    shuffled.reverse()
    a = batches(encoder, Store(str(tmp_path / "a")))
    b = batches(encoder, Store(str(tmp_path / "b")), data=shuffled)
    for step in range(4):
        x, y = at(a, step), at(b, step)
        assert torch.equal(x.latent, y.latent) and torch.equal(x.pooled, y.pooled)


def test_conditions_come_from_the_clips_frames_and_dropouts_apply(encoder, local):
    b = batches(encoder, local, world=1, condition_weights={"i2v_head": 1.0, "i2v_tail": 1.0},
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
    dropped = at(batches(encoder, local, world=1, condition_weights={"i2v_head": 1.0},
                         image_dropout=1.0), 0)
    assert bool((dropped.cond == 0).all())


def test_the_same_step_gives_the_same_batch(encoder, local):
    b = batches(encoder, local, world=1, condition_weights={"t2v": 1.0, "i2v_head": 1.0},
                text_dropout=0.5)
    one, two = at(b, 3), at(b, 3)
    for x, y in zip(vars(one).values(), vars(two).values()):
        assert torch.equal(x, y)


def test_a_bucket_without_a_batch_size_is_named(encoder, local):
    version = write(local, rows())
    with pytest.raises(ValueError, match=r"no batch size for \[16\]-frame buckets"):
        LatentBatches(LatentTable(local, TABLE, version), OnlineText(encoder),
                      {8: BucketRule(2)}, world=1, rank=0, seed=0)


def test_a_latent_that_does_not_decode_is_named_with_the_table_version(encoder, local):
    data = rows()
    data[4]["latent"] = data[4]["latent"][:-4]  # clip04: 4 bytes short
    b = batches(encoder, local, data=data, world=1)
    version = local.version(TABLE)
    step = next(s for s in range(8) if b.table.item_of("clip04") in b.step_batch(s).items)
    with pytest.raises(ValueError, match=rf"{TABLE}@{version}: latent clip04: .* bytes"):
        b(step)


def test_a_latent_of_the_wrong_shape_for_its_bucket_is_named_at_start_up(encoder, local):
    data = rows()
    data[3].update(latent_columns(torch.zeros(C, 2, 3, 5), "float32"))  # a 16-frame clip
    version = write(local, data)
    with pytest.raises(ValueError, match=rf"{TABLE}@{version}: bucket 16x24x40 .*clip03"):
        LatentTable(local, TABLE, version)
