"""The HTTP API on the synthetic shop's real bundle: request and response models, session, health, metrics, OpenAPI.

Bad input is in test_bad_input.py (the catalogue) and test_http_fuzz.py (Hypothesis).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families
import pytest
from fastapi.testclient import TestClient

from cartwise.bundle import current_bundle
from serving.app import RecommendedItem, RecommendResponse, create_app, metric_field
from serving.pipeline import COLD_ANONYMOUS, Recommender
from serving.request import MAX_BODY_BYTES, ErrorResponse, SessionContext

pytestmark = pytest.mark.integration
MAX_K = 20


@pytest.fixture(scope="module")
def recommender(trained_shop) -> Recommender:
    cfg, *_ = trained_shop
    return Recommender.from_bundle_dir(current_bundle(cfg.work_dir / "bundles"))


@pytest.fixture()
def client(recommender) -> TestClient:
    return TestClient(create_app(recommender, max_k=MAX_K))


def _sample(text: str, name: str, **labels) -> float:
    """One sample's value from Prometheus text exposition (0.0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_existing_fields_answer_what_the_pipeline_answers(client, recommender):
    body = {"user_id": "U005", "k": 5, "exclude": ["I001"], "exclude_purchased": True}
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    # every field of the schema present, nothing else (the route renders the body itself)
    assert set(r.json()) == set(RecommendResponse.model_fields)
    assert all(set(i) == set(RecommendedItem.model_fields) for i in r.json()["items"])
    got = RecommendResponse.model_validate(r.json())
    want = recommender.recommend("U005", 5, ["I001"], True)
    assert [(i.item_id, i.score, i.source) for i in got.items] == [(i.item_id, i.score, i.source) for i in want.items]
    assert got.user_id == "U005" and got.bundle_version == recommender.version and got.flags == want.flags
    assert got.warnings == [] and all(i.rules == [] for i in got.items)
    assert all(i.title is not None and i.category == recommender.categories[i.item_id] for i in got.items)


def test_full_request_with_session_is_accepted_and_reaches_the_pipeline(recommender, monkeypatch):
    seen = []
    real = recommender.recommend

    def spy(*args, **kwargs):
        seen.append(kwargs.get("session"))
        return real(*args, **kwargs)

    app = create_app(recommender, max_k=MAX_K)
    monkeypatch.setattr(recommender, "recommend", spy)
    body = {"user_id": None, "k": 3, "exclude": [], "exclude_purchased": False,
            "session": {"category": "cat1", "viewed": ["I001", "I005", "not-in-catalog"], "cart": ["I009"],
                        "device": "mobile", "time": "2024-05-01T14:30:00+02:00"}}
    r = TestClient(app).post("/v1/recommend", json=body)
    assert r.status_code == 200, r.text
    got = RecommendResponse.model_validate(r.json())
    assert got.flags == [COLD_ANONYMOUS] and len(got.items) == 3
    (session,) = seen
    assert isinstance(session, SessionContext)
    assert session.viewed == ["I001", "I005", "not-in-catalog"] and session.cart == ["I009"]
    assert session.time == dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    # without a session the pipeline gets None
    assert TestClient(app).post("/v1/recommend", json={"k": 2}).status_code == 200 and seen[-1] is None


@pytest.mark.parametrize("text, utc", [
    ("2024-05-01T14:30:00Z", dt.datetime(2024, 5, 1, 14, 30)),
    ("2024-05-01T14:30:00", dt.datetime(2024, 5, 1, 14, 30)),  # naive: taken as UTC
    ("2024-05-01T14:30:00-05:30", dt.datetime(2024, 5, 1, 20, 0)),
    ("2024-05-01", dt.datetime(2024, 5, 1)),
    ("2024-05-01T23:30:00.123456+00:00", dt.datetime(2024, 5, 1, 23, 30, 0, 123456)),
])
def test_session_time_becomes_aware_utc(text, utc):
    t = SessionContext.model_validate({"time": text}).time
    assert t == utc.replace(tzinfo=dt.timezone.utc) and t.utcoffset() == dt.timedelta(0)


def test_unknown_items_in_the_session_are_not_errors(client):
    body = {"user_id": "U001", "k": 4, "session": {"viewed": ["nope", "I999"], "cart": ["also-nope"]},
            "exclude": ["not-an-item"]}
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 200 and len(r.json()["items"]) == 4


def test_health(client, recommender):
    assert client.get("/health/live").json() == {"status": "ok"}
    ready = client.get("/health/ready").json()
    assert ready == {"status": "ok", "bundle_version": recommender.version, "online_store": "ok"}


