"""Captions from a VLM behind an OpenAI-compatible `/chat/completions` endpoint.

vLLM, SGLang and hosted Qwen-VL services all speak this protocol, so one client covers the
paper's captioners (LLaVA-Video, Qwen 2.5). The clip's frames go as JPEG data URLs in one user
message, followed by the six-aspect prompt; decoding is greedy (temperature 0) so a caption can
be reproduced. Transient failures (timeouts, refused connections, 429, 5xx, malformed replies)
are retried with exponential backoff and jitter, honouring Retry-After; a clip that still has
no caption is quarantined with the reasons, never given a made-up one. The API key is read
from the environment variable named in params and is never logged.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import time
from email.utils import parsedate_to_datetime
from typing import Any

import numpy as np
import requests

from osora.config.data import OpenAICaptionParams
from osora.data.captions.base import (
    Captioner,
    CaptionerConfigError,
    CaptionError,
    CaptionerUnavailable,
    check_frames,
    clean_caption,
)
from osora.data.captions.prompt import PROMPT_VERSION, prompt_text
from osora.data.captions.ratelimit import RateLimiter, shared_limiter

log = logging.getLogger(__name__)

JPEG_QUALITY = 90  # high enough that compression artefacts do not become "style"
# Status codes after which every other clip would fail the same way: stop the run.
_CONFIG_STATUSES = {401: "the key was refused", 403: "access is forbidden", 404: "not found"}


class _RetryableReply(Exception):
    """A reply worth trying again: `reason` says what was wrong, `retry_after_s` what the
    server asked to wait (None: use the backoff)."""

    def __init__(self, reason: str, retry_after_s: float | None = None, *,
                 unreachable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        # The endpoint did not answer, or said it is down or overloaded: no fault of the clip.
        self.unreachable = unreachable


# Replies that say the server (or a proxy before it) is down or overloaded, not that this
# request is wrong; HTTP 500 may be either, so it quarantines the clip after the retries.
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


class OpenAICaptioner(Captioner):
    prompt_version = PROMPT_VERSION

    def __init__(self, params: OpenAICaptionParams):
        if not params.base_url:
            raise ValueError(
                "captions.openai.base_url is null: set the endpoint, e.g. http://127.0.0.1:8000/v1"
            )
        self.params = params
        self.name = f"openai:{params.model}"
        self.num_frames = params.num_frames
        self.url = params.base_url.rstrip("/") + "/chat/completions"
        self._session: requests.Session | None = None
        self._limiter: RateLimiter | None = None

    def setup(self) -> None:
        self._session = requests.Session()
        self._limiter = shared_limiter(self.url, self.params.requests_per_minute)

    def caption(self, frames: np.ndarray, hint: str | None = None) -> str:
        """The endpoint's caption of `frames`. The hint is not sent: a source video's caption
        may describe other shots than this clip's, and the prompt stays the versioned one."""
        check_frames(frames, self.num_frames)
        if self._session is None:
            self.setup()
        return self._post_with_retries(self.request_body(frames))

    def request_body(self, frames: np.ndarray) -> dict[str, Any]:
        """The chat-completions request: frames first, in time order, then the prompt."""
        images = [{"type": "image_url", "image_url": {"url": jpeg_data_url(f)}} for f in frames]
        text = {"type": "text", "text": prompt_text(len(frames))}
        return {
            "model": self.params.model,
            "messages": [{"role": "user", "content": [*images, text]}],
            "max_tokens": self.params.max_tokens,
            "temperature": 0.0,
        }

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.params.api_key_env, "").strip()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _post_with_retries(self, body: dict[str, Any]) -> str:
        assert self._session is not None and self._limiter is not None
        p = self.params
        failures: list[str] = []
        unreachable = True
        for attempt in range(p.max_retries + 1):
            self._limiter.acquire()
            try:
                return self._post_once(body)
            except _RetryableReply as err:
                failures.append(err.reason)
                unreachable = unreachable and err.unreachable
                if attempt == p.max_retries:
                    break
                server_wait = err.retry_after_s
                wait = server_wait if server_wait is not None else backoff_s(
                    attempt, p.backoff_s, p.max_backoff_s)
                log.warning("%s: try %d of %d failed (%s); retrying in %.2f s",
                            self.url, attempt + 1, p.max_retries + 1, err.reason, wait)
                if server_wait is not None:
                    # Retry-After holds every request of this process (the next acquire waits).
                    self._limiter.hold(server_wait)
                else:
                    time.sleep(wait)
        if unreachable:  # the endpoint is down: a broken environment, stop the stage
            raise CaptionerUnavailable(
                f"captioning endpoint {self.url} did not answer in {len(failures)} tries "
                f"({'; '.join(failures)}); start it or fix captions.openai.base_url, then rerun"
            )
        raise CaptionError(
            f"{self.url} gave no caption in {len(failures)} tries ({'; '.join(failures)}); "
            "check that the endpoint is up, speaks the OpenAI chat API and is not overloaded, "
            "or raise captions.openai.timeout_s / max_retries"
        )

    def _post_once(self, body: dict[str, Any]) -> str:
        assert self._session is not None
        try:
            reply = self._session.post(
                self.url, json=body, headers=self._headers(), timeout=self.params.timeout_s
            )
        except requests.Timeout:
            raise _RetryableReply(f"no reply within {self.params.timeout_s:g} s",
                                  unreachable=True) from None
        except requests.ConnectionError as err:
            raise _RetryableReply(f"connection failed ({type(err).__name__})",
                                  unreachable=True) from None
        status = reply.status_code
        if status == 429 or status >= 500:
            raise _RetryableReply(f"HTTP {status}", retry_after(reply.headers.get("Retry-After")),
                                  unreachable=status in _UNAVAILABLE_STATUSES)
        if status in _CONFIG_STATUSES:
            raise CaptionerConfigError(
                f"{self.url}: HTTP {status}, {_CONFIG_STATUSES[status]} ({_snippet(reply.text)}); "
                f"check captions.openai.base_url and model ({self.params.model!r}) and the key "
                f"in the environment variable {self.params.api_key_env}"
            )
        if status >= 400:  # this request is wrong, e.g. too many image tokens for the model
            raise CaptionError(
                f"{self.url} refused the request: HTTP {status} ({_snippet(reply.text)}); "
                "fewer or smaller frames (captions.openai.num_frames) may fit"
            )
        return parse_caption(reply)


def parse_caption(reply: requests.Response) -> str:
    """choices[0].message.content of a chat-completions reply, as clean text; a reply that is
    not that (not JSON, no choices, empty content) is retryable: servers under load emit such
    replies transiently."""
    try:
        data = reply.json()
    except ValueError:
        raise _RetryableReply(f"reply is not JSON: {_snippet(reply.text)}") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _RetryableReply(
            f"reply has no choices[0].message.content: {_snippet(reply.text)}"
        ) from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise _RetryableReply(f"reply content is not text: {_snippet(reply.text)}")
    try:
        return clean_caption(content, "the endpoint")
    except CaptionError as err:
        raise _RetryableReply(err.reason) from None


def jpeg_data_url(frame: np.ndarray) -> str:
    """A (H, W, 3) uint8 RGB frame as a base64 JPEG data URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def backoff_s(attempt: int, first_s: float, max_s: float) -> float:
    """Wait before retry `attempt + 1`: first_s · 2^attempt capped at max_s, of which a random
    half or more ("equal jitter"), so workers that failed together do not retry together."""
    wait = min(max_s, first_s * 2**attempt)
    return random.uniform(wait / 2, wait)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")
