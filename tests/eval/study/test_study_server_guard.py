"""The rating server refuses forged requests (DNS rebinding, cross-site POSTs) as the MLflow UI
does: `refusal` decided directly, then over real HTTP with hand-written headers, checking that
nothing refused reaches the answers file."""

from __future__ import annotations

import http.client
import json
from email.message import Message
from http import HTTPStatus

import pytest
from study_fakes import ANSWER

from osora.eval.study.server import allowed_hosts, refusal

PORT = 8765
JSON = "application/json"


def _headers(**fields: str) -> Message:
    """Headers as http.server hands them over (names ignore case); `_` in a name is `-`."""
    message = Message()
    for name, value in fields.items():
        message[name.replace("_", "-")] = value
    return message


def _decide(method="POST", host="127.0.0.1", port=PORT, **fields):
    return refusal(method, _headers(**fields), host, port)


def test_allowed_hosts_are_the_bound_address():
    assert allowed_hosts("127.0.0.1", PORT) == {f"127.0.0.1:{PORT}", f"localhost:{PORT}",
                                                f"[::1]:{PORT}"}
    assert allowed_hosts("::1", PORT) == allowed_hosts("localhost", PORT)
    assert allowed_hosts("10.1.2.3", PORT) == {f"10.1.2.3:{PORT}"}
    assert allowed_hosts("fd00::1", PORT) == {f"[fd00::1]:{PORT}"}
    assert allowed_hosts("rate.example", PORT) == {f"rate.example:{PORT}"}


@pytest.mark.parametrize("fields", [
    {"Host": f"127.0.0.1:{PORT}"},
    {"Host": f"LOCALHOST:{PORT}"},
    {"Host": f"[::1]:{PORT}", "Origin": "http://evil.example"},  # GET: Origin is not asked
])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_reads_need_only_a_host_naming_this_server(method, fields):
    assert _decide(method, **fields) is None


@pytest.mark.parametrize("fields", [
    {"Host": f"127.0.0.1:{PORT}", "Content-Type": JSON,
     "Origin": f"http://127.0.0.1:{PORT}", "Sec-Fetch-Site": "same-origin"},  # the page
    {"Host": f"localhost:{PORT}", "Content-Type": f"{JSON}; charset=utf-8",
     "Origin": f"http://localhost:{PORT}"},
    {"Host": f"127.0.0.1:{PORT}", "Content-Type": JSON,
     "Origin": f"http://[::1]:{PORT}"},  # any loopback spelling of this server
    {"Host": f"127.0.0.1:{PORT}", "Content-Type": JSON, "Sec-Fetch-Site": "none"},
    {"Host": f"127.0.0.1:{PORT}", "Content-Type": JSON},  # curl: no browser, no forgery
])
def test_same_origin_json_posts_are_allowed(fields):
    assert _decide(**fields) is None


@pytest.mark.parametrize("fields, status, why", [
    ({"Host": None}, 403, "Host None"),  # None: the header is left out
    ({"Host": f"evil.example:{PORT}"}, 403, "evil.example"),  # DNS rebinding
    ({"Host": "127.0.0.1"}, 403, "is not this server"),
    ({"Host": f"127.0.0.1:{PORT + 1}"}, 403, "is not this server"),
    ({"Host": f"127.0.0.2:{PORT}"}, 403, "is not this server"),
    ({"Origin": "http://evil.example"}, 403, "cross-origin POST from 'http://evil.example'"),
    ({"Origin": "null"}, 403, "cross-origin"),  # sandboxed frame, file:// page
    ({"Origin": f"https://127.0.0.1:{PORT}"}, 403, "cross-origin"),
    ({"Origin": f"http://127.0.0.1:{PORT + 1}"}, 403, "cross-origin"),
    ({"Origin": f"http://evil.example:{PORT}"}, 403, "cross-origin"),
    ({"Sec-Fetch-Site": "cross-site"}, 403, "cross-site POST"),
    ({"Sec-Fetch-Site": "same-site"}, 403, "same-site POST"),
    ({"Content-Type": "text/plain"}, 415, "not 'text/plain'"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "application/json"),
    ({"Content-Type": None}, 415, "not ''"),
])
def test_forged_posts_are_refused_with_the_reason(fields, status, why):
    base = {"Host": f"127.0.0.1:{PORT}", "Content-Type": JSON}
    merged = {k: v for k, v in {**base, **fields}.items() if v is not None}
    refused = _decide(**merged)
    assert refused is not None and refused[0] == status and why in refused[1]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_every_method_but_get_and_head_is_state_changing(method):
    assert _decide(method, Host=f"127.0.0.1:{PORT}")[0] == HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    assert _decide(method, Host=f"127.0.0.1:{PORT}", Content_Type=JSON,
                   Origin="http://evil.example")[0] == HTTPStatus.FORBIDDEN


