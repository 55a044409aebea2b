"""The text_embed stage's table and training's reads of it: stored embeddings equal the encoder's
(float32 exactly, bfloat16 to its rounding), keyed by encoder and text, resumed from the
runner's work log, read per step by key locally and on S3, the
same DiT batches as encoding online, and missing or corrupt rows named with the table version."""

import pyarrow as pa
import pytest
import torch

from osora.config import load_settings
from osora.config.data import RunnerParams
from osora.data.latents import latent_columns
from osora.data.runner import run_operator
from osora.data.text_embeds import (
    TABLE,
    TextEmbedder,
    embedding_row,
    read_embedding,
    text_inputs,
    text_key,
)
from osora.models.text import MiniLMEncoder, text_encoder_identity
from osora.schemas import LATENTS
from osora.store import Store
from osora.train.bucket_batches import BucketRule
from osora.train.dit_batches import LatentBatches
from osora.train.latent_table import LatentTable
from osora.train.text_source import OnlineText, TableText

TEXTS = ["a red circle moves left", "a blue square moves up", "a red circle moves left",
         "text with 'quotes' in it", "a green star at rest"]
RUNNER = RunnerParams(backend="local", workers=1, timeout_s=120, commit_every=2)


@pytest.fixture(scope="module")
def text_params():
    params = load_settings().dit.text
    return params.model_copy(update={"max_length": 16})


@pytest.fixture(scope="module")
def encoder(text_params):
    return MiniLMEncoder(max_length=text_params.max_length)


def embed(store, text_params, dtype="float32", texts=TEXTS):
    """The stage's work: the runner over the distinct texts, synced into the store; the
    version."""
    identity = text_encoder_identity(text_params)
    op = TextEmbedder(text_params, identity, dtype, "cpu")
    result = run_operator(op, text_inputs(texts, identity), stage="text_embed", store=store,
                          params=RUNNER, progress=False)
    return store.sync(TABLE, result.rows, update_matched=True), result


def test_the_identity_from_params_is_the_loaded_encoders(text_params, encoder):
    assert text_encoder_identity(text_params) == encoder.identity


def test_stored_embeddings_are_the_encoders_and_a_rerun_resumes(tmp_path, text_params,
                                                                encoder):
    store = Store(str(tmp_path / "store"))
    version, first = embed(store, text_params)
    assert first.processed == 5 and first.rows.num_rows == 5  # 4 distinct texts and ""
    rows = {r["text"]: r for r in store.read(TABLE, version).to_pylist()}
    assert set(rows) == {"", *TEXTS}
    for text, row in rows.items():
        assert row["id"] == text_key(encoder.identity, text)
        seq, mask, pooled = read_embedding(row, TABLE)
        want = encoder.encode([text])
        assert torch.equal(seq, want.seq[0]) and torch.equal(pooled, want.pooled[0])
        assert torch.equal(mask, want.mask[0])
    _, again = embed(store, text_params)
    assert (again.processed, again.resumed) == (0, 5)


def test_bfloat16_rows_hold_the_encoders_output_rounded(tmp_path, text_params, encoder):
    store = Store(str(tmp_path / "store"))
    version, _ = embed(store, text_params, "bfloat16", TEXTS[:2])
    got = TableText(store, TABLE, version, encoder.identity)(TEXTS[:2])
    want = encoder.encode(TEXTS[:2])
    assert got.seq.dtype == torch.bfloat16
    assert torch.equal(got.seq, want.seq.to(torch.bfloat16))
    assert torch.equal(got.pooled, want.pooled.to(torch.bfloat16))


