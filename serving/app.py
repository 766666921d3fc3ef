"""HTTP API (FastAPI): `POST /v1/recommend`, `GET /health/live`, `/health/ready`, `/metrics`, `POST /admin/reload`.

Where it sits: the outermost serving layer; `create_app(recommender)` wraps
a built :class:`serving.pipeline.Recommender`, or a
:class:`serving.hotswap.BundleSlot` whose bundle can be swapped while serving.
Each request takes the slot's recommender once, so its items and its
`bundle_version` come from the same bundle.

Bad input never reaches the pipeline and never gets a 5xx. `/v1/recommend`
reads the raw body itself, in this order, stopping at the first failing step:
Content-Type and Content-Encoding (415), size counted on the bytes received whatever
Content-Length says (413), strict UTF-8 JSON (:func:`serving.request.parse_json`),
then the schema in pydantic strict mode (:func:`serving.request.validate_request`);
both give 422. Every 4xx (and 5xx) body has one shape,
:class:`serving.request.ErrorResponse`: `{"detail": [{"loc", "field", "type", "msg"}]}`
(docs/api.md has the table of cases).

`GET /metrics` exposes a per-app Prometheus registry (`app.state.registry`,
never the process-global one: several apps may share a process): requests by
endpoint and status, latency by endpoint, validation errors by field and type,
and the rule-override metrics of the recommender in service
(:class:`serving.pipeline.RecommenderMetrics`, registered once, so they
follow hot swaps). Every count lives in the app or the tracker and is exposed
by a custom collector (see `serving/__init__.py` for why).

`GET /health/ready` is `degraded` when the online store is unreachable or the
last reload failed (`alert`), and `warning` with the override tracker's
`warning` and summary (`overrides`) while the rule-override alarm is on.

`POST /admin/reload` (hot swap now, instead of waiting for the CURRENT
watcher) exists only when a reload token is configured, answers only
loopback clients, and compares the `X-Reload-Token` header in constant time.
"""
from __future__ import annotations

import bisect
import hmac
import itertools
import json
import logging
import threading
import time
from typing import Any, Sequence

import anyio
import anyio.to_thread
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cartwise.config import ServingConfig
from serving.hotswap import BundleSlot
from serving.pipeline import Recommender, RecommenderMetrics
from serving.request import MAX_BODY_BYTES, BodyError, ErrorItem, ErrorResponse, RecommendRequest, SessionContext, \
    error, errors_from_pydantic, parse_json, validate_request

log = logging.getLogger("cartwise.serving")

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
JSON_MEDIA_TYPE = "application/json"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RecommendedItem(BaseModel):
    """One recommended item."""

    item_id: str
    score: float
    source: str = Field(description="retrieval source, e.g. two_tower, popularity")
    title: str | None = None
    category: str | None = None
    rules: list[str] = Field(default_factory=list, description="names of the business rules that changed this item's "
                                                               "place (empty until the rules engine lands)")


class RecommendResponse(BaseModel):
    """Body of a 200 from `POST /v1/recommend`."""

    user_id: str | None
    items: list[RecommendedItem]
    bundle_version: str
    flags: list[str] = Field(description="why the answer is not the personalised one, e.g. cold_start:anonymous")
    warnings: list[str] = Field(default_factory=list, description="parts of the request that were ignored, e.g. "
                                                                  "unknown item ids in the session")


def recommendation_json(rec: Recommender, answer) -> bytes:
    """The body of a 200 from `POST /v1/recommend`: `answer` (what `rec.recommend` returned) as a
    :class:`RecommendResponse`, serialized once by pydantic.

    The route returns these bytes itself: returned as a model, FastAPI's `response_model` path serialized it
    again through the route's response field (benchmarks/bench_serving.py's response stage, building the
    model included, at 1M items 0.110 ms before, 0.079 after; README "A fifth round"). The route keeps
    `response_model` for the OpenAPI schema.
    """
    return RecommendResponse(
        user_id=answer.user_id, bundle_version=answer.bundle_version, flags=list(answer.flags),
        warnings=list(getattr(answer, "warnings", [])),
        items=[RecommendedItem(item_id=r.item_id, score=r.score, source=r.source,
                               title=rec.titles.get(r.item_id), category=rec.categories.get(r.item_id),
                               rules=list(getattr(r, "rules", [])))
               for r in answer.items],
    ).model_dump_json().encode()


