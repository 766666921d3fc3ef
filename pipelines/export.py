"""Export a versioned serving bundle, only from validated, undrifted data.

Where it sits: validate_dataset (passing verdict) + train_retrieval +
evaluate -> **drift gate** (validation/gate.py, against the CURRENT bundle's
reference) -> **export** -> `<work_dir>/bundles/<version>/` and the `CURRENT`
pointer that serving reads and hot-swaps (layout and loaders in
`cartwise/bundle.py`). `pipelines/update_index.py` reuses the bundle writer
(:func:`write_index`, :func:`write_tables`, :func:`publish`) to publish a new
index without retraining.

The bundle holds both towers (SavedModel), the item table, candidate-tower
inputs and embeddings of the whole catalog as of the data's end, the ScaNN
index over them (pybind serialization), golden queries, the popularity
fallback, the purchase history used for "exclude purchased" and the repeat
source, the co-purchase neighbours (`bought_together.parquet`) and content
embeddings (`item_content_embeddings.npy`) of serving's retrieval sources
(`serving/sources.py`), stock and margin in the item table, the validation
and drift verdicts, the reference profiles of the data it was built from
(the next export's drift reference), the metrics, the config, library
versions and a manifest with the sha256 of every file.

Crash safety (checked by killing export at each of :data:`CRASH_POINTS`):
everything is written and fsynced in `.staging-*`, verified and loaded back
(golden queries replayed) before a rename publishes it; CURRENT then moves by
an fsynced temp file renamed over it; HISTORY records the publication. The
next export removes what a crash left behind: staging directories, temp
files, and bundles that were renamed into place but never made CURRENT.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata as md
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cartwise import bundle as b
from cartwise.config import CartwiseConfig, ConfigError
from feature_repo import names as n
from pipelines.baselines import popularity
from pipelines.build_features import open_store
from pipelines.build_index import build_searcher, calibrate_on_users, recall_vs_brute_force
from pipelines.evaluate import buyers_by_activity, embed_users, purchase_history
from pipelines.export_ranking import write_ranker
from pipelines.feature_frames import item_features_as_of
from pipelines.layout import Layout
from pipelines.manifest import read_json, write_json
from pipelines.progress import Log, default_log, step
from pipelines.train_ranking import MODEL_DIR
from pipelines.train_retrieval import CANDIDATE_FLOATS, CANDIDATE_STRINGS, QUERY_FLOATS, QUERY_STRINGS, tensors
from pipelines.validate_dataset import training_event_types
from validation import drift, gate, report
from validation.suites import FEATURE_TABLES, feature_table_suite, run_suite, training_set_suite

STAGE = "export"
GOLDEN_QUERIES = 200
GOLDEN_K = 10
LIBRARIES = ("tensorflow", "tf-keras", "tensorflow-recommenders", "scann", "feast", "great-expectations", "pandas",
             "numpy")
#: Co-purchase table: neighbours kept per item, fewest shared baskets for a pair, and baskets with more distinct
#: items than this are left out (bulk orders say little about what goes together and cost quadratic pairs).
BOUGHT_TOGETHER_N = 50
BOUGHT_TOGETHER_MIN_BASKETS = 2
BOUGHT_TOGETHER_MAX_BASKET_ITEMS = 100
#: Where `CARTWISE_CRASH_AT=<point>` kills export (tests/pipelines/test_export_crash.py), in execution order.
CRASH_POINTS = ("staging_created", "towers_copied", "index_serialized", "tables_written", "manifest_written",
                "verified", "renamed", "current_tmp_written", "current_replaced", "history_written")


class ExportRefused(RuntimeError):
    """Export preconditions failed (no passing validation, drift gate blocked, index recall too low)."""


def _versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = md.version(lib)
        except md.PackageNotFoundError:
            out[lib] = "missing"
    return out


# --- orphans and publication ---------------------------------------------------------


def cleanup_orphans(bundles: Path, log: Log = default_log) -> list[str]:
    """Remove what an interrupted export left behind and repair HISTORY.

    Orphans are staging directories, temp pointer files, and bundle
    directories that were renamed into place but never became CURRENT (not in
    HISTORY). A CURRENT that is missing from HISTORY (crash between moving
    CURRENT and recording it) is appended, never removed.

    Returns:
        Names removed.
    """
    bundles.mkdir(parents=True, exist_ok=True)
    removed = []
    for p in sorted(bundles.iterdir()):
        if p.name.startswith(".staging-") or (p.name.startswith(".") and p.name.endswith(".tmp")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
    cur = b.current_version(bundles)
    if not (bundles / b.PUBLISHED).is_file():
        # bundles published before HISTORY existed: keep them, in version (= time) order
        legacy = sorted(p.name for p in bundles.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and (p / b.MANIFEST).is_file())
        b.write_atomic(bundles / b.PUBLISHED, "".join(v + "\n" for v in legacy))
    hist = b.read_history(bundles)
    if cur and cur not in hist and (bundles / cur).is_dir():
        b.record_published(bundles, cur)
        hist.append(cur)
    for p in sorted(bundles.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and p.name not in hist and p.name != cur:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    if removed:
        b.fsync_dir(bundles)
        log(f"[{STAGE}] removed orphans of an interrupted export: {', '.join(removed)}")
    return removed


def new_staging(bundles: Path) -> tuple[Path, str]:
    """A fresh staging directory and the time stamp of the version it will become."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    staging = bundles / f".staging-{stamp}-{os.getpid()}"
    staging.mkdir(parents=True)
    return staging, stamp


