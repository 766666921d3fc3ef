"""The catalogue of bad requests, over a real loopback socket: each gets its documented 4xx naming the field.

One uvicorn server (serving/server.py) on the synthetic shop's real bundle
with `max_k = 20`; every case goes through the real transport, since body
size, Content-Type and byte-level decoding depend on it. The table in
docs/api.md lists the same cases.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cartwise.bundle import current_bundle
from serving.app import create_app
from serving.pipeline import Recommender
from serving.request import (MAX_BODY_BYTES, MAX_DEVICE_LENGTH, MAX_EXCLUDE, MAX_ID_LENGTH, MAX_JSON_DEPTH,
                             MAX_SESSION_ITEMS, MAX_TIME_LENGTH, ErrorResponse, field_path)
from serving.server import BackgroundServer

pytestmark = pytest.mark.integration
MAX_K = 20
JSON = {"content-type": "application/json"}


def J(obj) -> bytes:
    """JSON bytes as a careless client writes them: NaN allowed, lone surrogates as \\u escapes."""
    return json.dumps(obj).encode()


def S(**session) -> bytes:
    return J({"user_id": "U001", "session": session})


@dataclass
class Case:
    id: str
    body: bytes | None
    status: int
    field: str
    type: str
    headers: dict = field(default_factory=lambda: dict(JSON))
    method: str = "POST"
    path: str = "/v1/recommend"
    chunked: bool = False


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


CASES = [
    # framing: encoding, JSON syntax, strict JSON
    Case("malformed-json", b"{not json", 422, "body", "json_invalid"),
    Case("truncated-json", b'{"k": 5', 422, "body", "json_invalid"),
    Case("trailing-garbage", b'{"k": 5} x', 422, "body", "json_invalid"),
    Case("single-quotes", b"{'k': 5}", 422, "body", "json_invalid"),
    Case("empty-body", b"", 422, "body", "missing"),
    Case("whitespace-body", b" \n\t", 422, "body", "json_invalid"),
    Case("body-array", J([{"k": 5}]), 422, "body", "model_type"),
    Case("body-string", J("U001"), 422, "body", "model_type"),
    Case("body-null", b"null", 422, "body", "model_type"),
    Case("body-number", b"5", 422, "body", "model_type"),
    Case("utf8-bom", b"\xef\xbb\xbf{}", 422, "body", "json_invalid"),
    Case("non-utf8-bytes", b'{"user_id": "\xff\xfe"}', 422, "body", "utf8_invalid"),
    Case("latin1-bytes", '{"user_id": "caf\u00e9"}'.encode("latin-1"), 422, "body", "utf8_invalid"),
    Case("utf16-body", '{"k": 1}'.encode("utf-16"), 422, "body", "utf8_invalid"),
    Case("overlong-utf8", b'{"user_id": "\xc0\xaf"}', 422, "body", "utf8_invalid"),
    Case("nan-token", b'{"k": NaN}', 422, "body.k", "json_non_finite"),
    Case("infinity-token", b'{"k": Infinity}', 422, "body.k", "json_non_finite"),
    Case("minus-infinity-in-list", b'{"exclude": [-Infinity]}', 422, "body.exclude[0]", "json_non_finite"),
    Case("nan-in-session", b'{"session": {"viewed": ["I001", NaN]}}', 422, "body.session.viewed[1]",
         "json_non_finite"),
    Case("duplicate-key", b'{"k": 1, "k": 2}', 422, "body.k", "json_duplicate_key"),
    Case("duplicate-key-in-session", b'{"session": {"device": "mobile", "device": "tablet"}}', 422,
         "body.session.device", "json_duplicate_key"),
    Case("integer-of-5000-digits", b'{"k": 1' + b"0" * 5000 + b"}", 422, "body.k", "json_number_too_large"),
    Case("deeply-nested-body", _nested(30_000), 422, "body", "json_too_deep"),
    Case("deeply-nested-field", b'{"colour": ' + _nested(MAX_JSON_DEPTH + 8) + b"}", 422, "body.colour",
         "json_too_deep"),
    # content type
    Case("text-plain", b'{"k": 1}', 415, "header.content-type", "unsupported_media_type",
         headers={"content-type": "text/plain"}),
    Case("no-content-type", b'{"k": 1}', 415, "header.content-type", "unsupported_media_type", headers={}),
    Case("form-urlencoded", b"k=1", 415, "header.content-type", "unsupported_media_type",
         headers={"content-type": "application/x-www-form-urlencoded"}),
    Case("json-latin1-charset", b'{"k": 1}', 415, "header.content-type", "unsupported_media_type",
         headers={"content-type": "application/json; charset=latin-1"}),
    Case("json-suffix-type", b'{"k": 1}', 415, "header.content-type", "unsupported_media_type",
         headers={"content-type": "application/jsonx"}),
    Case("gzip-body", gzip.compress(b'{"k": 1}'), 415, "header.content-encoding", "unsupported_media_type",
         headers={**JSON, "content-encoding": "gzip"}),
    # size, counted on the bytes received
    Case("oversize-with-content-length", b'{"user_id": "' + b"x" * 2_000_000 + b'"}', 413, "body",
         "body_too_large"),
    Case("oversize-chunked-no-length", b" " * (MAX_BODY_BYTES + 1024) + b"{}", 413, "body", "body_too_large",
         chunked=True),
    Case("oversize-by-one-byte", b"{" + b" " * (MAX_BODY_BYTES - 1) + b"}", 413, "body", "body_too_large"),
    # user_id
    Case("user-id-number", J({"user_id": 17841}), 422, "body.user_id", "string_type"),
    Case("user-id-list", J({"user_id": ["U001"]}), 422, "body.user_id", "string_type"),
    Case("user-id-empty", J({"user_id": ""}), 422, "body.user_id", "string_too_short"),
    Case("user-id-too-long", J({"user_id": "U" * (MAX_ID_LENGTH + 1)}), 422, "body.user_id", "string_too_long"),
    Case("user-id-nul", J({"user_id": "U0\x0001"}), 422, "body.user_id", "string_control_character"),
    Case("user-id-newline", J({"user_id": "U001\n"}), 422, "body.user_id", "string_control_character"),
    Case("user-id-c1-control", J({"user_id": "U\u0085001"}), 422, "body.user_id", "string_control_character"),
    Case("user-id-lone-surrogate", J({"user_id": "U\ud800"}), 422, "body.user_id", "string_unicode"),
    # k
    Case("k-string", J({"k": "10"}), 422, "body.k", "int_type"),
    Case("k-1e30", b'{"k": 1e30}', 422, "body.k", "int_type"),
    Case("k-fraction", J({"k": 2.5}), 422, "body.k", "int_type"),
    Case("k-integral-float", b'{"k": 10.0}', 422, "body.k", "int_type"),
    Case("k-true", J({"k": True}), 422, "body.k", "int_type"),
    Case("k-null", J({"k": None}), 422, "body.k", "int_type"),
    Case("k-zero", J({"k": 0}), 422, "body.k", "greater_than_equal"),
    Case("k-negative", J({"k": -1}), 422, "body.k", "greater_than_equal"),
    Case("k-above-max-k", J({"k": MAX_K + 1}), 422, "body.k", "less_than_equal"),
    Case("k-10e30-integer", J({"k": 10 ** 30}), 422, "body.k", "less_than_equal"),
    # exclude, exclude_purchased
    Case("exclude-string", J({"exclude": "I001"}), 422, "body.exclude", "list_type"),
    Case("exclude-object", J({"exclude": {"I001": True}}), 422, "body.exclude", "list_type"),
    Case("exclude-number-id", J({"exclude": ["I001", 7]}), 422, "body.exclude[1]", "string_type"),
    Case("exclude-empty-id", J({"exclude": [""]}), 422, "body.exclude[0]", "string_too_short"),
    Case("exclude-long-id", J({"exclude": ["x" * (MAX_ID_LENGTH + 1)]}), 422, "body.exclude[0]", "string_too_long"),
    Case("exclude-control-char", J({"exclude": ["I0\x0701"]}), 422, "body.exclude[0]", "string_control_character"),
    Case("exclude-too-many", J({"exclude": [f"I{i}" for i in range(MAX_EXCLUDE + 1)]}), 422, "body.exclude",
         "too_long"),
    Case("exclude-purchased-string", J({"exclude_purchased": "yes"}), 422, "body.exclude_purchased", "bool_type"),
    Case("exclude-purchased-int", J({"exclude_purchased": 1}), 422, "body.exclude_purchased", "bool_type"),
    # unknown fields
    Case("unknown-field", J({"user_id": "U001", "colour": "red"}), 422, "body.colour", "extra_forbidden"),
    Case("unknown-field-odd-name", J({"a b.c": 1}), 422, 'body["a b.c"]', "extra_forbidden"),
    Case("unknown-field-in-session", S(colour="red"), 422, "body.session.colour", "extra_forbidden"),
    Case("unknown-field-surrogate-name", J({"\udc00": 1}), 422, "body", "string_unicode"),
    # session
    Case("session-list", J({"session": ["I001"]}), 422, "body.session", "model_type"),
    Case("session-string", J({"session": "mobile"}), 422, "body.session", "model_type"),
    Case("viewed-string", S(viewed="I001"), 422, "body.session.viewed", "list_type"),
    Case("viewed-null", S(viewed=None), 422, "body.session.viewed", "list_type"),
    Case("viewed-number-id", S(viewed=[3]), 422, "body.session.viewed[0]", "string_type"),
    Case("viewed-too-many", S(viewed=[f"I{i}" for i in range(MAX_SESSION_ITEMS + 1)]), 422, "body.session.viewed",
         "too_long"),
    Case("viewed-long-id", S(viewed=["I001", "y" * (MAX_ID_LENGTH + 1)]), 422, "body.session.viewed[1]",
         "string_too_long"),
    Case("cart-nul", S(cart=["I001\x00"]), 422, "body.session.cart[0]", "string_control_character"),
    Case("cart-empty-id", S(cart=[""]), 422, "body.session.cart[0]", "string_too_short"),
    Case("cart-too-many", S(cart=["I001"] * (MAX_SESSION_ITEMS + 1)), 422, "body.session.cart", "too_long"),
    Case("category-number", S(category=5), 422, "body.session.category", "string_type"),
    Case("category-empty", S(category=""), 422, "body.session.category", "string_too_short"),
    Case("device-too-long", S(device="d" * (MAX_DEVICE_LENGTH + 1)), 422, "body.session.device", "string_too_long"),
    Case("device-list", S(device=["mobile"]), 422, "body.session.device", "string_type"),
    Case("time-word", S(time="yesterday"), 422, "body.session.time", "datetime_format"),
    Case("time-empty", S(time=""), 422, "body.session.time", "datetime_format"),
    Case("time-impossible-date", S(time="2024-02-30T10:00:00"), 422, "body.session.time", "datetime_format"),
    Case("time-hour-25", S(time="2024-05-01T25:00:00"), 422, "body.session.time", "datetime_format"),
    Case("time-offset-25h", S(time="2024-05-01T10:00:00+25:00"), 422, "body.session.time", "datetime_format"),
    Case("time-named-zone", S(time="2024-05-01 10:00:00 CEST"), 422, "body.session.time", "datetime_format"),
    Case("time-epoch-number", S(time=1714557600), 422, "body.session.time", "datetime_type"),
    Case("time-epoch-string", S(time="1714557600"), 422, "body.session.time", "datetime_format"),
    Case("time-too-long", S(time="2024-05-01T10:00:00" + "0" * MAX_TIME_LENGTH), 422, "body.session.time",
         "datetime_format"),
    Case("time-overflows-in-utc", S(time="9999-12-31T23:59:59-01:00"), 422, "body.session.time", "datetime_range"),
    Case("time-before-1970", S(time="0143-03-02T10:48:10"), 422, "body.session.time", "datetime_range"),
    Case("time-after-2199", S(time="2262-04-12T00:00:00Z"), 422, "body.session.time", "datetime_range"),
    # routing
    Case("get-on-recommend", None, 405, "method", "method_not_allowed", method="GET"),
    Case("put-on-recommend", J({}), 405, "method", "method_not_allowed", method="PUT"),
    Case("delete-on-recommend", None, 405, "method", "method_not_allowed", method="DELETE"),
    Case("post-on-health", J({}), 405, "method", "method_not_allowed", path="/health/live"),
    Case("unknown-path", J({"k": 1}), 404, "path", "not_found", path="/v1/recommendations"),
    Case("unknown-version", J({"k": 1}), 404, "path", "not_found", path="/v2/recommend"),
]


@pytest.fixture(scope="module")
def recommender(trained_shop) -> Recommender:
    cfg, *_ = trained_shop
    return Recommender.from_bundle_dir(current_bundle(cfg.work_dir / "bundles"))


@pytest.fixture(scope="module")
def server(recommender):
    app = create_app(recommender, max_k=MAX_K)
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        yield srv, client


def test_the_catalogue_is_large_and_unique():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


def test_docs_api_lists_every_case_as_tested():
    """docs/api.md's table of bad requests is this catalogue: same ids, statuses, fields and types."""
    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    table = text.split("### Catalogue of bad requests", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (int(cells[2]), cells[3].strip("`"), cells[4].strip("`"))
    assert rows == {c.id: (c.status, c.field, c.type) for c in CASES}


def _chunks(data: bytes, size: int = 4096):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_gets_its_4xx_naming_the_field(server, case: Case):
    _, client = server
    content = _chunks(case.body) if case.chunked else case.body
    r = client.request(case.method, case.path, content=content, headers=case.headers)
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"] == "application/json"
    detail = ErrorResponse.model_validate(r.json()).detail
    assert any(e.field == case.field and e.type == case.type for e in detail), r.text
    assert all(e.field == field_path(e.loc) and e.msg for e in detail)


def test_every_problem_of_a_request_is_reported(server):
    _, client = server
    body = {"user_id": "", "k": 0, "exclude": [1], "colour": 1,
            "session": {"viewed": [""], "time": "soon", "device": 3, "extra": True}}
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["detail"]}
    assert fields == {"body.user_id", "body.k", "body.exclude[0]", "body.colour", "body.session.viewed[0]",
                      "body.session.time", "body.session.device", "body.session.extra"}