def test_metrics_count_requests_latency_and_validation_errors_per_app(recommender):
    app, other = create_app(recommender, max_k=MAX_K), create_app(recommender, max_k=MAX_K)
    c = TestClient(app)
    for _ in range(3):
        assert c.post("/v1/recommend", json={"k": 2}).status_code == 200
    assert c.post("/v1/recommend", json={"k": 0, "session": {"viewed": [""]}, "colour": 1}).status_code == 422
    assert c.post("/v1/recommend", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    assert c.get("/no/such/path").status_code == 404
    assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    requests = "cartwise_http_requests_total"
    assert _sample(text, requests, endpoint="/v1/recommend", status="200") == 3
    assert _sample(text, requests, endpoint="/v1/recommend", status="422") == 1
    assert _sample(text, requests, endpoint="/v1/recommend", status="415") == 1
    assert _sample(text, requests, endpoint="unmatched", status="404") == 1  # client paths are not labels
    # the app's own pages by their path (they counted as unmatched)
    assert _sample(text, requests, endpoint="/openapi.json", status="200") == 1
    assert _sample(text, requests, endpoint="/docs", status="200") == 1
    assert _sample(text, "cartwise_http_request_duration_seconds_count", endpoint="/v1/recommend") == 5
    assert _sample(text, "cartwise_http_request_duration_seconds_sum", endpoint="/v1/recommend") > 0
    errors = "cartwise_request_validation_errors_total"
    assert _sample(text, errors, field="body.k", type="greater_than_equal") == 1
    assert _sample(text, errors, field="body.session.viewed", type="string_too_short") == 1
    assert _sample(text, errors, field="body.*", type="extra_forbidden") == 1
    assert _sample(text, errors, field="header.content-type", type="unsupported_media_type") == 1
    # each app has its own registry, and none of it is in the process-global one
    assert app.state.registry is not other.state.registry
    assert _sample(TestClient(other).get("/metrics").text, requests, endpoint="/v1/recommend", status="200") == 0
    assert prometheus_client.REGISTRY.get_sample_value("cartwise_http_requests_total",
                                                       {"endpoint": "/v1/recommend", "status": "200"}) is None


def test_metrics_stay_per_app_when_prometheus_client_is_in_multiprocess_mode():
    """`import feast` sets PROMETHEUS_MULTIPROCESS_DIR; prometheus_client then shares the values of same-named
    metric objects across the process. The app's collector must not care: each app counts its own requests."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, types
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import feast  # noqa: F401  (sets the multiprocess directory, as in any serving process)
        import prometheus_client.values as v
        assert "MultiProcess" in v.ValueClass.__qualname__, v.ValueClass
        from fastapi.testclient import TestClient
        from serving.app import create_app
        from serving.pipeline import Recommendation, Recommended

        class Fake:
            version, titles, categories = "v1", {}, {}
            features = types.SimpleNamespace(ping=lambda: True)
            def recommend(self, user_id, k, exclude=(), exclude_purchased=False, session=None):
                return Recommendation(user_id, [Recommended("I1", 1.0, "popularity")], "v1", [])

        apps = [create_app(Fake()), create_app(Fake())]
        for n, app in enumerate(apps, start=1):
            c = TestClient(app)
            for _ in range(n):
                assert c.post("/v1/recommend", json={"k": 1}).status_code == 200
        for n, app in enumerate(apps, start=1):
            got = app.state.registry.get_sample_value("cartwise_http_requests_total",
                                                      {"endpoint": "/v1/recommend", "status": "200"})
            assert got == n, (n, got)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("loc, label", [
    (["body", "k"], "body.k"), (["body", "session", "viewed", 7], "body.session.viewed"),
    (["body", "exclude", 3, 0], "body.exclude"), (["body", "random-key", "x"], "body.*"),
    (["body", "session", "random-key"], "body.session.*"), (["body"], "body"),
    (["header", "content-type"], "header.content-type"),
])
def test_metric_labels_are_bounded(loc, label):
    assert metric_field(loc) == label


def test_openapi_describes_the_request_and_every_error(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    op = spec["paths"]["/v1/recommend"]["post"]
    body_schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/RecommendRequest"}
    for status in ("413", "415", "422"):
        ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorResponse" and op["responses"][status]["description"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecommendResponse")
    req = schemas["RecommendRequest"]
    assert set(req["properties"]) == {"user_id", "session", "k", "exclude", "exclude_purchased"}
    assert req["additionalProperties"] is False and req["properties"]["k"]["maximum"] == MAX_K
    assert set(schemas["SessionContext"]["properties"]) == {"category", "viewed", "cart", "device", "time"}
    assert set(schemas["ErrorItem"]["properties"]) == {"loc", "field", "type", "msg"}
    assert "rules" in schemas["RecommendedItem"]["properties"]
    assert "warnings" in schemas["RecommendResponse"]["properties"]
    # every $ref resolves
    refs, stack = [], [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            refs += [node["$ref"]] if "$ref" in node else []
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    assert refs and all(r.removeprefix("#/components/schemas/") in schemas for r in refs)


def test_errors_have_one_shape(client):
    answers = [client.post("/v1/recommend", content=b"x" * (MAX_BODY_BYTES + 1),
                           headers={"content-type": "application/json"}),
               client.post("/v1/recommend", json=[]), client.get("/v1/recommend"), client.get("/nope"),
               client.post("/v1/recommend", content=b"{}")]
    assert [r.status_code for r in answers] == [413, 422, 405, 404, 415]
    for r in answers:
        ErrorResponse.model_validate(r.json())
    assert answers[2].headers["allow"] == "POST"


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_recommendations_run_on_at_most_serving_threads_at_once(recommender, threads):
    """`serving.threads`: 12 clients at once over a real socket; the pipeline never runs on more threads than
    that (the rest queue; 0: on the event loop, one at a time), and every request is answered."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from serving.server import BackgroundServer

    lock, running, peak = threading.Lock(), [0], [0]
    real = recommender.recommend

    class Counting:  # the real recommender, its recommend counted and slowed so requests overlap
        def __getattr__(self, name):
            return getattr(recommender, name)

        def recommend(self, *a, **kw):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            try:
                time.sleep(0.02)
                return real(*a, **kw)
            finally:
                with lock:
                    running[0] -= 1

    with BackgroundServer(create_app(Counting(), max_k=MAX_K, threads=threads)) as srv:
        def ask(_):
            return httpx.post(f"{srv.url}/v1/recommend", json={"k": 3}, timeout=30).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(ask, range(36)))
    assert codes == [200] * 36
    assert peak[0] == max(threads, 1)  # reached (the requests overlapped) and never exceeded


def test_serving_threads_must_be_positive(recommender):
    with pytest.raises(ValueError, match="threads must be >= 0"):
        create_app(recommender, threads=-1)