def publish(staging: Path, bundles: Path, stamp: str, manifest: dict, log: Log = default_log) -> dict:
    """Hash, verify, load-check and atomically publish a complete staging directory.

    Args:
        staging: every bundle file except the manifest is written.
        bundles: the bundles directory.
        stamp: version time stamp from :func:`new_staging`.
        manifest: manifest fields (version and files are added here).

    Returns:
        The written manifest.

    Raises:
        BundleError: the staged bundle does not verify or does not load and
            reproduce its golden queries; nothing is published.
    """
    files = b.file_hashes(staging)
    version = f"v{stamp}-{hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]}"
    manifest = {"version": version, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **manifest, "libraries": _versions(), "files": files}
    write_json(staging / b.MANIFEST, manifest)
    b.crash_point("manifest_written")
    b.fsync_tree(staging)
    with step(STAGE, "verify the staged bundle (sha256, load, golden queries)", log) as s:
        loaded = b.load_bundle(staging)  # verify() + towers + index + golden replay
        s["result"] = f"{len(manifest['files'])} files, version {loaded.version}"
    b.crash_point("verified")
    final = bundles / version
    os.replace(staging, final)
    b.fsync_dir(bundles)
    b.crash_point("renamed")
    b.point_current(bundles, version, crash_after_tmp="current_tmp_written")
    b.crash_point("current_replaced")
    b.record_published(bundles, version)
    b.crash_point("history_written")
    log(f"[{STAGE}] published {final} (CURRENT -> {version})")
    return manifest


# --- bundle parts --------------------------------------------------------------------


def write_index(staging: Path, frame: pd.DataFrame, emb: np.ndarray, config: CartwiseConfig) -> tuple[object, dict]:
    """Serialize the ScaNN index over `emb` and the embeddings and candidate inputs beside it.

    Returns:
        (searcher, index params).
    """
    searcher, params = build_searcher(emb, config.retrieval.index, k=config.retrieval.k)
    (staging / b.INDEX_DIR).mkdir(parents=True, exist_ok=True)
    searcher.serialize(str(staging / b.INDEX_DIR), relative_path=True)
    np.save(staging / b.EMBEDDINGS, emb.astype(np.float32), allow_pickle=False)
    cols = [n.ITEM_ID, *[c for c in CANDIDATE_STRINGS if c != n.ITEM_ID], *CANDIDATE_FLOATS]
    frame[cols].astype({n.ITEM_ID: str}).to_parquet(staging / b.ITEM_FEATURES, index=False)
    return searcher, params