def test_bound_elsewhere_only_that_host_is_accepted():
    fields = {"Content-Type": JSON, "Origin": f"http://10.1.2.3:{PORT}"}
    assert _decide(host="10.1.2.3", Host=f"10.1.2.3:{PORT}", **fields) is None
    assert _decide(host="10.1.2.3", Host=f"127.0.0.1:{PORT}", **fields)[0] == 403
    assert _decide(host="10.1.2.3", Host=f"10.1.2.3:{PORT}", Content_Type=JSON,
                   Origin=f"http://127.0.0.1:{PORT}")[0] == 403


# Over real HTTP: http.client, so Host and every other header are exactly as written.

def _request(server, method, path, headers, body=b""):
    """(status, Content-Type, body) of one request on a fresh connection, sending only
    `headers` (no Host unless given)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        reply = conn.getresponse()
        return reply.status, reply.getheader("Content-Type"), reply.read()
    finally:
        conn.close()


def _answers(tmp_path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((tmp_path / "study" / "answers").glob("*"))}


def _good(port: int) -> dict[str, str]:
    """The headers Chromium sends with the page's own fetch POST."""
    return {"Host": f"127.0.0.1:{port}", "Content-Type": JSON,
            "Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}


def _next_body(server, rater="r1") -> bytes:
    item = server.next_for(rater)["item"]["id"]
    return json.dumps({"rater": rater, "item": item, **ANSWER}).encode()


def _forged(port: int) -> list[tuple[dict[str, str | None], int]]:
    """(headers changed from _good, None to drop one; expected status)."""
    return [
        ({"Host": None}, 403),
        ({"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}, 403),
        ({"Host": f"127.0.0.1:{port + 1}"}, 403),
        ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": None, "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": None}, 415),
    ]


def test_forged_requests_are_refused_over_http_and_nothing_is_stored(server, tmp_path):
    port = server.server_port
    status, _, reply = _request(server, "POST", "/api/answer", _good(port), _next_body(server))
    assert status == 200 and json.loads(reply)["progress"]["done"] == 1  # the page's POST works
    before = _answers(tmp_path)
    assert list(before) == ["r1.jsonl"]

    for change, expected in _forged(port):
        headers = {k: v for k, v in {**_good(port), **change}.items() if v is not None}
        for rater in ("r1", "r2"):  # an existing file must not grow, a new one not appear
            status, content_type, text = _request(server, "POST", "/api/answer", headers,
                                                  _next_body(server, rater))
            assert (status, content_type) == (expected, "text/plain; charset=utf-8"), change
            assert text.startswith(b"refused: "), text
    assert _answers(tmp_path) == before
    assert server.next_for("r1")["progress"]["done"] == 1


def test_rebound_hosts_cannot_read_the_study(server):
    evil = {"Host": f"evil.example:{server.server_port}"}
    for path in ("/", "/api/next?rater=r1", f"/media/{next(iter(server.media))}"):
        status, _, text = _request(server, "GET", path, evil)
        assert status == 403 and b"is not this server" in text
    assert _request(server, "GET", "/", {"Host": f"localhost:{server.server_port}"})[0] == 200


def test_the_served_page_sends_same_origin_json():
    """The page's fetch must pass `refusal`: a JSON Content-Type, a relative (same-origin) URL."""
    from osora.eval.study.page import render_page

    page = render_page()
    assert 'headers: {"Content-Type": "application/json"}' in page
    assert 'api("/api/answer", answer)' in page