def test_dit_batches_from_the_table_equal_those_encoded_online(store, text_params, encoder):
    """Locally and on S3: the same items, latents, masks and (float32) text features per rank
    and step, text dropout included, whether the texts come from the table or the encoder."""
    gen = torch.Generator().manual_seed(0)
    data = [{"id": f"clip{i:02d}", "video_id": "v", "text": TEXTS[i % 5], "fps": 24.0,
             "frames": 8, "height": 24, "width": 40, "dit_scale": True, "ae_kind": "dcae",
             "ae_sha256": "0" * 64, **latent_columns(torch.randn(4, 2, 3, 5, generator=gen),
                                                     "float32")} for i in range(12)]
    latents = store.write("latents_test", pa.Table.from_pylist(data, schema=LATENTS))
    version, _ = embed(store, text_params)
    table = LatentTable(store, "latents_test", latents)
    sources = {"table": TableText(store, TABLE, version, encoder.identity),
               "online": OnlineText(encoder)}
    for rank in range(2):
        made = {name: LatentBatches(table, source, {8: BucketRule(2)}, world=2, rank=rank,
                                    seed=0, text_dropout=0.5)
                for name, source in sources.items()}
        for step in range(4):
            a, b = made["table"](step), made["online"](step)
            assert torch.equal(a.latent, b.latent) and torch.equal(a.text_mask, b.text_mask)
            torch.testing.assert_close(a.text, b.text, rtol=0, atol=1e-6)  # batch of 1 vs B
            torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=1e-6)


def test_a_text_with_no_row_is_named_with_the_table_version(tmp_path, text_params, encoder):
    store = Store(str(tmp_path / "store"))
    version, _ = embed(store, text_params, texts=TEXTS[:1])
    texts = TableText(store, TABLE, version, encoder.identity)
    with pytest.raises(ValueError, match=rf"text_embeds@{version} has no embedding of 1 texts"
                                         r".*'a blue square moves up'.*dvc repro text_embed"):
        texts(TEXTS[:2])
    with pytest.raises(ValueError, match="has no embedding"):  # another encoder's identity
        TableText(store, TABLE, version, encoder.identity.replace("max_length=16", "max_length=17"))


def test_a_corrupt_row_is_named(tmp_path, text_params):
    store = Store(str(tmp_path / "store"))
    version, _ = embed(store, text_params, texts=TEXTS[:1])
    row = store.read(TABLE, version).to_pylist()[0]
    row["seq"] = row["seq"][:-2]
    with pytest.raises(ValueError, match=rf"text_embeds@{version}: row {row['id']} .* bytes do "
                                         r"not hold .* rerun the text_embed stage"):
        read_embedding(row, f"{TABLE}@{version}")


def test_a_key_clash_in_the_first_64_bits_is_caught(tmp_path, encoder):
    """A row whose key shares the looked-up key's first 64 bits (and comes first) is refused."""
    from osora.schemas import TEXT_EMBEDS

    emb = encoder.encode(["", "a"])
    key = text_key(encoder.identity, "a")
    rows = [embedding_row(key[:16] + "f" * 16, "impostor", encoder.identity, emb.seq[1],
                          emb.mask[1], emb.pooled[1], "float32"),
            *(embedding_row(text_key(encoder.identity, t), t, encoder.identity, emb.seq[i],
                            emb.mask[i], emb.pooled[i], "float32")
              for i, t in enumerate(["", "a"]))]
    store = Store(str(tmp_path / "store"))
    version = store.write(TABLE, pa.Table.from_pylist(rows, schema=TEXT_EMBEDS))
    with pytest.raises(ValueError, match="64-bit key clash"):
        TableText(store, TABLE, version, encoder.identity)(["a"])


def test_a_stage_gets_the_text_source_its_params_name(tmp_path, text_params):
    from osora.train.text_source import build_text_source

    settings = load_settings()
    params = settings.dit.model_copy(update={"text": text_params})
    store = Store(str(tmp_path / "store"))
    with pytest.raises(ValueError, match="stage stage1 reads its text embeddings from the "
                                         "text_embeds table.*give the text_embed stage's receipt"):
        build_text_source(params, "stage1", store, None)
    version, _ = embed(store, text_params, texts=TEXTS[:1])
    assert isinstance(build_text_source(params, "stage1", store, version), TableText)
    stages = {name: stage.model_copy(update={"text_source": "online"})
              for name, stage in params.train.stages.items()}
    online = params.model_copy(update={"train": params.train.model_copy(
        update={"stages": stages})})
    assert isinstance(build_text_source(online, "stage1", store, None), OnlineText)