def bought_together(purchases: pd.DataFrame, item_ids: list[str], n_neighbours: int = BOUGHT_TOGETHER_N,
                    min_baskets: int = BOUGHT_TOGETHER_MIN_BASKETS,
                    max_basket_items: int = BOUGHT_TOGETHER_MAX_BASKET_ITEMS) -> pd.DataFrame:
    """Co-purchase neighbours of every catalog item: items bought in the same basket (session / invoice).

    The score of a pair is the cosine of their basket vectors,
    `baskets(a, b) / sqrt(baskets(a) * baskets(b))`, so a best seller is not
    everyone's neighbour; guests' baskets count (no user is needed).

    Args:
        purchases: purchase lines with session_id and item_id.
        item_ids: the catalog (neighbours outside it are dropped).
        n_neighbours: neighbours kept per item, best first.
        min_baskets: fewest shared baskets for a pair to count.
        max_basket_items: baskets with more distinct catalog items are left out.

    Returns:
        item_id, neighbour_id (str), score (float32), baskets (int32); per item
        by score descending (ties by neighbour id).
    """
    from scipy import sparse

    cols = {"item_id": pd.Series(dtype=str), "neighbour_id": pd.Series(dtype=str),
            "score": pd.Series(dtype="float32"), "baskets": pd.Series(dtype="int32")}
    index = {item: i for i, item in enumerate(item_ids)}
    p = purchases[[n.SESSION_ID, n.ITEM_ID]].dropna().astype(str).drop_duplicates()
    p = p[p[n.ITEM_ID].isin(index)]
    size = p.groupby(n.SESSION_ID)[n.ITEM_ID].transform("size")
    p = p[(size >= 2) & (size <= max_basket_items)]
    if p.empty:
        return pd.DataFrame(cols)
    basket = p[n.SESSION_ID].astype("category").cat.codes.to_numpy()
    item = p[n.ITEM_ID].map(index).to_numpy()
    B = sparse.csr_matrix((np.ones(len(p), np.float32), (basket, item)), shape=(basket.max() + 1, len(item_ids)))
    co = (B.T @ B).tocoo()
    freq = np.asarray(B.sum(axis=0)).ravel()
    keep = (co.row != co.col) & (co.data >= min_baskets)
    r, c, count = co.row[keep], co.col[keep], co.data[keep]
    score = count / np.sqrt(freq[r] * freq[c])
    ids = np.asarray(item_ids, dtype=object)
    order = np.lexsort((ids[c], -score, r))  # per item: best score first, ties by neighbour id
    r, c, count, score = r[order], c[order], count[order], score[order]
    first = np.r_[0, np.flatnonzero(np.diff(r)) + 1]
    rank = np.arange(len(r)) - np.repeat(first, np.diff(np.r_[first, len(r)]))
    top = rank < n_neighbours
    return pd.DataFrame({"item_id": ids[r[top]].astype(str), "neighbour_id": ids[c[top]].astype(str),
                         "score": score[top].astype("float32"), "baskets": count[top].astype("int32")})


