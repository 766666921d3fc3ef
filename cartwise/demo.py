"""`cartwise demo`: the whole path on the embedded default, end to end.

Where it sits: top layer. Runs every pipeline stage in order (ingest ->
features -> point-in-time dataset -> Great Expectations validation ->
two-tower training -> ranking rows and DCN ranking -> evaluation with
baselines and the HTML report on the split; then the same training on all
the data -> export), then runs the evaluation's test users through the
exported bundle's serving pipeline and adds how often the business rules
override the model to the evaluation's metrics.json and report.html
(pipelines/override_report.py), then starts the real HTTP server on a
loopback port with that same pipeline, fetches one recommendation over HTTP
and prints it, and stops the server.
"""
from __future__ import annotations

import json
import time

import httpx
import pandas as pd

from cartwise.bundle import current_bundle
from cartwise.config import CartwiseConfig
from pipelines import (build_dataset, build_features, build_ranking_dataset, evaluate, export, ingest,
                       override_report, train_ranking, train_retrieval, validate_dataset)
from pipelines.progress import default_log
from serving.app import create_app
from serving.pipeline import Recommender
from serving.server import BackgroundServer

TRAINING = (
    ("build-dataset", build_dataset.run),
    ("validate", validate_dataset.run),
    ("train", train_retrieval.run),
    ("build-ranking-dataset", build_ranking_dataset.run),
    ("train-ranking", train_ranking.run),
)
#: evaluated on the split of cartwise.yaml, then trained again on all the data and exported
STAGES = (
    ("ingest", ingest.run),
    ("build-features", build_features.run),
    *TRAINING,
    ("evaluate", evaluate.run),
    *((f"{name} (all data)", fn) for name, fn in TRAINING),
    ("export", export.run),
)
FINAL = {name for name, _ in STAGES if name.endswith("(all data)")} | {"export"}


def all_data_config(config: CartwiseConfig) -> CartwiseConfig:
    """`config` with the training window extended to the last day of the ingested events.

    The split of `evaluation` is where the settings are chosen and measured;
    the model a shop deploys is then trained the same way on everything it
    has. The evaluation's metrics.json stays the split's.
    """
    events = pd.read_parquet(config.work_dir / "ingest" / "events.parquet", columns=["event_timestamp"])
    last_day = pd.Timestamp(events["event_timestamp"].max()).date()
    ev = config.evaluation.model_copy(update={"split_date": last_day, "test_end": None})
    return config.model_copy(update={"evaluation": ev})


def sample_user(recommender: Recommender) -> str:
    """The customer with the most purchases in the bundle's history (deterministic)."""
    h = recommender.bundle.history
    totals = h.groupby("user_id")["purchases"].sum().sort_values(ascending=False, kind="stable")
    return str(totals.index[0])


def run(config: CartwiseConfig, *, log=default_log) -> dict:
    """Run every stage, then one real HTTP request; returns what it printed as a dict."""
    t0 = time.perf_counter()
    results = {}
    final = None
    for name, fn in STAGES:
        log(f"\n=== {name} ===")
        if name in FINAL and final is None:
            final = all_data_config(config)
            log(f"(training end moved from {config.evaluation.split_date} to {final.evaluation.split_date})")
        results[name] = fn(final if name in FINAL else config, log=log)
    bundle_dir = current_bundle(config.work_dir / "bundles")
    recommender = Recommender.from_bundle_dir(bundle_dir)
    log("\n=== rule overrides (test users through the exported bundle) ===")
    # the split's test users (`config`, not the all-data one); the served app's tracker starts with these requests
    results["overrides"] = override_report.run(config, recommender, log=log)
    log("\n=== serve ===")
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
