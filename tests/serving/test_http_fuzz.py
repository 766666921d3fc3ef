"""Hypothesis fuzz of `POST /v1/recommend`: 10,000 requests, none gets a 5xx, every 2xx is a valid response.

In-process on the synthetic shop's real bundle, through httpx's ASGI
transport on one event loop (it re-raises any server exception, like
TestClient, at a fifth of TestClient's per-request cost). Four generators
share the 10,000 requests:

* valid bodies only (every field drawn from its valid range): always 200
  (the validation is not stricter than documented);
* mixed bodies: each field valid, wrong in a known way, or any JSON value,
  plus unknown keys, at the top level and in `session`;
* mutated bytes: a valid or mixed body serialised with or without ASCII escapes
  (lone surrogates then become invalid UTF-8), with bytes spliced in;
* raw bytes under assorted Content-Types, and any JSON value as the body.

The four take 30-45 s on two busy cores (the trained_shop fixture aside):
drawing examples costs 1-3 ms each, a request 0.3 ms when rejected and a few
ms when the whole pipeline answers. `CARTWISE_FUZZ_SCALE=10` runs ten times
as many.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cartwise.bundle import current_bundle
from serving.app import RecommendResponse, create_app
from serving.pipeline import Recommender
from serving.request import MAX_DEVICE_LENGTH, MAX_ID_LENGTH, ErrorResponse, field_path

pytestmark = pytest.mark.integration
MAX_K = 20
SCALE = float(os.environ.get("CARTWISE_FUZZ_SCALE", "1"))
EXAMPLES = {"valid": 1000, "mixed": 3000, "mutated": 2500, "raw": 3500}  # 10,000 requests in all
JSON_TYPE = {"content-type": "application/json"}


def fuzz_settings(name: str):
    return settings(max_examples=int(EXAMPLES[name] * SCALE), deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


# --- building blocks ---------------------------------------------------------------------------------------------
USERS = [f"U{u:03d}" for u in range(12)]  # users of the synthetic shop (known: the two-tower route)
ITEMS = [f"I{i:03d}" for i in range(48)]
printable = st.characters(exclude_categories=("Cc", "Cs"))
valid_text = st.text(printable, min_size=1, max_size=MAX_ID_LENGTH)
# mostly catalogue ids (cheap to draw, and they reach the pipeline's item handling), sometimes any valid id
valid_id = st.one_of(st.sampled_from(ITEMS), st.sampled_from(ITEMS), st.sampled_from(["never-seen", "I999"]),
                     valid_text)
bad_id = st.one_of(
    st.just(""), st.text(printable, min_size=MAX_ID_LENGTH + 1, max_size=MAX_ID_LENGTH + 20),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=5), st.characters(categories=("Cc", "Cs")),
              st.text(max_size=5)),
    st.integers(), st.none(), st.booleans(), st.floats(),
)
bad_ids = st.lists(bad_id, min_size=1, max_size=3)
leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10 ** 20), st.floats(),
                 st.text(max_size=10))
any_json = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=4),
                        max_leaves=6)
zones = st.sampled_from([None, dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30)),
                         dt.timezone(dt.timedelta(hours=23, minutes=59)), dt.timezone(-dt.timedelta(hours=23))])
# serving.request.MIN_TIME .. MAX_TIME once in UTC: a day inside each end whatever the zone
valid_time = st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2199, 12, 30),
                          timezones=zones).map(dt.datetime.isoformat)
edge_time = st.one_of(st.datetimes(min_value=dt.datetime(9999, 12, 31), timezones=zones),
                      st.datetimes(max_value=dt.datetime(1, 1, 1, 23, 59), timezones=zones),  # UTC may overflow
                      st.datetimes(min_value=dt.datetime(2200, 1, 2), timezones=zones),  # out of serving's range
                      st.datetimes(max_value=dt.datetime(1969, 12, 30), timezones=zones))
bad_time = st.one_of(edge_time.map(dt.datetime.isoformat), st.text(max_size=30),
                     st.integers(), st.sampled_from(["2024-02-30", "2024-05-01T25:00", "9999-12-31T23:00-05:00",
                                                     "2024-05-01T10:00+24:00", "1714557600", "now"]))


def mixed(valid, bad):
    """Half valid (so requests reach the pipeline), else a known-bad or any JSON value."""
    return st.one_of(valid, valid, bad, any_json)


def valid_session():
    return st.fixed_dictionaries({}, optional={
        "category": st.none() | st.sampled_from(["cat0", "cat3", "unknown-cat"]) | valid_text,
        "viewed": st.lists(valid_id, max_size=10), "cart": st.lists(valid_id, max_size=5),
        "device": st.none() | st.sampled_from(["desktop", "mobile", "tablet"]) | st.text(printable, min_size=1,
                                                                                        max_size=MAX_DEVICE_LENGTH),
        "time": st.none() | valid_time})


def valid_body():
    return st.fixed_dictionaries({}, optional={
        "user_id": st.none() | st.sampled_from(USERS) | valid_id, "session": st.none() | valid_session(),
        "k": st.integers(1, MAX_K), "exclude": st.lists(valid_id, max_size=20), "exclude_purchased": st.booleans()})


def mixed_session():
    return st.fixed_dictionaries({}, optional={
        "category": mixed(valid_text, bad_id), "viewed": mixed(st.lists(valid_id, max_size=8), bad_ids),
        "cart": mixed(st.lists(valid_id, max_size=5), bad_ids),
        "device": mixed(st.sampled_from(["mobile", "tablet"]), bad_id), "time": mixed(valid_time, bad_time),
        "referrer": any_json})


def mixed_body():
    return st.fixed_dictionaries({}, optional={
        "user_id": mixed(st.none() | st.sampled_from(USERS) | valid_id, bad_id),
        "session": mixed(mixed_session(), any_json),
        "k": mixed(st.integers(1, MAX_K), st.integers() | st.floats() | st.text(max_size=5)),
        "exclude": mixed(st.lists(valid_id, max_size=10), bad_ids | any_json),
        "exclude_purchased": mixed(st.booleans(), leaf), "colour": any_json})


@st.composite
def encoded(draw, bodies) -> bytes:
    """A body as some client might serialise it: ASCII escapes or raw UTF-8 (lone surrogates pass through)."""
    obj = draw(bodies)
    if draw(st.booleans()):
        return json.dumps(obj).encode()
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(encoded(valid_body() | mixed_body())))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 3))
        data[at:at + cut] = draw(st.sampled_from([b"", b"{", b"}", b"[", b",", b'"', b"\\", b":", b"NaN", b"\xff",
                                                  b"\x00", b'"k":1,', b"\xc3", b" "]) | st.binary(max_size=3))
    return bytes(data)


content_types = st.sampled_from([JSON_TYPE, JSON_TYPE, JSON_TYPE, {"content-type": "application/json; charset=utf-8"},
                                 {"content-type": "text/plain"}, {"content-type": "application/json; charset=utf-16"},
                                 {}, {"content-type": "multipart/form-data; boundary=x"}])


# --- the oracle --------------------------------------------------------------------------------------------------
def check(r, body) -> None:
    """No 5xx; a 200 is a valid response for `body`; any other status is a documented error in the one format."""
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        resp = RecommendResponse.model_validate(r.json())
        assert isinstance(body, dict)
        assert len(resp.items) <= body.get("k", 10)
        ids = [i.item_id for i in resp.items]
        assert len(set(ids)) == len(ids) and not set(ids) & set(body.get("exclude", []))
        assert resp.user_id == body.get("user_id")
    else:
        assert r.status_code in (413, 415, 422), r.text
        detail = ErrorResponse.model_validate(r.json()).detail
        assert detail and all(e.field == field_path(e.loc) for e in detail)


def _loads(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return None


class InProcessClient:
    """Synchronous `post` over httpx.ASGITransport, on one event loop for the whole module."""

    def __init__(self, app):
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cartwise")

    def post(self, path: str, content: bytes, headers: dict) -> httpx.Response:
        return self.loop.run_until_complete(self.client.post(path, content=content, headers=headers))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def client(trained_shop):
    cfg, *_ = trained_shop
    rec = Recommender.from_bundle_dir(current_bundle(cfg.work_dir / "bundles"))
    c = InProcessClient(create_app(rec, max_k=MAX_K))
    yield c
    c.close()


def test_fuzz_valid_requests_are_always_answered(client):
    sent = 0

    @fuzz_settings("valid")
    @given(body=valid_body(), ascii_only=st.booleans())
    def run(body, ascii_only):
        nonlocal sent
        sent += 1
        r = client.post("/v1/recommend", content=json.dumps(body, ensure_ascii=ascii_only).encode(),
                        headers=JSON_TYPE)
        assert r.status_code == 200, (body, r.text)
        check(r, body)

    run()
    assert sent >= EXAMPLES["valid"] * SCALE


def test_fuzz_mixed_bodies_never_5xx(client):
    sent, ok = 0, 0

    @fuzz_settings("mixed")
    @given(body=mixed_body())
    def run(body):
        nonlocal sent, ok
        sent += 1
        r = client.post("/v1/recommend", content=json.dumps(body).encode(), headers=JSON_TYPE)
        check(r, body)
        ok += r.status_code == 200

    run()
    assert sent >= EXAMPLES["mixed"] * SCALE and 0 < ok < sent  # both outcomes were exercised


def test_fuzz_mutated_bytes_never_5xx(client):
    sent = 0

    @fuzz_settings("mutated")
    @given(data=mutated())
    def run(data):
        nonlocal sent
        sent += 1
        check(client.post("/v1/recommend", content=data, headers=JSON_TYPE), _loads(data))

    run()
    assert sent >= EXAMPLES["mutated"] * SCALE


def test_fuzz_raw_bytes_and_any_json_never_5xx(client):
    sent = 0

    @fuzz_settings("raw")
    @given(data=st.binary(max_size=300) | encoded(any_json), headers=content_types)
    def run(data, headers):
        nonlocal sent
        sent += 1
        check(client.post("/v1/recommend", content=data, headers=headers), _loads(data))

    run()
    assert sent >= EXAMPLES["raw"] * SCALE