class ErrorJSONResponse(JSONResponse):
    """JSON rendered as ASCII: an echoed key may hold a lone surrogate, which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class ApiError(StarletteHTTPException):
    """An HTTP error carrying :class:`ErrorItem` s (rendered like every other error)."""

    def __init__(self, status_code: int, errors: list[ErrorItem], headers: dict | None = None):
        super().__init__(status_code, detail="; ".join(e.msg for e in errors), headers=headers)
        self.errors = errors


_ERROR_DOC = {
    413: f"Body larger than {MAX_BODY_BYTES} bytes (counted as received, whatever Content-Length says).",
    415: "Content-Type is not application/json (or names a charset other than UTF-8), or the body is compressed "
         "(Content-Encoding other than identity).",
    422: "Body is empty, not UTF-8, not JSON, not strict JSON (NaN, duplicated keys, too deep), or fails the schema; "
         "each problem names its field.",
}
ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": text} for status, text in _ERROR_DOC.items()}

# label values for the validation-error counter: field names from the schema, never client-chosen keys
_KNOWN_FIELDS = {(): frozenset(RecommendRequest.model_fields), ("session",): frozenset(SessionContext.model_fields)}


def metric_field(loc: list) -> str:
    """The `field` label of the validation-error counter, from a fixed set (never a client-chosen key).

    Args:
        loc: an :class:`ErrorItem` location.

    Returns:
        `body.session.viewed` for `["body", "session", "viewed", 7]`, `body.*`
        / `body.session.*` for an unknown key, `body` for the whole body,
        `header.content-type` for a header.
    """
    if not loc or loc[0] != "body":
        return ".".join(str(p) for p in loc[:2]) or "request"
    path: list[str] = []
    for part in loc[1:]:
        known = _KNOWN_FIELDS.get(tuple(path))
        if isinstance(part, int) or known is None:
            break
        path.append(part if part in known else "*")
        if path[-1] == "*":
            break
    return ".".join(["body", *path])


class _Metrics:
    """The app's metrics, exposed through its own registry as a custom collector.

    Plain counters under a lock rather than prometheus_client's `Counter` and
    `Histogram`: importing feast sets `PROMETHEUS_MULTIPROCESS_DIR`
    (feast/metrics.py), and when prometheus_client is imported after that,
    every metric object of one name and label set in the process shares one
    mmap'ed value, so two apps in one process would count each other's
    requests.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = {}
        self._latency: dict[str, list] = {}  # endpoint -> [count per bucket (non-cumulative, +Inf last), sum]
        self._errors: dict[tuple[str, str], int] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            key = (endpoint, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            counts = self._latency.setdefault(endpoint, [[0] * (len(LATENCY_BUCKETS) + 1), 0.0])
            counts[0][i] += 1
            counts[1] += seconds

    def count_errors(self, errors: list[ErrorItem]) -> None:
        with self._lock:
            for e in errors:
                key = (metric_field(e.loc), e.type)
                self._errors[key] = self._errors.get(key, 0) + 1

    def collect(self):
        with self._lock:
            requests, errors = dict(self._requests), dict(self._errors)
            latency = {k: (list(v[0]), v[1]) for k, v in self._latency.items()}
        c = CounterMetricFamily("cartwise_http_requests", "HTTP requests by endpoint and status code",
                                labels=["endpoint", "status"])
        for labels, n in sorted(requests.items()):
            c.add_metric(labels, n)
        yield c
        h = HistogramMetricFamily("cartwise_http_request_duration_seconds", "HTTP request latency by endpoint",
                                  labels=["endpoint"])
        for endpoint, (counts, total) in sorted(latency.items()):
            cumulative = list(itertools.accumulate(counts))
            h.add_metric([endpoint], [(floatToGoString(le), n) for le, n in zip(LATENCY_BUCKETS, cumulative)]
                         + [("+Inf", cumulative[-1])], sum_value=total)
        yield h
        v = CounterMetricFamily("cartwise_request_validation_errors",
                                "Problems found in rejected requests, by field and type", labels=["field", "type"])
        for labels, n in sorted(errors.items()):
            v.add_metric(labels, n)
        yield v


class _MetricsMiddleware:
    """Pure ASGI: times every HTTP request and counts it by route template (`unmatched` for 404s) and status.

    FastAPI puts its API routes on the request's scope; the app's own pages (`/openapi.json`, `/docs`, ...) are
    plain routes that do not, so those are matched here against `routes` (the app's) by template.
    """

    def __init__(self, app, metrics: _Metrics, routes: Sequence[Any] = ()):
        self.app, self.metrics, self.routes = app, metrics, list(routes)

    def _template(self, scope) -> str:
        from starlette.routing import Match

        for route in self.routes:
            if route.matches(scope)[0] == Match.FULL:
                return route.path
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = getattr(scope.get("route"), "path", None) or self._template(scope)
            self.metrics.observe(endpoint, status, time.perf_counter() - t0)


def _check_content_type(value: str | None) -> None:
    media, _, params = (value or "").partition(";")
    charset = None
    for param in params.split(";"):
        name, _, v = param.partition("=")
        if name.strip().lower() == "charset":
            charset = v.strip().strip('"').lower()
    if media.strip().lower() != JSON_MEDIA_TYPE or charset not in (None, "utf-8", "utf8"):
        got = repr(value[:100]) if value else "none"
        raise BodyError([error(["header", "content-type"], "unsupported_media_type",
                               f"Content-Type must be application/json (UTF-8); got {got}")], status=415)


def _check_content_encoding(value: str | None) -> None:
    # a compressed body would otherwise be "decoded" as UTF-8 and fail as JSON; RFC 7694 says 415
    if value is not None and value.strip().lower() not in ("", "identity"):
        raise BodyError([error(["header", "content-encoding"], "unsupported_media_type",
                               f"Content-Encoding {value[:50]!r} is not supported; send the body uncompressed")],
                        status=415)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed `limit` bytes (declared or received)."""
    declared = request.headers.get("content-length", "")
    # ASCII digits only ("²".isdigit() is True), and no int() of a 5000-digit header (leading zeros aside:
    # 0000...008 is a length of 8)
    digits = declared.lstrip("0")
    if declared.isascii() and declared.isdigit() and (len(digits) > 18 or int(digits or "0") > limit):
        raise BodyError([error(["body"], "body_too_large", f"the body is larger than {limit} bytes "
                                                           f"(Content-Length: {declared[:20]})")], status=413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():  # counts what arrives: chunked bodies and lying lengths alike
            size += len(chunk)
            if size > limit:
                raise BodyError([error(["body"], "body_too_large", f"the body is larger than {limit} bytes")],
                                status=413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise BodyError([error(["body"], "client_disconnected", "the client closed the connection mid-body")],
                        status=400) from None
    return b"".join(chunks)


#: recommendations computed at once: `serving.threads`' own default (cartwise.config.ServingConfig); 0: on the
#: event loop
DEFAULT_THREADS = ServingConfig.model_fields["threads"].default


class _Limiter:
    """The threads the pipeline runs on: an anyio CapacityLimiter made in the server's event loop on first use.

    The pipeline is CPU-bound Python under one interpreter lock. On anyio's default pool (40 threads) the
    throughput fell as clients were added (1M-item benchmark: 197 req/s with 1 client, 163 with 4, 109
    with 16; 150 req/s offered collapsed to 102). Limited to 2 threads: ~205 req/s at any concurrency, 150
    req/s p50 5.55 ms; on the event loop itself (`threads` 0, the default): 232-275 req/s over two runs,
    150 req/s p50 4.69-4.91 / p99 8.18-8.35 ms, since the hand-off to a thread and back, and the two
    threads taking turns at the lock, cost about 1 ms a request (benchmarks/bench_serving.py --threads,
    2026-11-27, README "End to end"). What a thread pool still buys: requests overlap while one waits on
    a slow remote store (with 0, every request waits behind such a read).
    """

    def __init__(self, threads: int):
        if threads < 0:
            raise ValueError(f"serving threads must be >= 0, got {threads}")
        self.threads = threads
        self._limiter: anyio.CapacityLimiter | None = None

    def get(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return self._limiter


def create_app(recommender: Recommender | BundleSlot, max_k: int = 200, reload_token: str | None = None,
               threads: int = DEFAULT_THREADS) -> FastAPI:
    """The FastAPI app over one recommender or a hot-swappable slot.

    Args:
        recommender: built at start-up (wiring errors surface before the app
            exists), or a slot whose bundle a watcher or `/admin/reload` swaps.
        max_k: largest `k` a request may ask for (`serving.max_k`).
        reload_token: enables `POST /admin/reload` for loopback clients sending it.
        threads: recommendations computed at once (`serving.threads`); further requests wait their turn
            in arrival order.

    Returns:
        The app; `app.state.slot` is the slot, `app.state.registry` the
        Prometheus registry `/metrics` exposes (the app's metrics and those of
        the recommender in service).
    """
    app = FastAPI(title="cartwise", version="0.1.0",
                  description="Recommendations for online shops. Every error has the body "
                              "`{\"detail\": [{\"loc\", \"field\", \"type\", \"msg\"}]}`.")
    slot = recommender if isinstance(recommender, BundleSlot) else BundleSlot(recommender)
    metrics = _Metrics()
    metrics.registry.register(RecommenderMetrics(lambda: slot.current))  # once: it follows the slot
    app.state.slot, app.state.registry, app.state.metrics = slot, metrics.registry, metrics
    app.add_middleware(_MetricsMiddleware, metrics=metrics, routes=app.router.routes)

    def error_response(status: int, errors: list[ErrorItem], headers: dict | None = None) -> ErrorJSONResponse:
        if status in (413, 415, 422):
            metrics.count_errors(errors)
        body = ErrorResponse(detail=errors).model_dump(mode="json")
        return ErrorJSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(BodyError)
    async def body_error(request: Request, exc: BodyError) -> ErrorJSONResponse:
        return error_response(exc.status, exc.errors)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> ErrorJSONResponse:
        return error_response(422, errors_from_pydantic(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> ErrorJSONResponse:
        if isinstance(exc, ApiError):
            errors = exc.errors
        elif exc.status_code == 404:
            errors = [error(["path"], "not_found", f"no endpoint at {request.url.path[:200]}")]
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            errors = [error(["method"], "method_not_allowed",
                            f"{request.method[:20]} is not allowed on {request.url.path[:200]}; allowed: {allowed}")]
        else:
            errors = [error(["request"], f"http_{exc.status_code}", str(exc.detail))]
        return error_response(exc.status_code, errors, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> ErrorJSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, [error(["server"], "internal_error", "internal error; see the server log")])

    pipeline_threads = _Limiter(threads)

    def answer(req: RecommendRequest) -> Response:
        with slot.acquire() as rec_:  # one bundle for the whole answer
            rec = rec_.recommend(req.user_id, req.k, req.exclude, req.exclude_purchased, session=req.session)
            return Response(recommendation_json(rec_, rec), media_type=JSON_MEDIA_TYPE)

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=ERROR_RESPONSES,
              openapi_extra={"requestBody": {"required": True, "content": {JSON_MEDIA_TYPE: {
                  "schema": {"$ref": "#/components/schemas/RecommendRequest"}}}}})
    async def recommend(request: Request) -> Response:
        """What this shopper should see now. The body is a `RecommendRequest`.

        Checks run in order and the first failing one answers: Content-Type
        and Content-Encoding (415), size (413), UTF-8 and strict JSON (422),
        schema (422).
        """
        _check_content_type(request.headers.get("content-type"))
        _check_content_encoding(request.headers.get("content-encoding"))
        body = await _read_body(request, MAX_BODY_BYTES)
        req = validate_request(parse_json(body), max_k=max_k)
        if threads == 0:  # on the event loop itself: no hand-off to a thread and back
            return answer(req)
        return await anyio.to_thread.run_sync(answer, req, limiter=pipeline_threads.get())

    @app.get("/health/live")
    def live() -> dict:
        return {"status": "ok"}

    @app.get("/health/ready")
    def ready() -> dict:
        rec = slot.current
        store_ok = rec.features.ping()
        body = {"status": "ok" if store_ok and not slot.alert else "degraded", "bundle_version": rec.version,
                "online_store": "ok" if store_ok else "unavailable"}
        if slot.alert:
            body["alert"] = slot.alert
        tracker = getattr(rec, "tracker", None)
        overrides = tracker.status() if tracker is not None else None
        if overrides is not None and "warning" in overrides:  # the alarm is on: serving works, the model disagrees
            body["warning"] = overrides["warning"]
            body["overrides"] = overrides
            if body["status"] == "ok":
                body["status"] = "warning"
        return body

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}, "description": "Prometheus text format"}})
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    if reload_token:
        reload_errors = {s: {"model": ErrorResponse, "description": d} for s, d in (
            (403, "not a loopback client, or a wrong X-Reload-Token"),
            (409, "the new bundle failed to load; the old one keeps serving"),
            (422, "malformed header"))}

        @app.post("/admin/reload", responses=reload_errors)
        def reload(request: Request, x_reload_token: str = Header("")) -> dict:
            if request.client is None or request.client.host not in LOOPBACK:
                raise ApiError(403, [error(["client"], "forbidden", "reload is only accepted from loopback")])
            if not hmac.compare_digest(x_reload_token.encode(), reload_token.encode()):
                raise ApiError(403, [error(["header", "x-reload-token"], "forbidden", "bad reload token")])
            r = slot.reload()
            if not r.ok:
                raise ApiError(409, [error(["bundle"], "reload_failed", f"{r.error}; still serving {r.old_version}")])
            return {"old_version": r.old_version, "new_version": r.new_version, "seconds": round(r.seconds, 3)}

    def openapi() -> dict:
        # the body is read by hand (strict JSON, size limit), so FastAPI cannot see the model: add it here
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            req = RecommendRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(req.pop("$defs", {}))
            req["properties"]["k"]["maximum"] = max_k
            schemas["RecommendRequest"] = req
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