def write_serving_tables(staging: Path, frame: pd.DataFrame, items: pd.DataFrame, purchases: pd.DataFrame,
                         history: pd.DataFrame, as_of: pd.Timestamp, config: CartwiseConfig) -> dict:
    """The tables serving reads besides towers and index: the item table (category, price, title, stock,
    margin), popularity, purchase history, co-purchase neighbours and content embeddings.

    Args:
        staging: the bundle being written.
        frame: item features as of `as_of`, one row per indexed item, in index order.
        items: the ingested catalog (title, in_stock, margin).
        purchases: purchase lines up to the data's end (guests included).
        history: their per (user, item) summary (`pipelines.evaluate.purchase_history`).
        as_of: the bundle's as-of instant.
        config: popularity window.

    Returns:
        Manifest fields describing the co-purchase table.
    """
    extra = [c for c in (n.TITLE, n.IN_STOCK, n.MARGIN) if c in items.columns]
    table = frame[[n.ITEM_ID, n.CATEGORY, n.PRICE]].merge(
        items[[n.ITEM_ID, *extra]].astype({n.ITEM_ID: str}).drop_duplicates(n.ITEM_ID), on=n.ITEM_ID, how="left")
    if n.IN_STOCK in table:  # unknown stock stays unknown (NA), so the out_of_stock rule keeps it
        table[n.IN_STOCK] = table[n.IN_STOCK].astype("boolean")
    table.to_parquet(staging / b.ITEMS, index=False)
    (staging / b.POPULAR).write_text(json.dumps(popularity(purchases, as_of, config.evaluation.popularity_days)))
    history.to_parquet(staging / b.HISTORY, index=False)
    ids = frame[n.ITEM_ID].astype(str).tolist()
    pairs = bought_together(purchases, ids)
    pairs.to_parquet(staging / b.BOUGHT_TOGETHER, index=False)
    text = [v if isinstance(v, (list, np.ndarray)) else [] for v in
            (frame[n.TEXT_EMBEDDING] if n.TEXT_EMBEDDING in frame else [[]] * len(frame))]
    dim = max((len(v) for v in text), default=0)
    content = np.zeros((len(frame), dim), np.float32)
    for i, v in enumerate(text):  # an item without text keeps a zero row (similar to nothing)
        if len(v) == dim:
            content[i] = np.asarray(v, dtype=np.float32)
    np.save(staging / b.CONTENT_EMBEDDINGS, content, allow_pickle=False)
    return {"neighbours": BOUGHT_TOGETHER_N, "min_baskets": BOUGHT_TOGETHER_MIN_BASKETS,
            "max_basket_items": BOUGHT_TOGETHER_MAX_BASKET_ITEMS, "pairs": len(pairs),
            "items_with_neighbours": int(pairs["item_id"].nunique()), "content_embedding_size": dim}


def write_golden(staging: Path, embed_query, store, users: list[str], as_of: pd.Timestamp, searcher,
                 emb: np.ndarray, min_recall: float, log: Log, index: dict | None = None) -> float:
    """Embed the golden users, check index recall against brute force, store them for load-time replay.

    `embed_query`: the staged query tower; `index`: the index parameters; the queries re-order and search what
    serving would for GOLDEN_K neighbours.

    Returns:
        recall@10 of the index against exact search on the golden queries.
    """
    g = staging / b.GOLDEN_DIR
    g.mkdir(parents=True, exist_ok=True)
    with step(STAGE, f"index recall@{GOLDEN_K} vs brute force on {len(users)} golden queries", log) as s:
        inputs, q = embed_users(embed_query, store, users, as_of, emb.shape[1])
        recall = recall_vs_brute_force(searcher, emb, q, k=GOLDEN_K, index=index) if users else 1.0
        s["result"] = f"{recall:.3f}"
    inputs.to_parquet(g / b.GOLDEN_INPUTS, index=False)
    np.save(g / b.GOLDEN_QUERIES, q.astype(np.float32), allow_pickle=False)
    (g / b.GOLDEN_EXPECTED).write_text(json.dumps({"k": GOLDEN_K, "min_recall": min_recall, "strings": QUERY_STRINGS,
                                                   "floats": QUERY_FLOATS, "users": users}))
    return recall


def refusal(recall: float, min_recall: float, params: dict) -> str:
    """Why export refuses an index whose golden recall@10 is below `min_recall`, and the setting that helps."""
    most = params.get("num_leaves_to_search")
    leaves = b.query_leaves(params, GOLDEN_K) or most
    depth = b.query_reorder(params, GOLDEN_K)
    configured = b.configured_reorder(params, GOLDEN_K) if params.get("type") == "tree_ah" else depth
    if leaves is not None and most is not None and (leaves < most or depth < configured):
        # calibration cut the search: ask it for more
        advice = (f"raise retrieval.index.target_recall (the search of {GOLDEN_K} was calibrated down to {leaves} of "
                  f"at most {most} leaves and {depth} of {configured} re-ordered candidates; null: every query "
                  f"searches the most)")
    else:
        advice = "raise retrieval.index.num_leaves_to_search or reorder_per_neighbor"
    return (f"index recall@{GOLDEN_K} {recall:.3f} < retrieval.index.min_recall {min_recall} (searching {leaves} "
            f"leaves and re-ordering {depth} candidates per query, as serving asks for "
            f"{GOLDEN_K}); {advice}")


