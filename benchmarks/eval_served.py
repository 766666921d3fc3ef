"""What the *served* pipeline answers, measured on the evaluation split with the protocol of pipelines/evaluate.py.

Not a test. `pipelines/evaluate.py` measures the offline pipeline (its own
candidate set: the user's items, item-kNN, EASE, popularity); serving answers
from other sources (two-tower, content, repeat, popular-in-category,
popularity) through the bundle's rules and diversity. This script measures
that answer. Run (after `cartwise ingest`, which `make demo` runs):

    .venv/bin/python benchmarks/eval_served.py [--config cartwise.yaml] [--work DIR] [--out FILE]
        [--reuse] [--retrieval JSON]

(`--work DIR --reuse` serves the bundle built there before; `--retrieval` serves
it with other sources, e.g. '{"k": 200, "sources": [...]}'.)

1. A work dir whose event log ends at the split (the ingested events before
   the cut-off, the same item table), so everything a bundle holds, the
   online store included, is as of the cut-off: build-features, build-dataset,
   validate, train, build-ranking-dataset, train-ranking, export.
2. Every test user (a customer who bought before the cut-off and in the test
   window) asks the exported bundle's `Recommender.recommend` for 10 items, no
   session, at the bundle's as-of instant (the cut-off): once with the bundle's
   learned ranker, once with the retrieval-score ranker, each for all items
   and new to user (`exclude_purchased`, relevance without the training items).
3. NDCG@10, HitRate@10, Recall@10 (pipelines/metrics.py), binary gain.
4. The cold users of the evaluation's cohort (`pipelines/cold_users.py`:
   customers first seen in the test window, their first basket, the items of
   their later purchases without the basket's) ask with their id (unknown to
   the bundle) and the basket as the session's cart (its first
   `serving.request.MAX_SESSION_ITEMS` items, the session category the
   basket's most common one): the served session route (two-tower from the
   session, bought-together, content, popular-in-category, popularity). Beside
   it the same shoppers without a session (the popularity fallback).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cartwise.bundle import current_bundle  # noqa: E402
from cartwise.config import load_config  # noqa: E402
from feature_repo import names as n  # noqa: E402
from cartwise.demo import TRAINING  # noqa: E402
from pipelines import build_features, export  # noqa: E402
from pipelines.build_dataset import train_cutoff  # noqa: E402
from pipelines.metrics import hit_at_k, ndcg_at_k, recall_at_k  # noqa: E402
from pipelines.cold_users import cold_user_targets, session_category  # noqa: E402
from serving.pipeline import Recommender, RetrievalScoreRanker  # noqa: E402
from serving.request import MAX_SESSION_ITEMS, SessionContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K = 10


def quiet(_):
    pass


def build_bundle(config_path: Path, work: Path, log) -> tuple[object, pd.DataFrame, pd.DataFrame]:
    """The split's bundle, as of the cut-off; returns (config, training purchases, test purchases)."""
    base = load_config(config_path)
    src = base.work_dir / "ingest"
    if not (src / "events.parquet").is_file():
        raise SystemExit(f"{src}/events.parquet not found: run `cartwise ingest --config {config_path}` first")
    cfg = base.model_copy(update={"data": base.data.model_copy(update={"work_dir": work})})
    cutoff = train_cutoff(cfg)
    events = pd.read_parquet(src / "events.parquet")
    (work / "ingest").mkdir(parents=True, exist_ok=True)
    events[events[n.EVENT_TIMESTAMP] < cutoff].to_parquet(work / "ingest" / "events.parquet", index=False)
    shutil.copy2(src / "items.parquet", work / "ingest" / "items.parquet")
    shutil.copy2(src / "manifest.json", work / "ingest" / "manifest.json")  # provenance of the ingest
    # the demo's stages after ingest (the events are already cut at the split)
    for name, run in (("build-features", build_features.run), *TRAINING, ("export", export.run)):
        t = time.perf_counter()
        run(cfg, log=quiet)
        log(f"{name}: {time.perf_counter() - t:.0f}s")
    return (cfg, *split_of(config_path))


