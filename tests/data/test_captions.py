"""Captions: the sidecar backend against the synthetic set's truth, the OpenAI-compatible client
against a scripted local server (good replies, timeouts, garbage, 429, rate limit), and the local
transformers backend on a tiny random LLaVA built and saved here, so the real loading and
generation code runs offline."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from pydantic import ValidationError

from osora.config import load_settings
from osora.config.data import CaptionsParams
from osora.config.store import StoreSettings
from osora.data.captions import (
    PROMPT_VERSION,
    CaptionerConfigError,
    CaptionError,
    CaptionerUnavailable,
    CaptionOperator,
    prompt_text,
)
from osora.data.captions.local import LocalCaptioner
from osora.data.captions.openai import OpenAICaptioner, retry_after
from osora.data.ingest import sidecar_caption
from osora.data.operator import EnvironmentFault, OperatorError
from osora.media.frames import read_frames, spaced_indices
from osora.prompts import conditioned_text
from osora.schemas import schema_of
from osora.store import Store

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"
KEY_ENV = "OSORA_TEST_CAPTION_KEY"
SECRET = "sk-test-do-not-log-1234"
MODEL = "Qwen2.5-VL-7B-Instruct"
GOOD = "A red circle moves from left to right across a mottled blue texture."


# ---------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible server.


@dataclass
class Reply:
    """What the fake server does with one request: wait `delay_s`, then answer."""

    status: int = 200
    body: dict | str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def ok(text: str = GOOD) -> Reply:
    return Reply(body={
        "id": "chatcmpl-1", "object": "chat.completion", "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
    })


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict
    at: float  # time.monotonic() on arrival


class FakeOpenAI:
    """/v1/chat/completions on 127.0.0.1 (port 0): request i gets script[i] (the last step
    repeats) and is recorded before the reply is sent."""

    def __init__(self, script: list[Reply]):
        self.script = script
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reply = fake._record(self.path, dict(self.headers), raw)
                if reply.delay_s:
                    fake._stop.wait(reply.delay_s)  # returns at once when the test ends
                body = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                data = body.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _record(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        with self._lock:
            self.seen.append(Seen(path, headers, json.loads(raw), time.monotonic()))
            return self.script[min(len(self.seen), len(self.script)) - 1]

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_openai():
    servers: list[FakeOpenAI] = []

    def start(*script: Reply) -> FakeOpenAI:
        servers.append(FakeOpenAI(list(script)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def captions_params(backend: str = "openai", **overrides) -> CaptionsParams:
    """The tiny profile's captions section with this backend and openai/local overrides given
    as `openai={...}` / `local={...}`; test defaults retry fast and never rate-limit."""
    base = load_settings(params_dir=PARAMS_DIR).data.captions.model_dump()
    base["backend"] = backend
    base["openai"].update(api_key_env=KEY_ENV, timeout_s=5.0, max_retries=2, backoff_s=0.01,
                          max_backoff_s=0.05, requests_per_minute=60000.0, num_frames=4,
                          max_tokens=64)
    for section in ("openai", "local"):
        base[section].update(overrides.get(section, {}))
    return CaptionsParams.model_validate(base)


def openai_captioner(base_url: str, **overrides) -> OpenAICaptioner:
    return OpenAICaptioner(captions_params(openai={"base_url": base_url, **overrides}).openai)


def frames(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 36, 64, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Clip rows from the synthetic set (each video standing in for its single clip).


def clip_row(folder: Path, video) -> dict:
    path = folder / video.file
    return {
        "id": f"{video.stem}-0", "video_id": video.stem, "uri": str(path),
        "num_frames": video.num_frames, "fps": float(video.fps),
        "source_caption": sidecar_caption(path),  # what ingest puts in videos.caption
    }


@pytest.fixture(scope="module")
def clean_clip(synth_set) -> dict:
    folder, videos = synth_set
    return clip_row(folder, next(v for v in videos if v.stem.startswith("clean_")))


@pytest.fixture
def local_store(tmp_path: Path) -> StoreSettings:
    return StoreSettings(uri=str(tmp_path / "store"))


def validate(rows: list[dict]) -> pa.Table:
    """The rows as a `captions` table: raises if a column is missing or mistyped."""
    table = pa.Table.from_pylist(rows, schema=schema_of("captions"))
    assert table.column_names == schema_of("captions").names
    return table


def decode_data_url(url: str) -> np.ndarray:
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# The prompt and the params.


def test_prompt_asks_for_the_six_aspects():
    text = prompt_text(8)
    assert PROMPT_VERSION == "six-aspect-v1"
    assert "The 8 images are frames" in text
    for words in ("main subjects", "actions", "background and environment",
                  "lighting and atmosphere", "camera", "style", "realistic", "cinematic", "3D",
                  "animation"):
        assert words in text, words
    with pytest.raises(ValueError, match="at least one frame"):
        prompt_text(0)


def test_params_refuse_a_vlm_backend_without_its_model():
    with pytest.raises(ValidationError, match="openai.base_url is null"):
        captions_params("openai")
    with pytest.raises(ValidationError, match="local.model_path is null"):
        captions_params("local")
    with pytest.raises(ValidationError, match="max_backoff_s"):
        captions_params(openai={"base_url": "http://x/v1", "backoff_s": 2, "max_backoff_s": 1})
    assert load_settings(params_dir=PARAMS_DIR).data.captions.backend == "sidecar"


# ---------------------------------------------------------------------------------------------
# Sidecar.


def test_sidecar_captions_are_the_synthetic_truth(synth_set, local_store, tmp_path):
    folder, videos = synth_set
    op = CaptionOperator(captions_params("sidecar"), local_store)
    op.setup()
    rows = [row for v in videos for row in op.process(clip_row(folder, v))]
    assert [r["caption"] for r in rows] == [v.caption for v in videos]
    assert {(r["captioner"], r["prompt_version"]) for r in rows} == {("sidecar", None)}
    store = Store(str(tmp_path / "tables"))
    store.write("captions", validate(rows))
    assert store.read("captions").num_rows == len(videos)


@pytest.mark.parametrize("source_caption", [None, "  \n"])
def test_sidecar_without_caption_quarantines_the_clip(clean_clip, local_store, source_caption):
    op = CaptionOperator(captions_params("sidecar"), local_store)
    with pytest.raises(OperatorError) as err:
        op.process({**clean_clip, "source_caption": source_caption})
    reason = err.value.reason
    assert f"clip {clean_clip['id']} ({clean_clip['uri']})" in reason
    assert "no sidecar caption" in reason and "configure the openai or local captioner" in reason


def test_rows_without_the_joined_caption_are_a_wiring_error(clean_clip, local_store):
    op = CaptionOperator(captions_params("sidecar"), local_store)
    row = {k: v for k, v in clean_clip.items() if k != "source_caption"}
    with pytest.raises(ValueError, match=r"lacks columns \['source_caption'\]"):
        op.process(row)


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible endpoint.


def test_openai_sends_frames_prompt_model_and_key(fake_openai, clean_clip, local_store,
                                                  monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server = fake_openai(ok("  A red circle\nmoves right.  "))
    params = captions_params(openai={"base_url": server.base_url, "num_frames": 5})
    op = CaptionOperator(params, local_store)
    op.setup()
    with caplog.at_level(logging.DEBUG):
        rows = op.process(clean_clip)

    assert rows == [{"id": clean_clip["id"], "caption": "A red circle moves right.",
                     "captioner": f"openai:{MODEL}", "prompt_version": PROMPT_VERSION}]
    validate(rows)
    [seen] = server.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in caplog.text
    body = seen.body
    assert (body["model"], body["max_tokens"], body["temperature"]) == (MODEL, 64, 0.0)
    [message] = body["messages"]
    assert message["role"] == "user"
    *images, text = message["content"]
    assert text == {"type": "text", "text": prompt_text(5)}
    assert len(images) == 5 and {i["type"] for i in images} == {"image_url"}
    # The frames sent are the clip's evenly spaced frames, in order (up to JPEG loss).
    expected = read_frames(clean_clip["uri"], spaced_indices(clean_clip["num_frames"], 5))
    sent = np.stack([decode_data_url(i["image_url"]["url"]) for i in images])
    assert sent.shape == expected.shape
    assert np.abs(sent.astype(float) - expected).mean() < 6.0
    # The caption becomes training text through the one shared format.
    assert (conditioned_text(rows[0]["caption"], clean_clip["fps"], 3.6)
            == "A red circle moves right. 24 FPS, 4 motion score.")


def test_openai_without_a_key_sends_no_authorization(fake_openai, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server = fake_openai(ok())
    assert openai_captioner(server.base_url).caption(frames(), None) == GOOD
    assert "Authorization" not in server.seen[0].headers


def test_openai_retries_a_timeout_then_succeeds(fake_openai):
    server = fake_openai(Reply(delay_s=3.0), ok())
    captioner = openai_captioner(server.base_url, timeout_s=0.3)
    start = time.monotonic()
    assert captioner.caption(frames(), None) == GOOD
    elapsed = time.monotonic() - start
    assert len(server.seen) == 2
    assert 0.3 <= elapsed < 2.0, elapsed  # one timeout, a short backoff, one good reply


def test_openai_gives_up_after_max_retries_of_timeouts(fake_openai):
    server = fake_openai(Reply(delay_s=5.0))
    captioner = openai_captioner(server.base_url, timeout_s=0.25, max_retries=2)
    start = time.monotonic()
    with pytest.raises(CaptionerUnavailable) as err:
        captioner.caption(frames(), None)
    elapsed = time.monotonic() - start
    # An endpoint that does not answer is the environment's fault: the runner stops the
    # stage and records nothing for the clip, rather than quarantining it.
    assert isinstance(err.value, EnvironmentFault) and not isinstance(err.value, OperatorError)
    assert len(server.seen) == 3  # the first try and two retries
    # Three 0.25 s timeouts plus backoffs of at most 0.01 and 0.02 s (+ overhead).
    assert 0.75 <= elapsed < 1.75, elapsed
    assert f"endpoint {server.base_url}/chat/completions did not answer in 3 tries" \
        in str(err.value)
    assert str(err.value).count("no reply within 0.25 s") == 3


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(body="<html>upstream busy</html>"), "reply is not JSON: '<html>upstream busy"),
        (Reply(body={"object": "error", "message": "oops"}), "no choices[0].message.content"),
        (Reply(body={"choices": []}), "no choices[0].message.content"),
        (ok("   \n "), "the endpoint returned an empty caption"),
        (Reply(body={"choices": [{"message": {"content": None}}]}), "reply content is not text"),
    ],
    ids=["not-json", "no-choices", "empty-choices", "empty-caption", "null-content"],
)
def test_openai_garbage_is_retried_then_quarantined(fake_openai, reply, reason):
    server = fake_openai(reply)
    with pytest.raises(CaptionError) as err:
        openai_captioner(server.base_url, max_retries=1).caption(frames(), None)
    assert len(server.seen) == 2
    assert "gave no caption in 2 tries" in err.value.reason
    assert reason in err.value.reason


def test_openai_honours_retry_after_on_429(fake_openai):
    server = fake_openai(Reply(429, {"error": "slow down"}, {"Retry-After": "1"}), ok())
    start = time.monotonic()
    assert openai_captioner(server.base_url).caption(frames(), None) == GOOD
    elapsed = time.monotonic() - start
    first, second = server.seen
    assert second.at - first.at >= 0.95, second.at - first.at  # not the 0.01 s backoff
    assert elapsed < 3.0


def test_openai_retries_server_errors(fake_openai):
    server = fake_openai(Reply(503, "overloaded"), Reply(500, "boom"), ok())
    assert openai_captioner(server.base_url).caption(frames(), None) == GOOD
    assert len(server.seen) == 3


def test_openai_retries_refused_connections():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    captioner = openai_captioner(f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(CaptionerUnavailable, match="2 tries.*connection failed"):
        captioner.caption(frames(), None)


def test_openai_server_errors_on_one_clip_quarantine_it(fake_openai):
    """HTTP 500 every time may be this request's fault (vLLM failing on one image): the clip
    is quarantined, and the runner's one-cause guard stops a stage where all clips fail."""
    server = fake_openai(Reply(500, "boom"), Reply(500, "boom"))
    with pytest.raises(CaptionError, match="gave no caption in 2 tries.*HTTP 500"):
        openai_captioner(server.base_url, max_retries=1).caption(frames(), None)