def write_tables(staging: Path, store, frame: pd.DataFrame, emb: np.ndarray, searcher, params: dict,
                 items: pd.DataFrame, events: pd.DataFrame, as_of: pd.Timestamp, config: CartwiseConfig,
                 log: Log = default_log, ranker_from: Path | None = None) -> dict:
    """Everything a bundle holds after its towers and index, written alike by export and `cartwise index update`:
    golden queries (with the index recall gate), the serving tables (:func:`write_serving_tables`), the
    ranker's part (`pipelines/export_ranking.py`) and config.json.

    Args:
        staging: the bundle being written; towers and index are in it.
        store: the Feast store (golden and calibration users' query-tower inputs as of `as_of`).
        frame: item features as of `as_of`, one row per indexed item, in index order.
        emb: (N, D) float32 item embeddings, rows as `frame`.
        searcher: the ScaNN searcher over `emb`.
        params: its index parameters (:func:`write_index`).
        items: the ingested catalog.
        events: the ingested event log (purchases are taken from it).
        as_of: the bundle's as-of instant.
        config: the config the bundle is written with (stored as config.json,
            whose serving sections serving reads).
        log: progress sink.
        ranker_from: the trained ranking model (`<work_dir>/ranking_model`, or the parent bundle's
            `ranking/`); None or a directory without one: no ranker in the bundle.

    Returns:
        Manifest fields: `index` (params with the calibrated leaves and depth per neighbour count, recall against
        brute force, golden query count), `golden`, `serving_tables` and, with a ranker, `ranking`.

    Raises:
        ExportRefused: recall@10 on the golden queries below `retrieval.index.min_recall`.
    """
    purchases = events[events[n.EVENT_TYPE] == n.PURCHASE]
    history = purchase_history(purchases)
    # the most active buyers are the golden users (their queries exercise the index where it matters most), the
    # next ones calibrate the search (leaves and re-ordering depth)
    buyers = buyers_by_activity(history)
    users = buyers[:GOLDEN_QUERIES]
    embed_query = b.load_tower(staging / b.QUERY_TOWER)  # the staged query tower, loaded once for both
    params = calibrate_on_users(
        searcher, emb, params, buyers[GOLDEN_QUERIES:GOLDEN_QUERIES + config.retrieval.index.calibration_queries],
        lambda some: embed_users(embed_query, store, some, as_of, emb.shape[1])[1], config.retrieval.k,
        config.retrieval.index, STAGE, log)
    min_recall = config.retrieval.index.min_recall
    recall = write_golden(staging, embed_query, store, users, as_of, searcher, emb, min_recall, log, index=params)
    if recall < min_recall:
        raise ExportRefused(refusal(recall, min_recall, params))
    serving_tables = write_serving_tables(staging, frame, items, purchases, history, as_of, config)
    ranker = write_ranker(staging, ranker_from, store, purchases, frame[n.ITEM_ID].astype(str).tolist(), as_of,
                          config, log)
    write_json(staging / "config.json", config.model_dump(mode="json"))
    return {"index": {**params, "recall_at_10_vs_brute_force": recall, "golden_queries": len(users)},
            "golden": {"queries": len(users), "k": GOLDEN_K, "min_recall": min_recall},
            "serving_tables": serving_tables, **(ranker or {})}


# --- the drift gate ------------------------------------------------------------------


