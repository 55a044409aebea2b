"""The rating server over real HTTP (in-process, port 0): blinding, range requests, the API."""

import json
import urllib.error
import urllib.request

import pytest
from study_fakes import ANSWER, COLOURS

from osora.eval.study.server import RangeNotSatisfiable, byte_range


def _get(server, path, headers=None):
    request = urllib.request.Request(f"http://127.0.0.1:{server.server_port}{path}",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _post(server, body):
    request = urllib.request.Request(f"http://127.0.0.1:{server.server_port}/api/answer",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_page_and_api_name_no_model_and_no_external_url(server):
    status, headers, page = _get(server, "/")
    assert status == 200 and b'id="submit"' in page
    served = page + _get(server, "/api/next?rater=r1")[2]
    for name in COLOURS:
        assert name.encode() not in served
    assert b"http://" not in page and b"https://" not in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/key.json", "/items.json", "/media/../key.json",
                                  "/media/0123456789abcdef.mp4", "/answers/r1.jsonl"])
def test_only_listed_media_are_served(server, path):
    assert _get(server, path)[0] == 404


def test_media_answer_range_requests(server):
    item = json.loads(_get(server, "/api/next?rater=r1")[2])["item"]
    status, headers, whole = _get(server, item["left"])
    assert status == 200 and headers["Accept-Ranges"] == "bytes" and whole[4:8] == b"ftyp"
    status, headers, part = _get(server, item["left"], {"Range": "bytes=10-19"})
    assert status == 206 and part == whole[10:20]
    assert headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
    assert _get(server, item["left"], {"Range": "bytes=-4"})[2] == whole[-4:]
    status, headers, _ = _get(server, item["left"], {"Range": f"bytes={len(whole)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(whole)}"


def test_an_answer_is_on_disk_before_the_reply_and_the_next_item_follows(server, tmp_path):
    first = json.loads(_get(server, "/api/next?rater=r1")[2])
    assert first["progress"] == {"done": 0, "total": 3}
    status, reply = _post(server, {"rater": "r1", "item": first["item"]["id"], **ANSWER})
    assert status == 200 and reply["progress"]["done"] == 1
    assert reply["item"]["id"] != first["item"]["id"]
    lines = (tmp_path / "study" / "answers" / "r1.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["item"] == first["item"]["id"]


def test_raters_get_their_own_order(server):
    orders = {rater: server.order(rater) for rater in ("r1", "r2", "r3", "r4")}
    assert all(sorted(order) == sorted(server.items) for order in orders.values())
    assert len({tuple(order) for order in orders.values()}) > 1
    assert server.order("r1") == orders["r1"]


@pytest.mark.parametrize("body, error", [
    ({"rater": "../x", "item": "item-0000", **ANSWER}, "rater id"),
    ({"rater": "r1", "item": "item-9999", **ANSWER}, "unknown item"),
    ({"rater": "r1", "item": ["item-0000"], **ANSWER}, "unknown item"),
    ({"rater": "r1", "item": "item-0000", "visual_quality": "left"}, "prompt_adherence"),
])
def test_bad_answers_are_refused_with_the_reason(server, body, error):
    status, reply = _post(server, body)
    assert status == 400 and error in reply["error"]


@pytest.mark.parametrize("header, size, expected", [
    (None, 100, None), ("bytes=0-", 100, (0, 99)), ("bytes=10-19", 100, (10, 19)),
    ("bytes=90-200", 100, (90, 99)), ("bytes=-10", 100, (90, 99)), ("bytes=-200", 100, (0, 99)),
    ("bytes=0-1,5-6", 100, None), ("items=0-1", 100, None), ("bytes=5-3", 100, None),
])
def test_byte_range(header, size, expected):
    assert byte_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0"])
def test_byte_range_past_the_end(header):
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, 100)