def test_openai_bad_key_stops_the_run(fake_openai, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server = fake_openai(Reply(401, {"error": "invalid api key"}))
    with caplog.at_level(logging.DEBUG), pytest.raises(CaptionerConfigError) as err:
        openai_captioner(server.base_url).caption(frames(), None)
    assert not isinstance(err.value, OperatorError)  # not a per-clip problem
    assert len(server.seen) == 1
    assert KEY_ENV in str(err.value) and SECRET not in str(err.value) + caplog.text


def test_openai_refused_request_quarantines_without_retry(fake_openai):
    server = fake_openai(Reply(400, {"error": "too many images"}))
    with pytest.raises(CaptionError, match="HTTP 400.*too many images.*num_frames"):
        openai_captioner(server.base_url).caption(frames(), None)
    assert len(server.seen) == 1


def test_openai_rate_limit_spaces_requests(fake_openai):
    server = fake_openai(ok())
    captioner = openai_captioner(server.base_url, requests_per_minute=600)  # one per 0.1 s
    start = time.monotonic()
    for _ in range(4):
        captioner.caption(frames(), None)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 1.5, elapsed


def test_openai_rate_limit_is_shared_across_threads(fake_openai):
    server = fake_openai(ok())
    captioners = [openai_captioner(server.base_url, requests_per_minute=600) for _ in range(2)]
    threads = [threading.Thread(target=lambda c=c: [c.caption(frames(), None) for _ in range(3)])
               for c in captioners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    arrivals = sorted(s.at for s in server.seen)
    assert len(arrivals) == 6
    # The limiter spaces starts 0.1 s apart: 6 starts span 0.5 s (arrivals jitter a little);
    # two unshared limiters would let both threads through together, in about 0.2 s.
    assert arrivals[-1] - arrivals[0] >= 0.4, np.diff(arrivals)


def test_retry_after_header_forms():
    assert retry_after("3") == 3.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_openai_operator_reads_clips_from_s3(fake_openai, clean_clip, s3_server):
    settings = s3_server.store_settings("tests/captions")
    uri = Store.from_settings(settings).put_file(Path(clean_clip["uri"]), "clips/c/c-0.mp4")
    server = fake_openai(ok())
    op = CaptionOperator(captions_params(openai={"base_url": server.base_url}), settings)
    op.setup()
    [row] = op.process({**clean_clip, "uri": uri})
    assert row["caption"] == GOOD
    assert sum(p["type"] == "image_url" for p in server.seen[0].body["messages"][0]["content"]) == 4


def test_unreadable_clip_is_quarantined_before_any_request(fake_openai, synth_set, local_store):
    folder, videos = synth_set
    broken = next(v for v in videos if v.expected_reason == "unreadable")
    server = fake_openai(ok())
    op = CaptionOperator(captions_params(openai={"base_url": server.base_url}), local_store)
    with pytest.raises(OperatorError, match=f"clip {broken.stem}-0 .*cannot read frames"):
        op.process(clip_row(folder, broken))
    assert server.seen == []


def test_describe_tracks_what_changes_a_caption(local_store):
    def describe(**openai):
        params = captions_params(openai={"base_url": "http://127.0.0.1:1/v1", **openai})
        return CaptionOperator(params, local_store).describe()

    assert describe() == describe(requests_per_minute=1, timeout_s=1, max_retries=0)
    assert describe() != describe(num_frames=2)
    assert describe()["prompt_version"] == PROMPT_VERSION


# ---------------------------------------------------------------------------------------------
# Local transformers VLM: a tiny random LLaVA saved to disk, loaded through the Auto classes.

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def save_tiny_llava(folder: Path, chat_template: str | None) -> Path:
    """A LLaVA with a 1-layer CLIP tower (16 px images, 8 px patches) and a 1-layer Llama, a
    word-level tokenizer trained here, and a CLIP image processor: what AutoProcessor and
    AutoModelForImageTextToText load for LLaVA(-Video)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(
        ["a red circle moves from left to right across a mottled blue texture",
         "the camera is static . flat even lighting ; simple 2D animation of shapes"],
        trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<image>"]),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>", extra_special_tokens={"image_token": "<image>"},
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16},
                                              crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=chat_template,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=16, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                max_position_embeddings=1024, pad_token_id=0, bos_token_id=2,
                                eos_token_id=3),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("vlm") / "tiny-llava", TINY_CHAT_TEMPLATE)


def local_params(model_path: Path | str) -> CaptionsParams:
    return captions_params("local", local={"model_path": str(model_path), "num_frames": 3,
                                           "max_new_tokens": 16})


def test_local_vlm_captions_deterministically(tiny_llava, clean_clip, local_store):
    op = CaptionOperator(local_params(tiny_llava), local_store)
    op.setup()
    first, second = op.process(clean_clip), op.process(clean_clip)
    assert first == second
    [row] = first
    assert isinstance(row["caption"], str) and row["caption"].strip()
    assert row["captioner"] == "local:tiny-llava"
    assert row["prompt_version"] == PROMPT_VERSION
    validate(first)
    reloaded = CaptionOperator(local_params(tiny_llava), local_store)  # a fresh worker
    reloaded.setup()
    assert reloaded.process(clean_clip) == first


def test_local_vlm_chat_template_carries_images_and_prompt(tiny_llava):
    captioner = LocalCaptioner(local_params(tiny_llava).local)
    captioner.setup()
    # (transformers renders templates with trim_blocks: the newline after {% endfor %} goes)
    assert captioner.chat_text(3) == f"user:<image><image><image> {prompt_text(3)}assistant:"


def test_local_vlm_without_chat_template_uses_image_tokens(tiny_llava, tmp_path):
    folder = shutil.copytree(tiny_llava, tmp_path / "no-template")
    (folder / "chat_template.jinja").unlink()
    captioner = LocalCaptioner(local_params(folder).local)
    captioner.setup()
    assert captioner.chat_text(2) == f"<image><image>\n{prompt_text(2)}"
    assert captioner.caption(frames(2), None).strip()


@pytest.mark.parametrize("model_path", ["llava-hf/LLaVA-Video-7B-Qwen2-hf", "s3://b/model",
                                        "/no/such/folder"])
def test_local_vlm_refuses_anything_but_a_folder(model_path, local_store):
    with pytest.raises(ValueError, match="is not an existing local folder.*never downloads"):
        CaptionOperator(local_params(model_path), local_store)