def test_valid_edge_values_pass(server):
    """Limits are inclusive; nulls mean "absent"; unknown and odd-but-printable ids are fine."""
    _, client = server
    ok = [{"k": MAX_K}, {"k": 1}, {}, {"user_id": None, "session": None},
          {"user_id": "U" * MAX_ID_LENGTH, "exclude": ["x" * MAX_ID_LENGTH] * 50},
          {"session": {"viewed": ["I001"] * MAX_SESSION_ITEMS, "cart": [], "category": "caf\u00e9 \u2615",
                       "device": "d" * MAX_DEVICE_LENGTH, "time": "2024-05-01T10:00:00"}},
          {"session": {"time": "2024-05-01T10:00:00+14:00", "category": None, "device": None}},
          {"user_id": "U001", "session": {"viewed": ["no-such-item"], "cart": ["I001", "I001"]}}]
    for body in ok:
        r = client.post("/v1/recommend", json=body)
        assert r.status_code == 200, (body, r.text)
    r = client.post("/v1/recommend", content=b'{"k": 2}', headers={"content-type": "Application/JSON; Charset=UTF-8"})
    assert r.status_code == 200


def _raw(port: int, request: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """Send raw bytes, read one response (status, body), whatever else the socket still holds."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
        length = int(headers.get(b"content-length", b"0"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(head.split(b" ")[1]), body


HEAD = b"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def test_a_huge_content_length_is_refused_before_the_body_arrives(server):
    srv, _ = server
    # 10 MB announced, 2 bytes sent: the answer comes without waiting for the rest
    status, body = _raw(srv.port, HEAD + b"Content-Length: 10000000\r\n\r\n{}", timeout=10)
    assert status == 413 and json.loads(body)["detail"][0]["field"] == "body"


def test_a_content_length_with_leading_zeros_is_its_value(server):
    """`Content-Length: 000...0008` is a length of 8 (HTTP allows leading zeros): answered, not refused as over
    the limit for its 23 digits; a length past the limit with zeros in front is still refused."""
    srv, _ = server
    body = b'{"k": 3}'
    status, got = _raw(srv.port, HEAD + b"Content-Length: 0000000000000000000000008\r\n\r\n" + body)
    assert status == 200 and len(json.loads(got)["items"]) == 3
    status, _ = _raw(srv.port, HEAD + b"Content-Length: 00000000000000000000010000000\r\n\r\n{}", timeout=10)
    assert status == 413


def test_a_chunked_body_is_counted_as_it_arrives(server):
    srv, _ = server
    chunk = b"8000\r\n" + b" " * 0x8000 + b"\r\n"
    status, body = _raw(srv.port, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n")
    assert status == 413 and json.loads(body)["detail"][0]["type"] == "body_too_large"


@pytest.mark.parametrize("framing", [
    b"Content-Length: 2\r\n\r\n{\"" + b"x" * 100_000,  # shorter than the body: the rest is a bad next request
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"k\":\r\n0\r\n\r\n",  # both: smuggling
    b"Content-Length: abc\r\n\r\n{}",
    b"Content-Length: -1\r\n\r\n{}",
], ids=["length-shorter-than-body", "length-and-chunked", "length-not-a-number", "length-negative"])
def test_broken_framing_is_a_4xx_from_the_server_layer(server, framing):
    """uvicorn refuses these before the app runs (plain-text 400, not the JSON error format)."""
    srv, _ = server
    status, _ = _raw(srv.port, HEAD + framing)
    assert 400 <= status < 500


@pytest.mark.parametrize("length, status", [("9" * 5000, 413), ("\u00b2", 200), ("abc", 200), ("-1", 200)])
def test_odd_content_length_headers_reaching_the_app_are_not_5xx(recommender, length, status):
    """Behind a lenient proxy or in-process, Content-Length can be anything; only a number over the limit counts."""
    app, sent = create_app(recommender, max_k=MAX_K), []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/recommend", "raw_path": b"/v1/recommend", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", length.encode("latin-1"))],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    messages = [{"type": "http.request", "body": b'{"k": 1}', "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == status


def test_no_request_of_this_module_got_a_5xx(server):
    _, client = server
    text = client.get("/metrics").text
    statuses = {s.labels["status"] for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "cartwise_http_requests_total"}
    assert statuses and not any(s.startswith("5") for s in statuses)
