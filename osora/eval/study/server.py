"""The rating server (stdlib http.server): the page, the study's media, and a small JSON API.

    GET  /                       the rating page
    GET  /media/<name>.mp4       a video listed in items.json (HTTP Range, so <video> can seek)
    GET  /api/next?rater=R       R's next unanswered item and progress {done, total}
    POST /api/answer             {rater, item, visual_quality, prompt_adherence, motion_quality}
                                 stored durably, then answered with R's next item

Nothing else in the study folder is reachable: key.json never leaves the disk. It binds
127.0.0.1; put a reverse proxy or an SSH tunnel in front to reach raters elsewhere.

Like the MLflow UI, it answers only requests addressed to itself (`Host` is the bound address:
DNS rebinding is refused) and stores an answer only from its own page (a same-origin JSON POST:
another site's form or fetch in the rater's browser is refused), see `refusal`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import re
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from osora.eval.study.answers import AnswerStore, check_rater
from osora.eval.study.layout import ANSWERS, ITEMS, KEY, MEDIA, read_study_json
from osora.eval.study.page import render_page

MAX_BODY_BYTES = 16 * 1024
CHUNK_BYTES = 256 * 1024


class StudyServer(ThreadingHTTPServer):
    """One study's items, media and answers behind HTTP."""

    daemon_threads = True

    def __init__(self, study_dir: Path, address: tuple[str, int]):
        study_dir = Path(study_dir)
        self.host = address[0]  # as asked (a name stays a name): what Host must say
        items = read_study_json(study_dir, ITEMS)["items"]
        self.items = {item["id"]: item for item in items}
        self.media = {name: study_dir / MEDIA / name
                      for item in items for name in (item["left"], item["right"])}
        self.seed = read_study_json(study_dir, KEY)["seed"]  # the only thing read from the key
        self.store = AnswerStore(study_dir)
        self.page = render_page().encode()
        super().__init__(address, StudyHandler)

    def order(self, rater: str) -> list[str]:
        """The rater's item order: shuffled by a seed from the study seed and the rater id,
        so raters see different orders (order effects average out) and a resume is exact."""
        digest = hashlib.sha256(f"{self.seed}:{rater}".encode()).digest()
        ids = list(self.items)
        random.Random(int.from_bytes(digest[:8], "big")).shuffle(ids)
        return ids

    def next_for(self, rater: str) -> dict:
        answered = self.store.answers(check_rater(rater))
        todo = [item for item in self.order(rater) if item not in answered]
        served = None
        if todo:
            item = self.items[todo[0]]
            served = {"id": item["id"], "prompt": item["prompt"],
                      "left": f"/{MEDIA}/{item['left']}", "right": f"/{MEDIA}/{item['right']}"}
        done = len(self.items) - len(todo)
        return {"item": served, "progress": {"done": done, "total": len(self.items)}}

    def answer(self, body: dict) -> dict:
        rater, item = check_rater(body.get("rater")), body.get("item")
        if not isinstance(item, str) or item not in self.items:
            raise ValueError(f"unknown item {item!r}: reload the page")
        self.store.record(rater, item, body)
        return self.next_for(rater)


class StudyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: <video> makes many range requests
    server: StudyServer

    def parse_request(self) -> bool:
        """http.server's parsing, then `refusal` before any do_*: a refused request is
        answered here and never reaches the handlers (nothing of it is stored)."""
        if not super().parse_request():
            return False
        refused = refusal(self.command, self.headers, self.server.host, self.server.server_port)
        if refused is None:
            return True
        status, why = refused
        self.close_connection = True  # its body, if any, is left unread
        self._send(status, f"{why}\n".encode(), "text/plain; charset=utf-8",
                   {"Connection": "close", "Cache-Control": "no-store"})
        return False

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        media = self.server.media.get(url.path.removeprefix(f"/{MEDIA}/"))
        if url.path == "/":
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8",
                       {"Content-Security-Policy": _PAGE_CSP})
        elif url.path.startswith(f"/{MEDIA}/") and media is not None:
            self._send_file(media)
        elif url.path == "/api/next":
            rater = parse_qs(url.query).get("rater", [""])[0]
            self._json(lambda: self.server.next_for(rater))
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page {url.path}"})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/api/answer":
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "POST only to /api/answer"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            self._send_json(HTTPStatus.BAD_REQUEST,
                            {"error": f"body must be 1..{MAX_BODY_BYTES} bytes of JSON"})
            self.close_connection = True  # an unread body would desynchronise keep-alive
            return
        raw = self.rfile.read(length)
        self._json(lambda: self.server.answer(_json_object(raw)))

    def _json(self, compute) -> None:
        try:
            reply = compute()
        except ValueError as err:  # the client's mistake: say which
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        self._send_json(HTTPStatus.OK, reply)

    def _send_json(self, status: HTTPStatus, value: dict) -> None:
        self._send(status, json.dumps(value).encode(), "application/json",
                   {"Cache-Control": "no-store"})

    def _send(self, status: HTTPStatus, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, path: Path) -> None:
        size = path.stat().st_size
        try:
            span = byte_range(self.headers.get("Range"), size)
        except RangeNotSatisfiable:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = span or (0, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if span else HTTPStatus.OK)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        try:
            with open(path, "rb") as f:
                f.seek(start)
                left = end - start + 1
                while left > 0 and (chunk := f.read(min(CHUNK_BYTES, left))):
                    self.wfile.write(chunk)
                    left -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):  # the player moved on (a seek)
            self.close_connection = True


