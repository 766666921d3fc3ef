"""`cartwise demo`: the whole path on the embedded default, end to end.

Where it sits: top layer. Runs every pipeline stage in order (ingest ->
features -> point-in-time dataset -> Great Expectations validation ->
two-tower training -> ranking rows and DCN ranking -> evaluation with
baselines and the HTML report -> export), then starts the
real HTTP server on a loopback port, fetches one recommendation over HTTP
and prints it, and stops the server.
"""
from __future__ import annotations

import json
import time

import httpx

from cartwise.bundle import current_bundle
from cartwise.config import CartwiseConfig
from pipelines import (build_dataset, build_features, build_ranking_dataset, evaluate, export, ingest, train_ranking,
                       train_retrieval, validate_dataset)
from pipelines.progress import default_log
from serving.app import create_app
from serving.pipeline import Recommender
from serving.server import BackgroundServer

STAGES = (
    ("ingest", ingest.run),
    ("build-features", build_features.run),
    ("build-dataset", build_dataset.run),
    ("validate", validate_dataset.run),
    ("train", train_retrieval.run),
    ("build-ranking-dataset", build_ranking_dataset.run),
    ("train-ranking", train_ranking.run),
    ("evaluate", evaluate.run),
    ("export", export.run),
)


def sample_user(recommender: Recommender) -> str:
    """The customer with the most purchases in the bundle's history (deterministic)."""
    h = recommender.bundle.history
    totals = h.groupby("user_id")["purchases"].sum().sort_values(ascending=False, kind="stable")
    return str(totals.index[0])


def run(config: CartwiseConfig, *, log=default_log) -> dict:
    """Run every stage, then one real HTTP request; returns what it printed as a dict."""
    t0 = time.perf_counter()
    results = {}
    for name, fn in STAGES:
        log(f"\n=== {name} ===")
        results[name] = fn(config, log=log)
    bundle_dir = current_bundle(config.work_dir / "bundles")
    log("\n=== serve ===")
    recommender = Recommender.from_bundle_dir(bundle_dir)
    user = sample_user(recommender)
    with BackgroundServer(create_app(recommender), host=config.serving.host) as srv:
        body = {"user_id": user, "k": 5, "exclude_purchased": True}
        resp = httpx.post(f"{srv.url}/v1/recommend", json=body, timeout=30)
        resp.raise_for_status()
        log(f"POST {srv.url}/v1/recommend {json.dumps(body)}\n-> HTTP {resp.status_code}")
        log(json.dumps(resp.json(), indent=2))
    metrics_path = config.work_dir / "evaluation" / "metrics.json"
    log("\n=== summary ===")
    log(f"metrics : {metrics_path}")
    log(f"report  : {metrics_path.parent / 'report.html'}")
    log(f"bundle  : {bundle_dir}")
    log(f"elapsed : {time.perf_counter() - t0:.0f}s")
    return {"results": results, "response": resp.json(), "bundle": str(bundle_dir)}
