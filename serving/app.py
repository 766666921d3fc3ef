"""HTTP API (FastAPI): `POST /v1/recommend`, `GET /health/live`, `GET /health/ready`, `POST /admin/reload`.

Where it sits: the outermost serving layer; `create_app(recommender)` wraps
a built :class:`serving.pipeline.Recommender`, or a
:class:`serving.hotswap.BundleSlot` whose bundle can be swapped while serving.
Requests are validated by pydantic models (unknown fields, wrong types and
out-of-range values get a 422 naming the field), so a bad request never
reaches the pipeline. Each request takes the slot's recommender once, so its
items and its `bundle_version` come from the same bundle.

`POST /admin/reload` (hot swap now, instead of waiting for the CURRENT
watcher) exists only when a reload token is configured, answers only
loopback clients, and compares the `X-Reload-Token` header in constant time.
"""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from serving.hotswap import BundleSlot
from serving.pipeline import Recommender

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})

ItemId = Annotated[str, Field(min_length=1, max_length=128)]


class RecommendRequest(BaseModel):
    """Body of `POST /v1/recommend`."""

    model_config = ConfigDict(extra="forbid")
    user_id: str | None = Field(None, min_length=1, max_length=128, description="shopper id; omit for anonymous")
    k: int = Field(10, ge=1, le=10_000, description="number of items (at most serving.max_k)")
    exclude: list[ItemId] = Field(default_factory=list, max_length=1000, description="item ids never to return")
    exclude_purchased: bool = Field(False, description="leave out items the user bought before")


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    source: str
    title: str | None = None
    category: str | None = None


class RecommendResponse(BaseModel):
    user_id: str | None
    items: list[RecommendedItem]
    bundle_version: str
    flags: list[str]


def create_app(recommender: Recommender | BundleSlot, max_k: int = 200, reload_token: str | None = None) -> FastAPI:
    """The FastAPI app over one recommender or a hot-swappable slot.

    Args:
        recommender: built at start-up (wiring errors surface before the app
            exists), or a slot whose bundle a watcher or `/admin/reload` swaps.
        max_k: largest `k` a request may ask for (`serving.max_k`).
        reload_token: enables `POST /admin/reload` for loopback clients sending it.
    """
    app = FastAPI(title="cartwise", version="0.1.0")
    slot = recommender if isinstance(recommender, BundleSlot) else BundleSlot(recommender)
    app.state.slot = slot

    @app.post("/v1/recommend", response_model=RecommendResponse)
    def recommend(req: RecommendRequest) -> RecommendResponse:
        if req.k > max_k:
            raise RequestValidationError([{"type": "less_than_equal", "loc": ("body", "k"),
                                           "msg": f"Input should be less than or equal to {max_k}",
                                           "input": req.k}])
        with slot.acquire() as rec_:
            rec = rec_.recommend(req.user_id, req.k, req.exclude, req.exclude_purchased)
            return RecommendResponse(
                user_id=rec.user_id, bundle_version=rec.bundle_version, flags=rec.flags,
                items=[RecommendedItem(item_id=r.item_id, score=r.score, source=r.source,
                                       title=rec_.titles.get(r.item_id), category=rec_.categories.get(r.item_id))
                       for r in rec.items],
            )

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
        return body

    if reload_token:
        @app.post("/admin/reload")
        def reload(request: Request, x_reload_token: str = Header("")) -> dict:
            if request.client is None or request.client.host not in LOOPBACK:
                raise HTTPException(status_code=403, detail="reload is only accepted from loopback")
            if not hmac.compare_digest(x_reload_token.encode(), reload_token.encode()):
                raise HTTPException(status_code=403, detail="bad reload token")
            r = slot.reload()
            if not r.ok:
                raise HTTPException(status_code=409, detail={"error": r.error, "serving": r.old_version})
            return {"old_version": r.old_version, "new_version": r.new_version, "seconds": round(r.seconds, 3)}

    return app
