"""HTTP API (FastAPI): `POST /v1/recommend`, `GET /health/live`, `GET /health/ready`.

Where it sits: the outermost serving layer; `create_app(recommender)` wraps
a built :class:`serving.pipeline.Recommender`. Requests are validated by
pydantic models (unknown fields, wrong types and out-of-range values get a
422 naming the field), so a bad request never reaches the pipeline.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from serving.pipeline import Recommender

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


def create_app(recommender: Recommender, max_k: int = 200) -> FastAPI:
    """The FastAPI app over one recommender.

    Args:
        recommender: built at start-up; wiring errors surface before the app exists.
        max_k: largest `k` a request may ask for (`serving.max_k`).
    """
    app = FastAPI(title="cartwise", version="0.1.0")
    items = recommender.bundle.items.set_index("item_id")
    titles = items["title"].astype(object).where(items["title"].notna(), None).to_dict()
    categories = items["category"].astype(object).to_dict()

    @app.post("/v1/recommend", response_model=RecommendResponse)
    def recommend(req: RecommendRequest) -> RecommendResponse:
        if req.k > max_k:
            raise RequestValidationError([{"type": "less_than_equal", "loc": ("body", "k"),
                                           "msg": f"Input should be less than or equal to {max_k}",
                                           "input": req.k}])
        rec = recommender.recommend(req.user_id, req.k, req.exclude, req.exclude_purchased)
        return RecommendResponse(
            user_id=rec.user_id, bundle_version=rec.bundle_version, flags=rec.flags,
            items=[RecommendedItem(item_id=r.item_id, score=r.score, source=r.source,
                                   title=titles.get(r.item_id), category=categories.get(r.item_id))
                   for r in rec.items],
        )

    @app.get("/health/live")
    def live() -> dict:
        return {"status": "ok"}

    @app.get("/health/ready")
    def ready() -> dict:
        store_ok = recommender.features.ping()
        return {"status": "ok" if store_ok else "degraded", "bundle_version": recommender.bundle.version,
                "online_store": "ok" if store_ok else "unavailable"}

    return app
