"""The adapter's batches: torchtitan's (input_dict, labels) round-trip osora's LatentBatch,
labels count the [text; video] tokens, the loader resumes from its state, and the "latents"
source is osora's LatentBatches over params' latents table read from the store."""

import pytest
import torch

from osora.data.latents import latent_columns
from osora.titan.data import StepBatches, SyntheticLatents, build_osora_dataloader, from_titan
from osora.titan.job_config import Osora
from osora.titan.spec import register


def test_synthetic_batches_round_trip_and_resume():
    cfg = register().model_args["tiny"].mmdit
    p = cfg.patch_size  # the tiny model's: 2
    source = SyntheticLatents(cfg, Osora(latent_frames=2, latent_height=4, latent_width=6,
                                         text_tokens=5), 3, seed=7, rank=1)
    loader = StepBatches(source, cfg.patch_size)
    items = iter(loader)
    first, second = next(items), next(items)
    inputs, labels = first
    assert set(inputs) == {"latent", "text", "pooled"}
    assert inputs["latent"].shape == (3, cfg.in_channels, 2, 4, 6)
    assert labels.shape == (3, 5 + 2 * (4 // p) * (6 // p)) and labels.dtype == torch.bool
    assert labels.all()
    batch = from_titan(inputs)
    assert batch.text_mask is None and batch.cond is None
    assert torch.equal(batch.latent, source(0).latent)
    resumed = StepBatches(source, cfg.patch_size)
    resumed.load_state_dict({"next_index": 1})
    assert loader.state_dict() == {"next_index": 2}
    assert torch.equal(next(iter(resumed))[0]["latent"], second[0]["latent"])
    other_rank = SyntheticLatents(cfg, Osora(), 3, seed=7, rank=0)(0)
    assert not torch.equal(other_rank.pooled, source(0).pooled)


def test_latents_source_is_osoras_latent_batches(tmp_path, monkeypatch):
    pytest.importorskip("lance")
    import pyarrow as pa
    from torchtitan.config import JobConfig

    from osora.config import load_settings
    from osora.data.text_embeds import NULL_TEXT, embedding_row, text_key
    from osora.models.text import build_text_encoder
    from osora.schemas import LATENTS, TEXT_EMBEDS
    from osora.store import Store
    from osora.train.dit_batches import LatentBatches
    from osora.train.dit_setup import bucket_rules
    from osora.train.latent_table import LatentTable
    from osora.train.text_source import OnlineText

    monkeypatch.setenv("OSORA_STORE__URI", str(tmp_path / "store"))
    settings = load_settings()
    stage = settings.dit.train.stages["stage1"]
    frames = 32  # a stage-1 bucket of params/buckets.yaml: batch_size 4
    size = settings.buckets.stages["stage1"][frames].batch_size
    g = torch.Generator().manual_seed(0)
    rows = [{"id": f"c{i}", "video_id": "v", "text": f"a red square moves {i}", "fps": 24.0,
             "frames": frames, "height": 32, "width": 32, "dit_scale": True,
             "ae_kind": "dcae", "ae_sha256": "0" * 64,
             **latent_columns(torch.randn(16, 2, 4, 4, generator=g), "float32")}
            for i in range(size)]
    store, table = Store.from_settings(settings.store), f"latents_{stage.latents}"
    version = store.write(table, pa.Table.from_pylist(rows, schema=LATENTS))
    encoder = build_text_encoder(settings.dit.text)
    texts = [NULL_TEXT, *(r["text"] for r in rows)]  # stage 1 reads the text_embed table
    emb = encoder.encode(texts)
    store.write("text_embeds", pa.Table.from_pylist(
        [embedding_row(text_key(encoder.identity, t), t, encoder.identity, emb.seq[i],
                       emb.mask[i], emb.pooled[i], "float32") for i, t in enumerate(texts)],
        schema=TEXT_EMBEDS))
    assert stage.text_source == "table"
    config = JobConfig()
    config.osora = Osora(source="latents", profile="tiny", stage="stage1")
    config.model.name, config.model.flavor = "osora_mmdit", "tiny"
    inputs, labels = next(iter(build_osora_dataloader(1, 0, None, config)))
    text = settings.dit.text
    want = LatentBatches(LatentTable(store, table, version),
                         OnlineText(encoder),
                         bucket_rules(settings.buckets, "stage1"), world=1, rank=0, seed=0,
                         text_dropout=settings.dit.conditioning.text_dropout)(0)
    got = from_titan(inputs)
    for name in ("latent", "text", "pooled", "text_mask"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name))
    assert got.cond is None and stage.conditioned is False
    p = settings.dit.model.patch_size
    assert labels.shape == (size, text.max_length + 2 * (4 // p) * (4 // p))
    model = register().model_cls(register().model_args["tiny"])
    v = model(got.latent, torch.rand(size), got.text, got.pooled, text_mask=got.text_mask)
    assert v.shape == got.latent.shape