SAFE_METHODS = ("GET", "HEAD")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SAME_SITE_FETCH = ("same-origin", "none")  # Sec-Fetch-Site of the page's own fetch / typed URL


def allowed_hosts(host: str, port: int) -> set[str]:
    """The `Host` values that name this server: every loopback spelling when bound to
    loopback (a rater may type any of them), else only the bound host itself."""
    names = LOOPBACK_NAMES if _is_loopback(host) else (f"[{host}]" if ":" in host else host,)
    return {f"{name}:{port}".lower() for name in names}


def refusal(method: str, headers: Mapping[str, str], host: str,
            port: int) -> tuple[HTTPStatus, str] | None:
    """None when the request may be served, else (status, why), as the MLflow UI decides:

    - `Host` must name this server, else a page on another domain that re-points its DNS at
      127.0.0.1 (DNS rebinding) could read and write the study as if it were same-origin;
    - a state-changing request must come from the server's own page: an `Origin` (browsers
      send it on every POST) of this server, else, without Origin, a `Sec-Fetch-Site` of
      same-origin or none; a request with neither is no browser's cross-site request (curl);
    - and its body must be `application/json`: an HTML form cannot send that type, and a
      cross-site fetch can only after a CORS preflight, which this server refuses.

    `headers` is looked up by name (http.server's headers ignore case)."""
    allowed = allowed_hosts(host, port)
    if (headers.get("Host") or "").lower() not in allowed:
        return HTTPStatus.FORBIDDEN, (f"refused: Host {headers.get('Host')!r} is not this "
                                      f"server (use http://{min(allowed)}/)")
    if method in SAFE_METHODS:
        return None
    origin, fetch_site = headers.get("Origin"), headers.get("Sec-Fetch-Site")
    if origin is not None and origin.lower() not in {f"http://{name}" for name in allowed}:
        return HTTPStatus.FORBIDDEN, f"refused: cross-origin {method} from {origin!r}"
    if origin is None and fetch_site is not None and fetch_site not in SAME_SITE_FETCH:
        return HTTPStatus.FORBIDDEN, f"refused: {fetch_site} {method} (Sec-Fetch-Site)"
    media_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, (f"refused: {method} body must be "
                                                   f"application/json, not {media_type!r}")
    return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


_PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
             "media-src 'self'; connect-src 'self'")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(ValueError):
    """The requested range starts past the end of the file (HTTP 416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `Range: bytes=a-b`, `a-` or `-n`; None to send the whole
    file (no header, or one this server ignores, as RFC 9110 allows: multiple ranges, bad
    syntax). Raises RangeNotSatisfiable when the range starts past the end."""
    match = _RANGE.fullmatch((header or "").strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last n bytes
        n = int(last)
        if not (n and size):
            raise RangeNotSatisfiable(header)
        return max(size - n, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(header)
    return None if end < start else (start, end)


def _json_object(raw: bytes) -> dict:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"body is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError("body must be a JSON object")
    return value


def serve(study_dir: Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the study until interrupted, printing the page's URL first (port 0: any free)."""
    server = StudyServer(Path(study_dir), (host, port))
    print(f"Rating page: http://{host}:{server.server_port}/ (Ctrl-C stops; every answer is "
          f"saved when submitted, in {Path(study_dir) / ANSWERS})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
