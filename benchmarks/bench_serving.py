"""Serving benchmark: `POST /v1/recommend` end to end over a loopback socket, with a trivial endpoint beside it.

Not a test (timings never assert in the suite). Run:

    .venv/bin/python benchmarks/bench_serving.py [--cases demo,100000,1000000] [--candidates 500]
        [--concurrency 1,4,16] [--rates 50,100,150] [--requests 200] [--rounds 2] [--duration 6]
        [--seed 0] [--threads N] [--out build/benchmarks/serving.json]

Each case runs in its own server process (a child of this script): it builds
a :class:`serving.pipeline.Recommender`, wraps it in the real app
(`serving.app.create_app`) and serves it with uvicorn in a thread
(`serving.server.BackgroundServer`: one process, uvloop + httptools, no
access log; `cartwise serve` runs uvicorn at log level info, i.e. with an
access log line per request, which is not measured here). This process is
the load generator: raw HTTP/1.1 keep-alive requests over asyncio sockets on
127.0.0.1 (pre-encoded bodies, so the client costs little; it still shares
the 2 cores with the server). Per case:

1. **In-process** (in the server process, while its HTTP side is idle):
   the same request bodies through `parse_json` + `validate_request`
   (what the app does before the pipeline), `Recommender.recommend`, and
   the response the app builds (`serving.app.recommendation_json`: a
   `RecommendResponse` serialized by pydantic, the route's own call).
   - **stage breakdown**: the pipeline has no stage timings of its own, so
     they are measured from outside: the stages of the *real*
     `Recommender.recommend` are wrapped with timers for the duration of
     this pass (instance attributes only; nothing in `serving/` is edited):
     features (`Recommender.query`; inside it the Feast online read
     `OnlineUserFeatures.get` and the query tower `embed_query`, the rest
     is the request's catalog lookups and exclusion rows), retrieval
     (`Retriever.retrieve`; inside it each source's `retrieve_rows`, the rest is
     the merge: quotas, scaling, dedup, attribution, fallbacks), inserted
     pins, candidate columns, the ranking hook (`Ranker.score`), the rules
     (`RuleStage.apply`; inside it each rule and diversity, the rest is pin
     placement and the per-item rule tracing), the override tracker; "other"
     is what `recommend` spends outside these (sort by score, result
     objects). Per request, a stage that did not run counts 0.
   - **in-process total**: the same path without the timers; each request
     runs twice in a row, with and without the timers, alternating which goes
     first, so both see the same load and caches.
2. **HTTP, closed loop**: N clients (`--concurrency`), each on its own
   keep-alive connection sending its next request when the previous answer
   has arrived; `--requests` per block (at least 25 per client). Every block of `/v1/recommend` is
   paired with a block of `GET /health/live` (same server, same client, same
   concurrency: the HTTP + ASGI + client floor), alternating which goes
   first, `--rounds` times, interleaved with the in-process passes, so
   everything sees the same machine load. Latency p50 / p99 and requests/s;
   the ratios recommend / live show what the pipeline adds to HTTP.
3. **HTTP, open loop**: a fixed rate (`--rates`, evenly spaced sends,
   `--duration` seconds each, up to 64 connections) for recommend and then
   live; latency is counted from the *scheduled* send time, so a server that
   falls behind shows it (no coordinated omission). Sends leave on time: each
   sleeps until 1.5 ms before its time and then polls the event loop
   (`asyncio.sleep(0)`, so answers arriving meanwhile are read) until it; a
   plain `asyncio.sleep` woke up to 0.5 ms late at the median and up to 2 ms at
   p99 (the reported `send_lag_ms`), which counted as server latency. Beside
   the latency seen by the client, the server times its own pipeline calls
   (`Recommender.recommend`) for these requests (`server_recommend_ms`): what
   the client sees over that is HTTP, waking up and waiting behind an earlier
   request. The goal is judged here.

Cases:

- `demo`: the shipped demo bundle, `build/bundles/CURRENT` (or `--bundle`),
  loaded as `cartwise serve` loads it (`Recommender.from_bundle_dir`: sha256,
  golden queries, its own config.json and its Feast online store: whatever
  sources, rules and diversity that config names are what is measured). Without
  one, `cartwise demo` builds one into `--demo-work` (a temp dir, never
  `build/`) first.
- a number N (`100000`, `1000000`): a **synthetic catalog** of N items served
  by a bundle-like Recommender built in memory without training: a
  :class:`cartwise.bundle.LoadedBundle` made directly (not loaded from an export) with
  - item embeddings: a Gaussian mixture (one component per category, log-normal
    item norms, the calibration of benchmarks/bench_index.py) of the demo query
    tower's output size, indexed by `pipelines.build_index.build_searcher` with
    `retrieval.index` of cartwise.yaml (the searcher export ships: tree + AH +
    re-ordering), its search (leaves and re-ordering depth) per list length
    calibrated as export does (`calibrate_on_users`) on the query tower's outputs for up to
    `calibration_queries` of the demo's buyers, whose requests it then serves;
  - the demo bundle's **real query tower** (TensorFlow SavedModel, served
    through its checked NumPy pass as in the demo case: the demo's golden
    users are the probe) and the
    demo's **real Feast online store** for user features: the known users are
    the demo's buyers, each given a synthetic purchase history over the
    synthetic items (5-60 purchases), so the features stage costs what it
    costs in production; the tower's output is not trained against these
    items, which changes which items come back, not the search cost;
  - 16-d content embeddings (a projection of the item's mixture centre plus
    noise), ~N/2000 categories of log-normal sizes, prices, margins, 5% out of
    stock and 2% unknown stock, a ranked popularity list of N/10 items, and
    a co-purchase table of 20 same-category neighbours for each of the
    min(N/10, 100k) most popular items;
  - the serving config: `retrieval.k` = `--candidates` (500) with sources
    two_tower (quota 60%), bought_together (10%), content (20%), repeat (10%),
    then the popular_in_category and popularity fallbacks filling up to the
    budget; the README's example rule chain (out_of_stock, a promotion on two
    categories and an item, always active; margin_target; a country-scoped
    block, in force because requests carry no country; an `insert: true` pin
    at position 1, which changes the top item of every request, so the
    override alarm goes off once and logs a warning) and `diversity: max_per_category 3`;
  - ranking: when the demo bundle has a ranker (`<bundle>/ranking/`), the
    same learned ranker (`serving.ranking.LearnedRanker`: the demo's trained
    DCN tower and feature spec) over synthetic ranking state written by
    :func:`_synthetic_ranker` (item features resampled from the demo's
    columns, a 20-neighbour item-kNN, the buyers' repeat profiles and pair
    keys; user and user x item features read online from the demo's Feast
    store, where the synthetic pairs have no rows: the reads cost what a
    lookup costs, and answer "none"). So the 500 candidates are ranked by the
    model, as in production. Without a ranker in the demo bundle, the
    default hook (the merged retrieval score, a sort).

Requests (the same fixed list for every pass of a case; seeded): 70% known
users, 10% unknown user ids, 20% anonymous; every request has a session (3
viewed items, each 70% likely from the 2,000 most popular; a 1-2 item cart
half of the time;
the last viewed item's category; a device), `k` 10, `exclude_purchased` half
of the time.

Goal (issue 6): with 1M items and 500 candidates, p50 <= 5 ms and p99 <= 15 ms
while serving >= 150 requests/s on 2 cores; judged on the open-loop run at
150/s (achieved rate >= 150/s and its p50 / p99), the closed-loop figures
beside it. Ratios, not absolute timings, are the result: the machine is shared
(load averages are recorded).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "@@bench "
WARMUP = 40
OPEN_LOOP_CONNECTIONS = 64
OPEN_LOOP_PREOPEN = 8
#: the open loop sleeps until this long before a send, then polls the event loop until the send time: asyncio's
#: timers wake up to ~1 ms late (epoll's millisecond timeouts), and that lateness would count as server latency.
#: The polling costs the client up to this long of CPU a send (at 150 req/s about a fifth of a core)
OPEN_LOOP_SPIN_S = 0.0015
DEFAULT_K = 10


# =============================================================================================================
# statistics, shared
# =============================================================================================================


def pct(values_ms: list[float]) -> dict:
    """p50 / p90 / p99 / mean / max of a list of milliseconds."""
    import numpy as np

    if not values_ms:
        return {"n": 0}
    a = np.asarray(values_ms, dtype=np.float64)
    return {"n": int(len(a)), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}


# =============================================================================================================
# the server process (child)
# =============================================================================================================


def _emit(obj: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj, default=float) + "\n")
    sys.stdout.flush()


def _rss() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) // 1024  # MB
    return out


class _Timed:
    """A callable standing in for a rule or diversity object (`.inner` of the pipeline's traced wrappers)."""

    def __init__(self, inner, name, sink):
        self._inner, self._name, self._sink = inner, name, sink

    def __call__(self, *a, **k):
        t = time.perf_counter_ns()
        try:
            return self._inner(*a, **k)
        finally:
            self._sink[self._name] = self._sink.get(self._name, 0) + time.perf_counter_ns() - t

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


class StageTimers:
    """Timers around the stages of one Recommender, installed as instance attributes and removed again.

    Args:
        rec: the recommender whose `recommend` is timed.
    """

    def __init__(self, rec):
        self.rec = rec
        self.cur: dict[str, int] = {}  # ns per stage in the current request
        self.counts: dict[str, int] = {}  # candidates per source in the current request
        self._undo: list = []

    def _wrap(self, obj, attr: str, name: str, count: bool | Callable = False) -> None:
        """Time `obj.attr` as stage `name`; `count`: count len(result) (True) or count(result) (a callable)."""
        orig = getattr(obj, attr)
        cur, counts = self.cur, self.counts
        size = (count if callable(count) else len) if count else None

        def timed(*a, **k):
            t = time.perf_counter_ns()
            try:
                out = orig(*a, **k)
            finally:
                cur[name] = cur.get(name, 0) + time.perf_counter_ns() - t
            if size is not None:
                counts[name] = counts.get(name, 0) + size(out)
            return out

        had = attr in vars(obj)
        object.__setattr__(obj, attr, timed)
        self._undo.append((obj, attr, had, orig))

    def _swap(self, obj, attr: str, name: str) -> None:
        orig = getattr(obj, attr)
        object.__setattr__(obj, attr, _Timed(orig, name, self.cur))
        self._undo.append((obj, attr, True, orig))

    def install(self) -> None:
        r = self.rec
        self._wrap(r, "query", "features")
        self._wrap(r.features, "get", "features.online_store")
        self._wrap(r, "embed_query", "features.query_tower")
        # the pipeline calls retrieve_within (the time-budgeted form): (candidates, skipped sources)
        self._wrap(r.retriever, "retrieve_within", "retrieval", count=lambda out: len(out[0]))
        for slot in r.retriever.slots:
            # what the retriever calls: (rows, scores)
            self._wrap(slot.source, "retrieve_rows", f"retrieval.{slot.source.name}",
                       count=lambda out: len(out[0]))
        self._wrap(r, "_add_pinned", "pins_inserted", count=True)
        self._wrap(r.item_columns, "fill", "columns")
        self._wrap(r.ranker, "score", "ranking_hook")
        self._wrap(r.rules, "apply", "rules")
        traced = getattr(r.rules, "_traced", None)  # private: skip the per-rule split if it changes shape
        for rule in getattr(traced, "_body", ()):
            if hasattr(rule, "inner"):
                self._swap(rule, "inner", f"rules.{rule.name}")
        div = getattr(traced, "diversity", None)
        if div is not None and hasattr(div, "inner"):
            self._swap(div, "inner", "rules.diversity")
        self._wrap(r.tracker, "record", "override_tracker")

    def uninstall(self) -> None:
        for obj, attr, had, orig in reversed(self._undo):
            if had:
                object.__setattr__(obj, attr, orig)
            else:
                object.__delattr__(obj, attr)
        self._undo.clear()

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        cur, counts = dict(self.cur), dict(self.counts)
        self.cur.clear()
        self.counts.clear()
        return cur, counts


def _demo_recommender(bundle: str | None, demo_work: str | None):
    from cartwise.bundle import current_bundle
    from serving.pipeline import Recommender

    if bundle:
        root = Path(bundle)
    else:
        root = None
        for bundles in ([ROOT / "build" / "bundles"] + ([Path(demo_work) / "bundles"] if demo_work else [])):
            if (bundles / "CURRENT").is_file():
                root = current_bundle(bundles)
                break
        if root is None:
            raise SystemExit("no demo bundle found (the parent should have built one)")
    return Recommender.from_bundle_dir(root)


def _synthetic_config(categories: list[str], pin_item: str, promo_item: str, candidates: int):
    from cartwise.config import load_config, parse_config

    index = load_config(ROOT / "cartwise.yaml").retrieval.index.model_dump(mode="json")
    q = lambda share: max(1, round(candidates * share))  # noqa: E731
    raw = {
        "retrieval": {"k": candidates, "index": index, "sources": [
            {"type": "two_tower", "quota": q(0.6)},
            {"type": "bought_together", "quota": q(0.1)},
            {"type": "content", "quota": q(0.2)},
            {"type": "repeat", "quota": q(0.1)},
            {"type": "popular_in_category", "quota": q(0.4)},
            "popularity"]},
        "rules": [
            {"type": "out_of_stock"},
            {"type": "promotion", "name": "black_friday", "categories": categories[3:5], "items": [promo_item],
             "factor": 1.5, "start": "2000-01-01T00:00:00+00:00", "end": "2100-01-01T00:00:00+00:00"},
            {"type": "margin_target", "categories": {categories[1]: 1.2}, "margin_weight": 0.5},
            {"type": "block", "categories": [categories[-1]], "countries": ["Germany"]},
            {"type": "pin", "item": pin_item, "position": 1, "insert": True}],
        "diversity": {"method": "max_per_category", "max_per_category": 3},
        "serving": {"max_k": 200},
    }
    return parse_config(raw, source="bench_serving synthetic config"), raw


def _synthetic_ranker(root: Path, demo, ids, categories, history, as_of, rng) -> dict:
    """`<root>/ranking/` for the synthetic catalog: the demo bundle's trained ranker (tower and spec) over
    synthetic item features (each column resampled from the demo's), a 20-neighbour same-category item-kNN
    state, the synthetic buyers' repeat profiles and their (user, item) and (user, category) keys. No EASE
    matrix (a dense items x items matrix: 4 TB at 1M items), so `ease_score` is 0 here."""
    import shutil

    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from feature_repo import names as n
    from feature_repo.item_matrix import ItemFeatureMatrix

    src = demo.bundle.root / "ranking"
    out = root / "ranking"
    shutil.rmtree(out, ignore_errors=True)  # a previous run's
    (out / "scores").mkdir(parents=True)
    shutil.copytree(src / "ranking_tower", out / "ranking_tower")
    for name in ("spec.json", "training_summary.json"):
        shutil.copy2(src / name, out / name)
    real = ItemFeatureMatrix.load(src / "items")
    cols = {}
    for name, col in real.columns.items():
        col = np.asarray(col, dtype=np.float64)
        cols[name] = rng.choice(col, len(ids))
    ItemFeatureMatrix(ids.tolist(), cols).save(out / "items")
    n_items, k = len(ids), 20
    codes = pd.factorize(categories)[0]
    order = np.argsort(codes, kind="stable")
    size = np.bincount(codes)
    start = np.r_[0, np.cumsum(size)[:-1]]
    nb = order[start[codes][:, None] + (rng.random((n_items, k)) * size[codes][:, None]).astype(np.int64)]
    knn = sp.csr_matrix((rng.uniform(0.01, 0.5, n_items * k).astype(np.float32), nb.ravel().astype(np.int32),
                         np.arange(0, n_items * k + 1, k)), shape=(n_items, n_items))
    knn.sum_duplicates()
    knn.sort_indices()
    d = out / "scores"
    (d / "items.json").write_text(json.dumps(ids.tolist()))
    for part in ("indptr", "indices", "data"):
        np.save(d / f"knn_{part}.npy", getattr(knn, part), allow_pickle=False)
    row = pd.Series(np.arange(n_items), index=ids)
    age = (as_of - pd.to_datetime(history["last_purchase"], utc=True)).dt.total_seconds().to_numpy() / 86400.0
    prof = pd.DataFrame({n.USER_ID: history[n.USER_ID].astype(str), "col": row.loc[history[n.ITEM_ID]].to_numpy(),
                         "w_long": (history["purchases"] * 0.5 ** (age / 180.0)).astype(np.float32),
                         "w_recent": (history["purchases"] * 0.5 ** (age / 30.0)).astype(np.float32)})
    prof.sort_values([n.USER_ID, "col"]).to_parquet(d / "profiles.parquet", index=False)
    history[[n.USER_ID, n.ITEM_ID]].astype(str).to_parquet(out / "pairs.parquet", index=False)
    cat_of = pd.Series(categories, index=ids)
    pd.DataFrame({n.USER_ID: history[n.USER_ID].astype(str),
                  n.CATEGORY_KEY: cat_of.loc[history[n.ITEM_ID]].astype(str).to_numpy()}).drop_duplicates() \
        .to_parquet(out / "category_pairs.parquet", index=False)
    return {"ranker": "the demo bundle's DCN", "ranker_knn_neighbours": k, "ranker_ease": False}


def _synthetic_recommender(n_items: int, demo, seed: int, candidates: int, work: Path) -> tuple[object, dict]:
    """A Recommender over a synthetic catalog of `n_items`, built in memory (see the module docstring)."""
    import numpy as np
    import pandas as pd

    from cartwise.bundle import LoadedBundle
    from feature_repo import names as n
    from pipelines.build_features import open_store
    from pipelines.build_index import build_searcher, calibrate_on_users
    from pipelines.evaluate import embed_users
    from serving.pipeline import Recommender

    info: dict = {}
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, n_items])
    # output size of the real query tower
    q = demo.bundle.manifest["query_inputs"]
    probe = {s: np.asarray(["probe"], dtype=object) for s in q["strings"]}
    probe.update({f: np.zeros(1, np.float32) for f in q["floats"]})
    dim = int(demo.bundle.embed_query(probe).shape[1])

    n_cat = int(min(1000, max(20, n_items // 2000)))
    w = rng.lognormal(0.0, 1.0, n_cat)
    cat = rng.choice(n_cat, size=n_items, p=w / w.sum())
    cat_names = np.asarray([f"category {c:04d}" for c in range(n_cat)], dtype=object)
    centers = rng.standard_normal((n_cat, dim)).astype(np.float32)
    emb = np.empty((n_items, dim), np.float32)
    block = 200_000
    for lo in range(0, n_items, block):
        hi = min(n_items, lo + block)
        x = centers[cat[lo:hi]] + 0.3 * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        emb[lo:hi] = x * rng.lognormal(0.0, 0.37, (hi - lo, 1)).astype(np.float32)
    proj = rng.standard_normal((dim, 16)).astype(np.float32)
    content = (centers @ proj)[cat] + 0.5 * rng.standard_normal((n_items, 16), dtype=np.float32)

    ids = np.asarray([f"S{i:07d}" for i in range(n_items)], dtype=object)
    in_stock = pd.array(rng.random(n_items) >= 0.05, dtype="boolean")
    in_stock[rng.random(n_items) < 0.02] = pd.NA
    items = pd.DataFrame({
        n.ITEM_ID: ids, n.CATEGORY: cat_names[cat], n.PRICE: rng.lognormal(1.5, 0.8, n_items).round(2),
        n.TITLE: [f"SYNTHETIC ITEM {i}" for i in range(n_items)], n.IN_STOCK: in_stock,
        n.MARGIN: rng.uniform(0.05, 0.6, n_items)})
    popular_rows = rng.permutation(n_items)[:max(100, n_items // 10)]
    popular = ids[popular_rows].tolist()
    info["data_s"] = time.perf_counter() - t0

    # purchase history of the demo's buyers over the synthetic items (they have real online features)
    users = sorted(demo.catalog.users)
    as_of = pd.Timestamp(demo.bundle.manifest.get("as_of") or "2011-10-01T00:00:00+00:00")
    head = popular_rows[:20_000]
    rows_u, rows_i = [], []
    for u in users:
        m = int(rng.integers(5, 61))
        pick = np.where(rng.random(m) < 0.7, head[rng.integers(0, len(head), m)], rng.integers(0, n_items, m))
        pick = np.unique(pick)
        rows_u += [u] * len(pick)
        rows_i.append(pick)
    hist_items = np.concatenate(rows_i)
    history = pd.DataFrame({n.USER_ID: rows_u, n.ITEM_ID: ids[hist_items],
                            "last_purchase": as_of - pd.to_timedelta(rng.exponential(60.0, len(rows_u)), unit="D"),
                            "purchases": 1 + rng.poisson(1.0, len(rows_u))})

    # co-purchase neighbours: 20 same-category items for each of the most popular items
    seeds = popular_rows[:min(len(popular_rows), 100_000)]
    order = np.argsort(cat, kind="stable")
    size = np.bincount(cat, minlength=n_cat)
    start = np.r_[0, np.cumsum(size)[:-1]]
    nb = order[start[cat[seeds]][:, None] + (rng.random((len(seeds), 20)) * size[cat[seeds]][:, None]).astype(int)]
    score = -np.sort(-rng.uniform(0.02, 0.6, (len(seeds), 20)), axis=1)
    bought = pd.DataFrame({"item_id": np.repeat(ids[seeds], 20), "neighbour_id": ids[nb.ravel()],
                           "score": score.ravel().astype(np.float32), "baskets": np.int32(2)})
    bought = bought[bought["item_id"] != bought["neighbour_id"]]

    config, raw = _synthetic_config(cat_names.tolist(), pin_item=popular[0], promo_item=popular[1],
                                    candidates=candidates)
    t = time.perf_counter()
    searcher, params = build_searcher(emb, config.retrieval.index, k=config.retrieval.k)
    info["index_build_s"] = time.perf_counter() - t
    # calibrated as export calibrates it (`leaves_by_k`, `reorder_by_k`), on the real query tower's outputs for
    # the demo's buyers: the queries these requests send
    t = time.perf_counter()
    store = open_store(Path(demo.bundle.manifest["feature_store"]))
    # their own generator: the catalog and ranking state drawn from `rng` stay those of earlier runs
    cal_rng = np.random.default_rng([seed, n_items, 1])
    cal_users = [str(u) for u in cal_rng.permutation(users)[:config.retrieval.index.calibration_queries]]
    params = calibrate_on_users(searcher, emb, params, cal_users,
                                lambda some: embed_users(demo.bundle.embed_query, store, some, as_of, dim)[1],
                                config.retrieval.k, config.retrieval.index, "bench_serving", lambda m: None)
    info["index_calibrate_s"] = time.perf_counter() - t
    manifest = {"version": f"synthetic-{n_items}", "as_of": as_of.isoformat(), "query_inputs": q,
                "index": {**params}, "feature_store": demo.bundle.manifest["feature_store"],
                "feature_services": demo.bundle.manifest["feature_services"]}
    root = Path(work) / f"synthetic-{n_items}"
    if (demo.bundle.root / "ranking").is_dir():  # the learned ranker ranks the candidates, as in the demo bundle
        t = time.perf_counter()
        info.update(_synthetic_ranker(root, demo, ids, cat_names[cat], history, as_of, rng))
        info["ranker_build_s"] = time.perf_counter() - t
    bundle = LoadedBundle(root=root, manifest=manifest, embed_query=demo.bundle.embed_query,
                          searcher=searcher, item_ids=ids.astype(str), items=items, popular=popular, history=history,
                          item_embeddings=emb, bought_together=bought, content_embeddings=content,
                          # the demo's query tower embeds these shoppers: its golden users are the probe serving
                          # checks the tower's NumPy pass on (Recommender._query_embedder), as in the demo bundle
                          golden_inputs=demo.bundle.golden_inputs)
    t = time.perf_counter()
    rec = Recommender(bundle, demo.features, config=config)
    info["recommender_build_s"] = time.perf_counter() - t
    info["ranker_class"] = type(rec.ranker).__name__
    info.update({"items": n_items, "dim": dim, "categories": n_cat, "popular": len(popular),
                 "users_with_history": len(users), "history_rows": len(history), "co_purchase_pairs": len(bought),
                 "index": params, "config": raw})
    return rec, info


def _requests(rec, n: int, seed: int) -> list[dict]:
    """The fixed request mix (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng([seed, 7])
    cat = rec.catalog
    users = sorted(cat.users)
    head = cat.popular_rows[:2000] if len(cat.popular_rows) else np.arange(min(2000, len(cat)))
    out = []
    for i in range(n):
        u = rng.random()
        user = users[int(rng.integers(len(users)))] if u < 0.7 and users else (f"unknown-{i}" if u < 0.8 else None)
        view = [int(head[rng.integers(len(head))]) if rng.random() < 0.7 else int(rng.integers(len(cat)))
                for _ in range(3)]
        cart = [int(rng.integers(len(cat))) for _ in range(int(rng.integers(1, 3)))] if rng.random() < 0.5 else []
        session = {"viewed": [cat.item_ids[r] for r in view], "cart": [cat.item_ids[r] for r in cart],
                   "device": ["mobile", "desktop", "tablet"][int(rng.integers(3))]}
        if cat.categories[view[-1]] is not None:
            session["category"] = cat.categories[view[-1]]
        body = {"session": session, "k": DEFAULT_K, "exclude_purchased": bool(rng.random() < 0.5)}
        if user is not None:
            body["user_id"] = user
        out.append(body)
    return out


class _GcPauses:
    """Durations of the garbage collector's passes in this process, by generation (gc.callbacks)."""

    def __init__(self):
        import gc

        self.ms: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._t = 0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter_ns()
        else:
            self.ms[info["generation"]].append((time.perf_counter_ns() - self._t) / 1e6)

    def summary(self) -> dict:
        return {f"gen{g}": {"count": len(v), "max_ms": max(v, default=0.0), "total_ms": sum(v)}
                for g, v in self.ms.items()}


def child_main(spec: dict) -> None:
    """The server process: build the case's recommender, serve it, answer the parent's commands on stdin."""
    t0 = time.perf_counter()
    import numpy as np

    from serving.app import create_app, recommendation_json
    from serving.request import parse_json, validate_request
    from serving.server import BackgroundServer

    demo = _demo_recommender(spec.get("bundle"), spec.get("demo_work"))
    load_s = time.perf_counter() - t0
    if spec["case"] == "demo":
        rec = demo
        info = {"bundle": str(rec.bundle.root), "version": rec.version, "items": len(rec.catalog),
                "sources": list(rec.retriever.names), "rules": list(rec.rules.chain.names),
                "index": rec.bundle.manifest.get("index"), "retrieval_k": rec.config.retrieval.k,
                "load_s": load_s, "config": "the bundle's own config.json"}
    else:
        rec, info = _synthetic_recommender(int(spec["case"]), demo, spec["seed"], spec["candidates"],
                                           Path(spec["work"]))
        info["demo_load_s"] = load_s
        info["sources"] = list(rec.retriever.names)
        info["rules"] = list(rec.rules.chain.names)
        del demo  # the synthetic recommender keeps its tower and online store
    # which forward pass embeds the shoppers (models/towers.query_embedder: NumPy where it was checked)
    info["query_tower"] = {"engine": rec.embed_query.engine, "why_tensorflow": rec.embed_query.engine_reason}
    max_k = rec.config.serving.max_k
    reqs = _requests(rec, spec["n_requests"], spec["seed"])
    bodies = [json.dumps(b, separators=(",", ":")).encode() for b in reqs]
    req_file = Path(spec["work"]) / f"requests_{spec['case']}.jsonl"
    req_file.write_text("".join(b.decode() + "\n" for b in bodies))
    app = create_app(rec, max_k=max_k, **({} if spec["threads"] is None else {"threads": spec["threads"]}))
    info["threads"] = "serving.threads default" if spec["threads"] is None else spec["threads"]
    respond = recommendation_json  # the route's own rendering
    timers = StageTimers(rec)
    # the pipeline's own time for the requests the server answers over HTTP (`record` commands: the open loop)
    served_ms: list[float] | None = None
    recommend = rec.recommend

    def recorded(*a, **k):
        t = time.perf_counter_ns()
        try:
            return recommend(*a, **k)
        finally:
            if served_ms is not None:
                served_ms.append((time.perf_counter_ns() - t) / 1e6)

    rec.recommend = recorded  # an instance attribute: the app's slot holds this very object

    def full(body: bytes) -> tuple[object, bytes]:
        req = validate_request(parse_json(body), max_k=max_k)
        r = rec.recommend(req.user_id, req.k, req.exclude, req.exclude_purchased, session=req.session)
        return r, respond(rec, r)

    for b in bodies[:WARMUP]:
        full(b)
    info["build_s"] = time.perf_counter() - t0
    info["rss_mb_after_build"] = _rss()
    with BackgroundServer(app) as server:  # collects, then freezes what is loaded (serving.server)
        gc_pauses = _GcPauses()  # from here on: the measured part (not the start-up collection)
        _emit({"event": "ready", "port": server.port, "requests_file": str(req_file), "info": info})
        for line in sys.stdin:
            cmd = json.loads(line)
            what = cmd["cmd"]
            if what == "quit":
                break
            if what == "rss":
                _emit({"event": "rss", **_rss(), "gc": gc_pauses.summary()})
                continue
            if what == "record":  # on: start timing the HTTP requests' pipeline calls; off: answer them
                got, served_ms = served_ms, ([] if cmd["on"] else None)
                _emit({"event": "recorded", "ms": got or []})
                continue
            idx = [(cmd["offset"] + i) % len(bodies) for i in range(cmd["n"])]
            plain: list[float] = []
            stages: dict[str, list[float]] = {}
            counts: dict[str, list[int]] = {}
            flags: Counter = Counter()
            served = []

            def timed(i: int) -> None:
                timers.install()
                try:
                    t = time.perf_counter_ns()
                    req = validate_request(parse_json(bodies[i]), max_k=max_k)
                    t1 = time.perf_counter_ns()
                    r = rec.recommend(req.user_id, req.k, req.exclude, req.exclude_purchased, session=req.session)
                    t2 = time.perf_counter_ns()
                    respond(rec, r)
                    t3 = time.perf_counter_ns()
                finally:
                    timers.uninstall()
                cur, cnt = timers.take()
                cur.update({"parse": t1 - t, "recommend": t2 - t1, "response": t3 - t2, "total": t3 - t})
                for k, v in cur.items():
                    stages.setdefault(k, []).append(v / 1e6)
                for k, v in cnt.items():
                    counts.setdefault(k, []).append(v)
                flags.update(r.flags or ["personalised"])
                served.append(len(r.items))

            def untimed(i: int) -> None:
                t = time.perf_counter_ns()
                full(bodies[i])
                plain.append((time.perf_counter_ns() - t) / 1e6)

            # each request twice, plain and with the stage timers, alternating which goes first
            for j, i in enumerate(idx):
                for f in ((untimed, timed) if j % 2 == 0 else (timed, untimed)):
                    f(i)
            m = len(idx)
            for k in stages:  # a stage that did not run in a request counts 0 there
                stages[k] += [0.0] * (m - len(stages[k]))
            _emit({"event": "inproc", "plain_ms": plain, "ms": stages, "counts": counts, "flags": dict(flags),
                   "served_mean": float(np.mean(served))})
    _emit({"event": "bye"})


# =============================================================================================================
# the load generator (parent)
# =============================================================================================================


class Child:
    """A server process for one case, driven over its stdin / stdout."""

    def __init__(self, spec: dict, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=str(ROOT), env=env, bufsize=1)

    def read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.log.flush()
                tail = self.log_path.read_text()[-3000:]
                raise RuntimeError(f"server process exited (code {self.proc.poll()}); log {self.log_path}:\n{tail}")
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.ask(cmd="quit")
                self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001  (cleanup: the process is ours)
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _http(host: str, port: int, bodies: list[bytes]) -> tuple[list[bytes], bytes]:
    recs = [(f"POST /v1/recommend HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    live = f"GET /health/live HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    return recs, live


async def _roundtrip(reader, writer, data: bytes) -> tuple[int, bytes]:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    low = head.lower()
    i = low.find(b"\r\ncontent-length:")
    if i < 0:
        raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
    j = low.index(b"\r\n", i + 2)
    body = await reader.readexactly(int(low[i + 17:j]))
    return status, body


class _Check:
    """Status counts, and every 10th recommend body parsed (items served)."""

    def __init__(self):
        self.status: Counter = Counter()
        self.items: list[int] = []
        self.n = 0

    def see(self, status: int, body: bytes, parse: bool) -> None:
        self.status[status] += 1
        self.n += 1
        if parse and status == 200 and self.n % 10 == 0:
            self.items.append(len(json.loads(body)["items"]))


async def closed_loop(host: str, port: int, reqs: list[bytes], conc: int, total: int, offset: int,
                      parse: bool) -> dict:
    conns = [await asyncio.open_connection(host, port) for _ in range(conc)]
    counter = itertools.count()
    lat: list[float] = []
    check = _Check()

    async def worker(reader, writer):
        while (i := next(counter)) < total:
            t = time.perf_counter()
            st, body = await _roundtrip(reader, writer, reqs[(offset + i) % len(reqs)])
            lat.append((time.perf_counter() - t) * 1e3)
            check.see(st, body, parse)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    wall = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    return {"ms": lat, "wall_s": wall, "status": dict(check.status), "items": check.items}


async def open_loop(host: str, port: int, reqs: list[bytes], rate: float, duration: float, offset: int,
                    parse: bool) -> dict:
    n = max(1, int(rate * duration))
    idle = [await asyncio.open_connection(host, port) for _ in range(OPEN_LOOP_PREOPEN)]
    sem = asyncio.Semaphore(OPEN_LOOP_CONNECTIONS)
    lat = [0.0] * n
    lag = [0.0] * n
    check = _Check()
    opened = [len(idle)]
    t0 = time.perf_counter() + 0.05

    async def one(i: int):
        sched = t0 + i / rate
        delay = sched - time.perf_counter()
        if delay > OPEN_LOOP_SPIN_S:
            await asyncio.sleep(delay - OPEN_LOOP_SPIN_S)
        while time.perf_counter() < sched:  # on time: each turn lets the loop read answers that arrive meanwhile
            await asyncio.sleep(0)
        async with sem:
            if idle:
                conn = idle.pop()
            else:
                opened[0] += 1
                conn = await asyncio.open_connection(host, port)
            lag[i] = (time.perf_counter() - sched) * 1e3
            st, body = await _roundtrip(*conn, reqs[(offset + i) % len(reqs)])
            idle.append(conn)
        lat[i] = (time.perf_counter() - sched) * 1e3
        check.see(st, body, parse)

    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    for _, w in idle:
        w.close()
    return {"ms": lat, "send_lag_ms": pct(lag), "wall_s": wall, "offered_rps": rate, "status": dict(check.status),
            "items": check.items, "connections": opened[0]}


def _summary(run: dict) -> dict:
    out = {k: v for k, v in run.items() if k not in ("ms", "items")}
    out["latency_ms"] = pct(run["ms"])
    out["rps"] = len(run["ms"]) / run["wall_s"]
    if run.get("items"):
        out["items_served_mean"] = sum(run["items"]) / len(run["items"])
    return out


def _ensure_demo_bundle(args) -> str | None:
    """A demo work dir holding a bundle when build/bundles has none (built by `cartwise demo`), else None."""
    if args.bundle or (ROOT / "build" / "bundles" / "CURRENT").is_file():
        return None
    work = Path(args.demo_work)
    if (work / "bundles" / "CURRENT").is_file():
        return str(work)
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((ROOT / "cartwise.yaml").read_text())
    cfg["data"]["work_dir"] = str(work)
    cfg["data"]["paths"] = [str((ROOT / p).resolve()) for p in cfg["data"]["paths"]]
    path = work / "cartwise.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"no build/bundles/CURRENT: building the demo bundle into {work} (cartwise demo)", flush=True)
    subprocess.run([sys.executable, "-m", "cartwise", "demo", "--config", str(path)], cwd=str(ROOT), check=True)
    return str(work)


def run_case(case: str, args, work: Path, demo_work: str | None) -> dict:
    import numpy as np

    spec = {"case": case, "seed": args.seed, "candidates": args.candidates, "bundle": args.bundle,
            "threads": args.threads,
            "demo_work": demo_work, "work": str(work), "n_requests": args.request_pool}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    print(f"\n== case {case}: building the server (load {load_before[0]:.2f}) ==", flush=True)
    child = Child(spec, work / f"server_{case}.log")
    try:
        ready = child.read()
        info = ready["info"]
        brief = json.dumps({k: v for k, v in info.items() if k != "config"}, default=str)
        print(f"ready in {time.perf_counter() - t0:.1f}s: {brief[:600]}", flush=True)
        host, port = "127.0.0.1", ready["port"]
        bodies = [line.encode() for line in Path(ready["requests_file"]).read_text().splitlines()]
        recs, live = _http(host, port, bodies)
        lives = [live]
        loop = asyncio.new_event_loop()
        run = loop.run_until_complete

        # warm the HTTP path (threadpool, connections, first-call costs)
        run(closed_loop(host, port, recs, 4, WARMUP, 0, False))
        run(closed_loop(host, port, lives, 4, WARMUP, 0, False))

        inproc: list[float] = []
        stages: dict[str, list[float]] = {}
        counts: dict[str, list[int]] = {}
        flags: Counter = Counter()
        served = []
        closed: dict[int, dict[str, list[dict]]] = {c: {"recommend": [], "live": []} for c in args.concurrency}
        offset = 0
        for rnd in range(args.rounds):
            s = child.ask(cmd="inproc", n=args.requests, offset=offset)
            inproc += s["plain_ms"]
            for k, v in s["ms"].items():
                stages.setdefault(k, []).extend(v)
            for k, v in s["counts"].items():
                counts.setdefault(k, []).extend(v)
            flags.update(s["flags"])
            served.append(s["served_mean"])
            for j, c in enumerate(args.concurrency):
                order = ["recommend", "live"] if (rnd + j) % 2 == 0 else ["live", "recommend"]
                for kind in order:
                    total = max(args.requests, 25 * c)
                    r = run(closed_loop(host, port, recs if kind == "recommend" else lives, c, total, offset,
                                        kind == "recommend"))
                    closed[c][kind].append(r)
                a, b = closed[c]["recommend"][-1], closed[c]["live"][-1]
                print(f"  round {rnd + 1} c={c}: recommend p50 {np.percentile(a['ms'], 50):.2f} ms "
                      f"{len(a['ms']) / a['wall_s']:.0f}/s, live p50 {np.percentile(b['ms'], 50):.2f} ms "
                      f"{len(b['ms']) / b['wall_s']:.0f}/s", flush=True)
            offset += args.requests

        closed_out = {}
        for c, kinds in closed.items():
            row = {}
            for kind, runs in kinds.items():
                merged = {"ms": [x for r in runs for x in r["ms"]], "wall_s": sum(r["wall_s"] for r in runs),
                          "status": dict(sum((Counter(r["status"]) for r in runs), Counter())),
                          "items": [x for r in runs for x in r["items"]]}
                row[kind] = _summary(merged)
            rr, ll = row["recommend"], row["live"]
            row["ratio_p50"] = rr["latency_ms"]["p50"] / ll["latency_ms"]["p50"]
            row["ratio_p99"] = rr["latency_ms"]["p99"] / ll["latency_ms"]["p99"]
            row["ratio_rps"] = rr["rps"] / ll["rps"]
            closed_out[str(c)] = row

        open_out = {}
        for j, rate in enumerate(args.rates):
            row = {}
            order = ["recommend", "live"] if j % 2 == 0 else ["live", "recommend"]
            for kind in order:
                if kind == "recommend":
                    child.ask(cmd="record", on=True)
                r = run(open_loop(host, port, recs if kind == "recommend" else lives, rate, args.duration, offset,
                                  kind == "recommend"))
                row[kind] = _summary(r)
                if kind == "recommend":
                    row[kind]["server_recommend_ms"] = pct(child.ask(cmd="record", on=False)["ms"])
            rr, ll = row["recommend"], row["live"]
            row["ratio_p50"] = rr["latency_ms"]["p50"] / ll["latency_ms"]["p50"]
            row["ratio_p99"] = rr["latency_ms"]["p99"] / ll["latency_ms"]["p99"]
            open_out[f"{rate:g}"] = row
            a, b = rr["latency_ms"], ll["latency_ms"]
            sv = rr["server_recommend_ms"]
            print(f"  open loop {rate}/s: recommend p50 {a['p50']:.2f} / p99 {a['p99']:.2f} ms at {rr['rps']:.0f}/s "
                  f"(in the server's pipeline p50 {sv['p50']:.2f} / p99 {sv['p99']:.2f}); "
                  f"live p50 {b['p50']:.2f} / p99 {b['p99']:.2f} ms", flush=True)
        loop.close()
        rss = child.ask(cmd="rss")
    finally:
        child.close()

    stage_out = {k: pct(v) for k, v in stages.items()}
    mean_rec = stage_out["recommend"]["mean"]
    for k, v in stage_out.items():
        v["share_of_recommend_mean"] = v["mean"] / mean_rec if mean_rec else None
    derived = _derived(stages)
    result = {
        "case": case, "info": info, "requests_per_block": args.requests, "rounds": args.rounds,
        "in_process": {"full_ms": pct(inproc), "stages_ms": stage_out,
                       "derived_ms": {k: pct(v) for k, v in derived.items()},
                       "candidates": {k: pct([float(x) for x in v]) for k, v in counts.items()},
                       "flags": dict(flags), "served_mean": float(np.mean(served))},
        "closed_loop": closed_out, "open_loop": open_out,
        "server_rss_mb": {"VmRSS": rss.get("VmRSS"), "VmHWM": rss.get("VmHWM")},
        "server_gc_pauses": rss.get("gc"),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "wall_s": time.perf_counter() - t0,
    }
    result["goal"] = _goal(result, args)
    return result


def _derived(stages: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per request: the parts no timer covers directly (merge, request lookups, rule glue, other)."""
    import numpy as np

    def a(name):
        return np.asarray(stages.get(name, [0.0] * len(stages["recommend"])))

    out = {}
    sources = [k for k in stages if k.startswith("retrieval.")]
    out["retrieval.merge"] = a("retrieval") - sum((a(k) for k in sources), np.zeros(len(a("recommend"))))
    out["features.request_rows"] = a("features") - a("features.online_store") - a("features.query_tower")
    rules = [k for k in stages if k.startswith("rules.")]
    out["rules.pin_placement_and_tracing"] = a("rules") - sum((a(k) for k in rules), np.zeros(len(a("recommend"))))
    top = ["features", "retrieval", "pins_inserted", "columns", "ranking_hook", "rules", "override_tracker"]
    out["other"] = a("recommend") - sum(a(k) for k in top)
    return {k: v.tolist() for k, v in out.items()}


def _goal(r: dict, args) -> dict:
    g = {"p50_ms": 5.0, "p99_ms": 15.0, "rps": 150.0}
    rate = next((k for k in r["open_loop"] if float(k) >= g["rps"]), None)
    out = {"goal": g, "judged_on": f"open loop at {rate}/s" if rate else "no open-loop rate >= 150/s was run"}
    if rate:
        rr = r["open_loop"][rate]["recommend"]
        out.update({"p50_ms": rr["latency_ms"]["p50"], "p99_ms": rr["latency_ms"]["p99"], "achieved_rps": rr["rps"],
                    "errors": sum(v for k, v in rr["status"].items() if str(k) != "200")})
        out["met"] = (rr["latency_ms"]["p50"] <= g["p50_ms"] and rr["latency_ms"]["p99"] <= g["p99_ms"]
                      and rr["rps"] >= 0.98 * g["rps"] and out["errors"] == 0)
    best = max(r["closed_loop"].values(), key=lambda x: x["recommend"]["rps"])
    out["closed_loop_max_rps"] = best["recommend"]["rps"]
    one = r["closed_loop"].get("1")
    if one:
        out["closed_loop_c1_p50_ms"] = one["recommend"]["latency_ms"]["p50"]
        out["closed_loop_c1_p99_ms"] = one["recommend"]["latency_ms"]["p99"]
    return out


# --- output ---------------------------------------------------------------------------------------------------


STAGE_ORDER = ["parse", "features", "features.online_store", "features.query_tower", "features.request_rows",
               "retrieval", "@sources", "retrieval.merge", "pins_inserted", "columns", "ranking_hook", "rules",
               "@rules", "rules.pin_placement_and_tracing", "override_tracker", "other", "recommend", "response",
               "total"]


def tables(r: dict) -> str:
    info, ip = r["info"], r["in_process"]
    title = (f"demo bundle {info.get('version')} ({info['items']:,} items)" if r["case"] == "demo"
             else f"synthetic catalog, {info['items']:,} items x {info['dim']}-d, {info['categories']} categories")
    cand = ip["candidates"].get("retrieval", {})
    lines = [f"### {title}",
             f"sources {info.get('sources')}, rules {info.get('rules')}; candidates per request after retrieval: "
             f"mean {cand.get('mean', 0):.0f} (p50 {cand.get('p50', 0):.0f}, max {cand.get('max', 0):.0f}); "
             f"served {ip['served_mean']:.1f} items; flags {ip['flags']}; server RSS {r['server_rss_mb']} MB; "
             f"load {r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f}", "",
             "| run | /v1/recommend p50 / p99 ms | req/s | /health/live p50 / p99 ms | req/s "
             "| ratio p50 / p99 / req/s |",
             "|---|---:|---:|---:|---:|---:|"]
    f = ip["full_ms"]
    lines.append(f"| in-process: parse + recommend + response (no HTTP) | {f['p50']:.2f} / {f['p99']:.2f} | "
                 f"{1000 / f['mean']:.0f} (1 thread) | | | |")
    for c, row in r["closed_loop"].items():
        rr, ll = row["recommend"], row["live"]
        lines.append(f"| HTTP closed loop, {c} client{'s' if c != '1' else ''} | "
                     f"{rr['latency_ms']['p50']:.2f} / {rr['latency_ms']['p99']:.2f} | {rr['rps']:.0f} | "
                     f"{ll['latency_ms']['p50']:.2f} / {ll['latency_ms']['p99']:.2f} | {ll['rps']:.0f} | "
                     f"{row['ratio_p50']:.1f}x / {row['ratio_p99']:.1f}x / {row['ratio_rps']:.2f}x |")
    for rate, row in r["open_loop"].items():
        rr, ll = row["recommend"], row["live"]
        a, b = rr["latency_ms"], ll["latency_ms"]
        lines.append(f"| HTTP open loop, {rate}/s offered | {a['p50']:.2f} / {a['p99']:.2f} | {rr['rps']:.0f} | "
                     f"{b['p50']:.2f} / {b['p99']:.2f} | {ll['rps']:.0f} | "
                     f"{row['ratio_p50']:.1f}x / {row['ratio_p99']:.1f}x / |")
    piped = [(rate, row["recommend"]["server_recommend_ms"]) for rate, row in r["open_loop"].items()
             if "server_recommend_ms" in row["recommend"]]
    if piped:
        lines.append("\nOpen loop, the pipeline's own time in the server (`Recommender.recommend`, p50 / p99 ms; "
                     "in process back to back above): "
                     + ", ".join(f"{rate}/s {v['p50']:.2f} / {v['p99']:.2f}" for rate, v in piped) + ".")
    one = r["closed_loop"].get("1")
    if one:
        http = one["recommend"]["latency_ms"]["p50"] - f["p50"]
        lines.append(f"\nHTTP c=1 p50 minus in-process p50: {http:.2f} ms; the whole /health/live round trip: "
                     f"{one['live']['latency_ms']['p50']:.2f} ms. Server GC passes during the run: "
                     + ", ".join(f"{g} {v['count']} (max {v['max_ms']:.1f} ms)"
                                 for g, v in (r.get("server_gc_pauses") or {}).items()))
    lines += ["", "| stage (in-process, timers around the real pipeline) | p50 ms | p99 ms | mean ms "
              "| share of recommend |",
              "|---|---:|---:|---:|---:|"]
    st = {**ip["stages_ms"], **ip["derived_ms"]}
    mean_rec = ip["stages_ms"]["recommend"]["mean"]
    for name in STAGE_ORDER:
        names = ([k for k in st if k.startswith("retrieval.") and k != "retrieval.merge"] if name == "@sources" else
                 [k for k in st if k.startswith("rules.") and k != "rules.pin_placement_and_tracing"]
                 if name == "@rules" else [name])
        for k in names:
            if k not in st:
                continue
            v = st[k]
            indent = "&nbsp;&nbsp;" if "." in k else ""
            n_c = ip["candidates"].get(k)
            label = k + (f" ({n_c['mean']:.0f} cand.)" if n_c and k != "retrieval" else "")
            lines.append(f"| {indent}{label} | {v['p50']:.3f} | {v['p99']:.3f} | {v['mean']:.3f} | "
                         f"{v['mean'] / mean_rec:.0%} |")
    g = r["goal"]
    if "met" in g:
        lines.append(f"\ngoal (p50 <= 5 ms, p99 <= 15 ms, >= 150 req/s; {g['judged_on']}): p50 {g['p50_ms']:.2f} ms, "
                     f"p99 {g['p99_ms']:.2f} ms, {g['achieved_rps']:.0f} req/s, {g['errors']} errors -> "
                     f"{'met' if g['met'] else 'NOT met'}; closed loop max {g['closed_loop_max_rps']:.0f} req/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:
        return child_main(json.loads(argv[1]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="demo,100000,1000000", help="`demo` and/or synthetic catalog sizes")
    p.add_argument("--candidates", type=int, default=500, help="retrieval budget of the synthetic cases")
    p.add_argument("--concurrency", default="1,4,16", help="closed-loop client counts")
    p.add_argument("--rates", default="50,100,150", help="open-loop rates (requests/s)")
    p.add_argument("--requests", type=int, default=200,
                   help="requests per block (in-process passes; closed loop: at least 25 per client)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of in-process + closed-loop blocks")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per open-loop run")
    p.add_argument("--request-pool", type=int, default=2000, help="distinct request bodies per case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="pipeline threads of the server (serving.threads; default: its default, 0)")
    p.add_argument("--bundle", help="demo bundle directory (default: build/bundles/CURRENT)")
    p.add_argument("--demo-work", default=str(Path(tempfile.gettempdir()) / "cartwise-bench-serving-demo"),
                   help="where `cartwise demo` builds a bundle when there is none (never build/)")
    p.add_argument("--out", default=str(ROOT / "build" / "benchmarks" / "serving.json"))
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.rates = [float(r) for r in args.rates.split(",")]
    cases = args.cases.split(",")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    out = Path(args.out)
    work = out.parent / "serving_work"
    work.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()}; {started:%Y-%m-%d %H:%M} UTC", flush=True)
    demo_work = _ensure_demo_bundle(args)
    results = []
    for case in cases:
        results.append(run_case(case, args, work, demo_work))
        print("\n" + tables(results[-1]), flush=True)
    print("\n\n" + "\n\n".join(tables(r) for r in results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "started_utc": started.isoformat(), "cpus": os.cpu_count(), "args": {k: v for k, v in vars(args).items()},
        "goal": {"p50_ms": 5.0, "p99_ms": 15.0, "rps": 150.0, "items": 1_000_000, "candidates": 500},
        "results": results,
    }, indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