def blessed_reference(bundles: Path) -> tuple[dict[str, dict], str | None]:
    """Reference profiles stored in the CURRENT bundle (what the last successful export was built from).

    Returns:
        ({dataset: profile}, version) or ({}, None) before the first gated export.

    Raises:
        BundleError: CURRENT names a bundle that fails verification (fail closed).
    """
    version = b.current_version(bundles)
    if version is None or not (bundles / version).is_dir():
        return {}, None
    root = bundles / version
    b.verify(root)
    ref_dir = root / b.REFERENCE_DIR
    if not ref_dir.is_dir():
        return {}, version
    return {p.stem: json.loads(p.read_text()) for p in sorted(ref_dir.glob("*.json"))}, version


def run_gate(config: CartwiseConfig, layout: Layout, events: pd.DataFrame, items: pd.DataFrame,
             train: pd.DataFrame, log: Log = default_log) -> tuple[dict, dict[str, dict]]:
    """Gate the event log, the training set and the feature tables before export.

    Returns:
        (combined verdict, profiles of this export's data to store as the next reference).
    """
    v = config.validation
    th, over = v.drift.thresholds(), v.drift.features
    refs, ref_version = blessed_reference(layout.bundles)
    frames = {gate.EVENT_LOG: gate.event_log_frame(events, items), gate.TRAINING_SET: train}
    unknown = sorted(set(over) - {str(c) for df in frames.values() for c in df.columns})
    if unknown:  # else a misspelt column keeps the global thresholds, silently
        raise ConfigError(f"validation.drift.features: no column named {', '.join(map(repr, unknown))} in the "
                          f"event log or the training set")
    static = {gate.EVENT_LOG: None,
              gate.TRAINING_SET: training_set_suite(
                  min_rows=v.min_rows, max_null_fraction=v.max_null_fraction, max_weight=v.max_weight,
                  event_types=training_event_types(config))}
    verdicts = []
    with step(STAGE, "drift gate: event log, training set, feature tables vs the blessed reference "
              f"({ref_version or 'none yet'})", log) as s:
        for name, df in frames.items():
            ref = refs.get(name)
            if ref is not None:
                ref = {**ref, "bundle": ref_version}
            verdicts.append(gate.evaluate(df, name, reference=ref, thresholds=th, overrides=over,
                                          min_rows=v.min_rows if name == gate.TRAINING_SET else 1,
                                          suite=static[name]))
        for table in FEATURE_TABLES:
            path = layout.feature_store / "data" / f"{table}.parquet"
            df = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
            ge = run_suite(df, feature_table_suite(table), f"feature_table_{table}")
            failures = [{"feature": f["column"] or "<table>", "statistic": f["expectation"],
                         "value": f.get("error") or f["observed"], "threshold": None, "source": "expectation"}
                        for f in ge["failures"]]
            status = gate.ERROR if ge.get("error") and not df.empty else (gate.BLOCKED if failures or df.empty
                                                                          else gate.PASS)
            verdicts.append({"dataset": f"feature_table_{table}", "rows": len(df), "status": status,
                             "success": status == gate.PASS, "failures": failures, "expectations": ge,
                             "error": ge.get("error"), "reference": None, "drift": None})
        verdict = gate.combine(verdicts, reference_bundle=ref_version)
        s["result"] = verdict["status"].upper()
    profiles = {name: drift.profile(df, name) for name, df in frames.items()}
    return verdict, profiles


# --- run -----------------------------------------------------------------------------


def provenance(layout: Layout) -> dict:
    """What the bundle's towers were trained on and which model its metrics.json measured.

    `cartwise demo` evaluates towers trained to the split date, then trains
    them again on all the data and exports those: the bundle's metrics.json
    then describes the split's model, not the exported one, and says so here.
    """
    out = {"training_end": read_json(layout.model / "training_summary.json").get("cutoff")}
    metrics = layout.evaluation / "metrics.json"
    if metrics.is_file():
        evaluated = read_json(metrics).get("split", {}).get("cutoff")
        out["metrics_of"] = {"training_end": evaluated,
                             "same_towers_as_bundle": evaluated == out["training_end"]}
    return out