def split_of(config_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training purchases, test purchases) of the ingested events, split as pipelines/evaluate.py splits."""
    base = load_config(config_path)
    cutoff = train_cutoff(base)
    events = pd.read_parquet(base.work_dir / "ingest" / "events.parquet")
    p = events[events[n.EVENT_TYPE] == n.PURCHASE]
    test_end = pd.Timestamp(base.evaluation.test_end, tz="UTC") + pd.Timedelta(days=1) if base.evaluation.test_end \
        else None
    test = p[(p[n.EVENT_TIMESTAMP] >= cutoff) & ((p[n.EVENT_TIMESTAMP] < test_end) if test_end is not None else True)]
    return p[p[n.EVENT_TIMESTAMP] < cutoff], test


def measure(rec: Recommender, users: list[str], relevant: dict, bought: dict) -> dict:
    out = {}
    for variant, exclude in (("all_items", False), ("new_to_user", True)):
        nd, hit, rec_ = [], [], []
        for u in users:
            rel = relevant[u] - bought[u] if exclude else relevant[u]
            if not rel:
                continue
            got = [i.item_id for i in rec.recommend(u, K, exclude_purchased=exclude).items]
            nd.append(ndcg_at_k(got, rel, K))
            hit.append(hit_at_k(got, rel, K))
            rec_.append(recall_at_k(got, rel, K))
        out[variant] = {"users": len(nd), f"ndcg@{K}": float(np.mean(nd)), f"hit_rate@{K}": float(np.mean(hit)),
                        f"recall@{K}": float(np.mean(rec_))}
    return out


def measure_cold(rec: Recommender, users: list[str], baskets: dict, relevant: dict, categories: dict) -> dict:
    """The cold users' served lists (step 4 of the module docstring): with the basket as the session and without."""
    out = {}
    for route in ("session", "no_session"):
        nd, hit, rec_ = [], [], []
        for u in users:
            session = None
            if route == "session":
                session = SessionContext(cart=baskets[u][:MAX_SESSION_ITEMS],
                                         category=session_category(baskets[u], categories))
            got = [i.item_id for i in rec.recommend(u, K, session=session).items]
            nd.append(ndcg_at_k(got, relevant[u], K))
            hit.append(hit_at_k(got, relevant[u], K))
            rec_.append(recall_at_k(got, relevant[u], K))
        out[route] = {"users": len(nd), f"ndcg@{K}": float(np.mean(nd)) if nd else 0.0,
                      f"hit_rate@{K}": float(np.mean(hit)) if hit else 0.0,
                      f"recall@{K}": float(np.mean(rec_)) if rec_ else 0.0}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "cartwise.yaml"))
    ap.add_argument("--work", default=None, help="work dir (default: a temp dir, removed afterwards)")
    ap.add_argument("--out", default=str(ROOT / "build" / "benchmarks" / "eval_served.json"))
    ap.add_argument("--reuse", action="store_true", help="serve the bundle already in --work (no rebuild)")
    ap.add_argument("--retrieval", default=None,
                    help="a `retrieval:` section as JSON to serve instead of the bundle's (same bundle)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tmp = None if args.work else tempfile.mkdtemp(prefix="eval_served_")
    work = Path(args.work or tmp).resolve()
    try:
        if args.reuse and (work / "bundles" / "CURRENT").is_file():
            train, test = split_of(Path(args.config))
        else:
            _, train, test = build_bundle(Path(args.config), work, print)
        rec = Recommender.from_bundle_dir(current_bundle(work / "bundles"))
        if args.retrieval:
            section = rec.config.retrieval.model_validate({**rec.config.retrieval.model_dump(mode="json"),
                                                           **json.loads(args.retrieval)})
            rec = Recommender(rec.bundle, rec.features, config=rec.config.model_copy(update={"retrieval": section}))
        if rec.config.serving.request_time != "bundle":
            raise SystemExit("serving.request_time must be `bundle` here: the requests are made at the cut-off")
        customers = train[train[n.USER_ID].notna()]
        bought = {str(u): set(g[n.ITEM_ID].astype(str)) for u, g in customers.groupby(n.USER_ID)}
        t = test[test[n.USER_ID].notna()]
        relevant = {str(u): set(g[n.ITEM_ID].astype(str)) for u, g in t.groupby(n.USER_ID)}
        users = sorted(u for u in relevant if u in bought)
        result = {"bundle": rec.version, "retrieval": rec.config.retrieval.model_dump(mode="json")["sources"], "as_of": rec.bundle.manifest["as_of"], "test_users": len(users),
                  "ranker": type(rec.ranker).__name__,
                  "served_learned_ranker": measure(rec, users, relevant, bought)}
        plain = Recommender(rec.bundle, rec.features, config=rec.config, ranker=RetrievalScoreRanker())
        result["served_retrieval_order"] = measure(plain, users, relevant, bought)
        cold, baskets, cold_relevant = cold_user_targets(train, test)
        items = pd.read_parquet(load_config(args.config).work_dir / "ingest" / "items.parquet")
        categories = items.set_index(n.ITEM_ID)[n.CATEGORY].astype(str).to_dict()
        result["cold_users"] = measure_cold(rec, cold, baskets, cold_relevant, categories)
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(result, indent=1))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