def run(config: CartwiseConfig, *, log: Log = default_log) -> dict:
    """Gate, build, verify and publish a bundle.

    Returns:
        The bundle manifest.

    Raises:
        ExportRefused: the training set's verdict is missing or failing, the
            drift gate blocked (the verdict JSON and HTML name each failing
            feature and statistic), or the index recall on golden queries is
            below `retrieval.index.min_recall`.
    """
    layout = Layout(config.work_dir)
    verdict_path = layout.dataset / "validation.json"
    if not verdict_path.is_file() or not read_json(verdict_path).get("success"):
        raise ExportRefused(f"{verdict_path}: no passing validation verdict; export needs one")
    events = pd.read_parquet(layout.ingest / "events.parquet")
    items = pd.read_parquet(layout.ingest / "items.parquet")
    train = pd.read_parquet(layout.dataset / "train.parquet")
    bundles = layout.bundles
    cleanup_orphans(bundles, log)

    gate_verdict, profiles = run_gate(config, layout, events, items, train, log)
    gate_json = layout.root / "validation" / "export_gate.json"
    gate_html = report.write(gate_verdict, gate_json, title="cartwise export gate")
    if not gate_verdict["success"]:
        raise ExportRefused(f"drift gate {gate_verdict['status']} (verdict {gate_json}, report {gate_html}):\n"
                            + "\n".join(gate.summary_lines(gate_verdict)))

    as_of = pd.Timestamp(events[n.EVENT_TIMESTAMP].max()).floor("D") + pd.Timedelta(days=1)
    store = open_store(layout.feature_store)
    staging, stamp = new_staging(bundles)
    b.crash_point("staging_created")
    try:
        for tower in (b.QUERY_TOWER, b.CANDIDATE_TOWER):
            shutil.copytree(layout.model / tower, staging / tower)
        b.crash_point("towers_copied")
        ids = items[n.ITEM_ID].astype(str).tolist()
        with step(STAGE, f"embed the catalog ({len(ids):,} items) as of {as_of:%Y-%m-%d} and build the ScaNN index",
                  log) as s:
            frame = item_features_as_of(store, ids, as_of)
            emb = b.load_tower(staging / b.CANDIDATE_TOWER)(tensors(frame, CANDIDATE_STRINGS, CANDIDATE_FLOATS))
            searcher, params = write_index(staging, frame, emb, config)
            s["result"] = f"{params['type']}"
        b.crash_point("index_serialized")

        tables = write_tables(staging, store, frame, emb, searcher, params, items, events, as_of, config, log,
                              ranker_from=layout.root / MODEL_DIR)
        for src, name in ((verdict_path, "validation.json"), (layout.evaluation / "metrics.json", "metrics.json"),
                          (layout.model / "training_summary.json", "training_summary.json"),
                          (gate_json, "drift.json"), (gate_html, "drift.html")):
            if src.is_file():
                shutil.copy2(src, staging / name)
        (staging / b.REFERENCE_DIR).mkdir()
        for name, prof in profiles.items():
            (staging / b.REFERENCE_DIR / f"{name}.json").write_text(json.dumps(prof, sort_keys=True))
        b.crash_point("tables_written")

        manifest = publish(staging, bundles, stamp, {
            "as_of": as_of.isoformat(),
            "feature_store": str(layout.feature_store),
            "feature_services": {"query": n.RETRIEVAL_QUERY_SERVICE, "candidate": n.RETRIEVAL_CANDIDATE_SERVICE},
            "query_inputs": {"strings": QUERY_STRINGS, "floats": QUERY_FLOATS},
            "candidate_inputs": {"strings": CANDIDATE_STRINGS, "floats": CANDIDATE_FLOATS},
            **tables,
            "validation": {"status": gate_verdict["status"], "reference_bundle": gate_verdict["reference_bundle"]},
            **provenance(layout),
            "format": b.FORMAT_GOLDEN,  # cartwise.bundle.bundle_format: golden queries required from this format
        }, log)
    except BaseException:
        # a refused or failed export leaves nothing behind (a SIGKILL leaves staging, removed next time)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
