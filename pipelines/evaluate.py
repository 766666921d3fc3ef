"""Offline evaluation on held-out purchases, with baselines computed in the same run.

Where it sits: train_retrieval (towers) -> **evaluate** -> export (metrics go
into the bundle). Also `cartwise evaluate --test-events FILE`, which scores
the exported bundle on a raw file from a later period.

Protocol: purchases only (ingest has already dropped cancellations,
non-product codes, quantity <= 0 and unit price <= 0, and upper-cased ids);
time split at the end of `evaluation.split_date`; test users are customers
with at least one purchase in the test window and one before it; relevant =
distinct items the user bought in the test window; binary-gain NDCG.
"new_to_user" removes the items a user bought before the split from both the
ranking and the relevant set (users left with nothing relevant drop out).

Methods, all computed in the same run on the same users:
`model` (retrieval + ranking: candidates from the user's own items, item-kNN,
EASE and popularity, plus `ranking.candidates.two_tower` from the two-tower
index (0 by default), scored by the DCN ranking model on Feast features read
point in time at the cut-off), `model_new_item_slots` (the same lists with
`ranking.new_item_slots` positions given to items never sold before the
cut-off: the cold-start route, reported apart because the baselines have no
such slots), `two_tower` (the retrieval index alone), and the baselines of pipelines/baselines.py: `popularity` (last
`evaluation.popularity_days`), `repeat` (own items by recency-weighted
purchases), `item_knn` (co-purchase) and `ease`.

Besides the two variants: cohorts (cold items = items first sold in the test
window, with their recall; light and heavy users; cold users = customers
first seen in the test window, asked after their first basket with their own
lists, pipelines/cold_users.py), coverage curves, category
spread, the candidate set's recall (can the ranker even see the purchase?)
and the ranking's NDCG given the candidates, score samples and the training
curves; `metrics.json` and `report.html` (pipelines/report.py) in
`<work_dir>/evaluation/`.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from cartwise.bundle import CANDIDATE_TOWER, QUERY_TOWER, load_tower, search_kwargs
from cartwise.config import CartwiseConfig
from feature_repo import names as n
from pipelines.build_dataset import train_cutoff
from pipelines.build_features import open_store
from pipelines.build_index import build_searcher, calibrate_on_users
from pipelines.feature_frames import item_features_as_of, user_features_as_of
from pipelines.layout import Layout
from pipelines.manifest import read_json, write_json, write_manifest
from pipelines import baselines
from pipelines.build_ranking_dataset import ranking_rows
from pipelines.candidates import candidate_recall
from pipelines.cold_users import cold_user_lists, cold_user_targets
from pipelines.metrics import category_spread_at_k, cohort_recall, coverage_curve, evaluate_lists
from pipelines.new_items import insert_slots, new_item_lists
from pipelines.report import write_report
from pipelines.text_embedding import text_embeddings
from pipelines.progress import Log, default_log, step
from pipelines.train_retrieval import CANDIDATE_FLOATS, CANDIDATE_STRINGS, QUERY_FLOATS, QUERY_STRINGS, tensors

STAGE = "evaluate"
REPEAT_HALF_LIFE_DAYS = 30.0


def purchase_history(purchases: pd.DataFrame) -> pd.DataFrame:
    """Per (user, item): number of purchase lines and the last purchase time (customers only)."""
    p = purchases[purchases[n.USER_ID].notna()]
    h = (p.groupby([n.USER_ID, n.ITEM_ID])[n.EVENT_TIMESTAMP].agg(["size", "max"]).reset_index()
         .rename(columns={"size": "purchases", "max": "last_purchase"}))
    h[n.USER_ID] = h[n.USER_ID].astype(str)
    h[n.ITEM_ID] = h[n.ITEM_ID].astype(str)
    return h


def embed_users(embed_query, store, users: list[str], as_of: pd.Timestamp, dim: int
                ) -> tuple[pd.DataFrame, np.ndarray]:
    """The query tower's (`embed_query`) outputs for `users` as of `as_of`: (its inputs, float32 [len(users), dim])."""
    if not users:
        return (pd.DataFrame({c: pd.Series(dtype=str if c in QUERY_STRINGS else "float32")
                              for c in [*QUERY_STRINGS, *QUERY_FLOATS]}), np.zeros((0, dim), np.float32))
    inputs = user_features_as_of(store, users, as_of)
    inputs = inputs[[*QUERY_STRINGS, *QUERY_FLOATS]].astype({c: str for c in QUERY_STRINGS})
    q = embed_query(tensors(inputs, QUERY_STRINGS, QUERY_FLOATS))
    return inputs, np.asarray(q, dtype=np.float32)


def buyers_by_activity(history: pd.DataFrame) -> list[str]:
    """The users of a :func:`purchase_history`, most purchase lines first (ties by user id)."""
    return (history.groupby(n.USER_ID)["purchases"].sum().sort_values(ascending=False, kind="stable")
            .index.astype(str).tolist())


def repeat_lists(history: pd.DataFrame, users: Sequence[str], as_of: pd.Timestamp,
                 popular: Sequence[str], length: int) -> dict[str, list[str]]:
    """Repeat-purchase baseline: own items by recency-weighted purchases, then popularity."""
    h = history[history[n.USER_ID].isin(set(users))].copy()
    age = (as_of - pd.to_datetime(h["last_purchase"], utc=True)).dt.total_seconds() / 86400.0
    h["score"] = h["purchases"] * np.power(0.5, age.clip(lower=0) / REPEAT_HALF_LIFE_DAYS)
    h = h.sort_values([n.USER_ID, "score", n.ITEM_ID], ascending=[True, False, True])
    own = h.groupby(n.USER_ID)[n.ITEM_ID].apply(list).to_dict()
    out = {}
    for u in users:
        items = own.get(u, [])
        seen = set(items)
        out[u] = items + [i for i in popular[: length + len(items)] if i not in seen]
    return out


def model_lists(embed_query: Callable, searcher, item_ids: np.ndarray, user_frame: pd.DataFrame,
                length: int, index: Mapping | None = None) -> dict[str, list[str]]:
    """Top-`length` items per user from the query tower and the ScaNN index.

    `index`: the index parameters (`build_searcher`'s or a manifest's); a tree + AH index re-orders as many
    candidates and searches as many leaves as serving would for `length` neighbours
    (`cartwise.bundle.search_kwargs`: the calibrated leaves and depth), else its defaults.
    """
    if user_frame.empty:
        return {}
    q = embed_query(tensors(user_frame, QUERY_STRINGS, QUERY_FLOATS))
    k = min(length, len(item_ids))
    idx, _ = searcher.search_batched(np.ascontiguousarray(q, dtype=np.float32), final_num_neighbors=k,
                                     **search_kwargs(index, k))
    users = user_frame[n.USER_ID].astype(str).tolist()
    return {u: item_ids[row].tolist() for u, row in zip(users, idx)}


def score_lists(lists_by_method: Mapping[str, Mapping[str, list[str]]], relevant: Mapping[str, set[str]],
                history_sets: Mapping[str, set[str]], ks: Sequence[int], catalog: set[str],
                revenue: Mapping[str, Mapping[str, float]] | None = None,
                new_to_user_lists: Mapping[str, Mapping[str, list[str]]] | None = None) -> dict:
    """Metrics for every method in both variants (all items, new to user).

    `new_to_user_lists` gives a method's own list for that variant (already
    without the user's past items), e.g. when positions are reserved after
    exclusions as serving does with `exclude_purchased`; other methods are
    pruned here.
    """
    new_relevant = {u: rel - history_sets.get(u, set()) for u, rel in relevant.items()}
    out: dict = {"all_items": {}, "new_to_user": {}}
    for method, lists in lists_by_method.items():
        out["all_items"][method] = evaluate_lists(lists, relevant, ks, catalog, revenue=revenue)
        if new_to_user_lists and method in new_to_user_lists:
            pruned = new_to_user_lists[method]
        else:
            pruned = {u: [i for i in lst if i not in history_sets.get(u, set())] for u, lst in lists.items()}
        out["new_to_user"][method] = evaluate_lists(pruned, new_relevant, ks, catalog, revenue=revenue)
    return out


def baseline_lists(train: pd.DataFrame, users: Sequence[str], as_of: pd.Timestamp, popular: Sequence[str],
                   length: int, ease_max_items: int | None = None,
                   fitted: tuple[baselines.Interactions, baselines.ItemKNN] | None = None
                   ) -> dict[str, dict[str, list[str]]]:
    """Lists of every baseline (popularity, repeat, item-kNN, EASE), fitted on `train` before `as_of`.

    EASE only up to `ease_max_items` items (`ranking.ease_max_items`: its dense inverse; None: no limit), else it
    is left out. `fitted`: the interactions of `train` at `as_of` and the item-kNN fitted on them, when the
    caller has them (:func:`fit_item_knn`); else made here.
    """
    inter, knn = fitted or fit_item_knn(train, as_of)
    out = {
        "popularity": {u: list(popular[:length]) for u in users},
        "repeat": baselines.repeat(train, users, as_of, length, popular=popular),
        "item_knn": baselines.recommend(knn, inter, users, length, popular=popular),
    }
    if ease_max_items is None or inter.matrix_.shape[1] <= ease_max_items:
        out["ease"] = baselines.recommend(baselines.EASE().fit(inter.matrix_), inter, users, length, popular=popular)
    return out


def test_revenue(test: pd.DataFrame) -> dict[str, dict[str, float]]:
    """user -> {item: revenue in the test window} (customers)."""
    t = test[test[n.USER_ID].notna()]
    value = t[n.QUANTITY].astype(float) * t[n.UNIT_PRICE].astype(float)
    rev = value.groupby([t[n.USER_ID].astype(str), t[n.ITEM_ID].astype(str)]).sum()
    out: dict[str, dict[str, float]] = {}
    for (u, i), v in rev.items():
        out.setdefault(u, {})[i] = float(v)
    return out


def new_item_pool(pool: Sequence[str], slots: int, relevant: Mapping[str, set[str]], cold_items: set[str]) -> dict:
    """What the new-item slots chose from, and the cold-item recall of picking at random from it.

    The pool is the catalog's items never sold before the cut-off. The log only knows an item once it sells,
    so in a shop's log that is the items first sold in the test window: picked by their future, which a live
    catalog's unsold items are not. The chance level (`slots` uniform picks from the pool, per cold-item buyer
    `slots * |relevant cold items in the pool| / (|pool| * |relevant cold items|)`, averaged as
    `cohort_recall` averages) is what a pick is worth for the pool alone.
    """
    members = set(pool)
    total, users = 0.0, 0
    for rel in relevant.values():
        rc = rel & cold_items
        if rc:
            total += min(slots, len(members)) * len(rc & members) / (len(members) * len(rc)) if members else 0.0
            users += 1
    return {"items": len(members), "slots": slots, "cold_items_in_pool": len(cold_items & members),
            "chance_cold_recall": round(total / users, 4) if users else 0.0}


def fit_item_knn(train: pd.DataFrame, as_of: pd.Timestamp) -> tuple[baselines.Interactions, baselines.ItemKNN]:
    """The customers' interactions before `as_of` and the item-kNN baseline fitted on them."""
    inter = baselines.Interactions.from_purchases(train, as_of)
    return inter, baselines.ItemKNN().fit(inter.matrix_)


def extra_metrics(lists: Mapping[str, Mapping[str, list[str]]], relevant: Mapping[str, set[str]],
                  users_by_cohort: Mapping[str, Sequence[str]], cold_items: set[str], categories: Mapping[str, str],
                  ks: Sequence[int], catalog: set[str]) -> dict:
    """Cohorts, coverage curves and category spread of every method's lists."""
    out: dict = {"cohorts": {}, "coverage_curve": {}, "category_spread": {}}
    cold = out["cohorts"]["cold_items"] = {}
    for method, ls in lists.items():
        row: dict = {}
        for k in ks:
            c = cohort_recall(ls, relevant, cold_items, k)
            row["users"], row[f"recall@{k}"] = c["users"], c[f"recall@{k}"]
        cold[method] = row
        out["coverage_curve"][method] = coverage_curve(ls, sorted({1, 5, 10, 20, 50, 100, *ks}), catalog)
        spread: dict = {}
        for k in ks:
            spread.update(category_spread_at_k(ls, categories, k))
        out["category_spread"][method] = spread
    for cohort, members in users_by_cohort.items():
        rel = {u: relevant[u] for u in members}
        out["cohorts"][cohort] = {m: evaluate_lists(ls, rel, ks, catalog) for m, ls in lists.items()}
    return out


def format_table(metrics: dict, ks: Sequence[int]) -> str:
    """The metrics as a fixed-width text table (rows: variant x method)."""
    cols = [f"{m}@{k}" for k in ks for m in ("ndcg", "hit_rate", "recall", "coverage")]
    w = max([11, *(len(m) for v in ("all_items", "new_to_user") for m in metrics[v])])
    lines = [f"{'variant':<12} {'method':<{w}} {'users':>6} " + " ".join(f"{c:>12}" for c in cols)]
    for variant in ("all_items", "new_to_user"):
        for method, m in metrics[variant].items():
            lines.append(f"{variant:<12} {method:<{w}} {int(m['users']):>6} "
                         + " ".join(f"{m[c]:>12.4f}" for c in cols))
    return "\n".join(lines)


def split_purchases(events: pd.DataFrame, cutoff: pd.Timestamp, test_end: pd.Timestamp | None):
    p = events[events[n.EVENT_TYPE] == n.PURCHASE]
    train = p[p[n.EVENT_TIMESTAMP] < cutoff]
    test = p[p[n.EVENT_TIMESTAMP] >= cutoff]
    if test_end is not None:
        test = test[test[n.EVENT_TIMESTAMP] < test_end]
    return train, test


def test_targets(history: pd.DataFrame, test: pd.DataFrame) -> tuple[list[str], dict[str, set[str]], dict[str, set[str]]]:
    """Warm test users, their relevant items and their training items."""
    t = test[test[n.USER_ID].notna()]
    relevant = {str(u): set(g[n.ITEM_ID].astype(str)) for u, g in t.groupby(n.USER_ID)}
    hist_sets = {u: set(g[n.ITEM_ID]) for u, g in history.groupby(n.USER_ID)}
    users = sorted(u for u in relevant if u in hist_sets)
    return users, {u: relevant[u] for u in users}, {u: hist_sets[u] for u in users}


def evaluate_all(*, history: pd.DataFrame, test: pd.DataFrame, popular: list[str], catalog: set[str],
                 embed_query: Callable, searcher, item_ids: np.ndarray, user_features: Callable[[list[str]], pd.DataFrame],
                 index: Mapping | None,
                 as_of: pd.Timestamp, ks: Sequence[int], log: Log) -> dict:
    """The two-tower index and the baselines a bundle can compute (`run_on_file`).

    A bundle carries per (user, item) purchase summaries, not purchase lines,
    so `repeat` here ranks a user's items by purchases x 0.5^(days since the
    last / 30) and item-kNN, EASE and the ranker are not computed: these
    figures compare with each other, not with `run`'s. `user_features(users)`
    gives the query-tower inputs.
    """
    users, relevant, hist_sets = test_targets(history, test)
    max_k = max(ks)
    length = max_k + max((len(s) for s in hist_sets.values()), default=0)
    with step(STAGE, f"two-tower and baselines for {len(users):,} warm test users", log):
        lists = {
            "two_tower": model_lists(embed_query, searcher, item_ids, user_features(users), length, index),
            "popularity": {u: popular[:length] for u in users},
            "repeat": repeat_lists(history, users, as_of, popular, length),
        }
        metrics = score_lists(lists, relevant, hist_sets, ks, catalog)
    metrics["test_users"] = len(users)
    metrics["test_purchases"] = int(len(test))
    metrics["catalog_items"] = len(catalog)
    return metrics


def ranked_lists(config: CartwiseConfig, store, purchases: pd.DataFrame, items: pd.DataFrame, cutoff: pd.Timestamp,
                 users: Sequence[str], two_tower: Mapping[str, list[str]], scorer, popular: Sequence[str],
                 length: int) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """Retrieval + ranking: candidates (own, item-kNN, EASE, popularity, two-tower) scored by the ranker.

    Returns:
        user -> ranked item ids (filled with `popular` up to `length`), and
        the scored candidate rows (user_id, item_id, candidate_source, score).
    """
    quota = config.ranking.candidates.two_tower
    extra = {"two_tower": {u: lst[:quota] for u, lst in two_tower.items()}} if quota else None
    rows, _ = ranking_rows(config, store, purchases, items, cutoff, users, extra=extra)
    rows["score"] = scorer(rows)
    out, rows = lists_by_score(rows, users, popular, length)
    return out, rows[[n.USER_ID, n.ITEM_ID, n.CANDIDATE_SOURCE, "score"]]


def lists_by_score(rows: pd.DataFrame, users: Sequence[str], popular: Sequence[str],
                   length: int) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """Each user's candidates (rows: user_id, item_id, score) best score first, filled with `popular` up to `length`.

    Returns:
        user -> item ids, and the rows in that order.
    """
    rows = rows.sort_values([n.USER_ID, "score", n.ITEM_ID], ascending=[True, False, True], kind="stable")
    ranked = rows.groupby(n.USER_ID, sort=False)[n.ITEM_ID].apply(list).to_dict()
    out = {}
    for u in users:
        lst = ranked.get(u, [])
        if len(lst) < length:
            have = set(lst)
            lst = lst + [i for i in popular[:length] if i not in have]
        out[u] = lst
    return out, rows


def _training_history(layout: Layout) -> dict:
    out = {}
    for name, path in (("retrieval", layout.model / "training_summary.json"),
                       ("ranking", layout.root / "ranking_model" / "training_summary.json")):
        if path.is_file():
            out[name] = read_json(path).get("history", [])
    return out


def run(config: CartwiseConfig, *, log: Log = default_log) -> dict:
    """Evaluate on the configured time split; write `<work_dir>/evaluation/metrics.json` and `report.html`."""
    from pipelines.train_ranking import load_scorer

    layout = Layout(config.work_dir)
    ev = config.evaluation
    events = pd.read_parquet(layout.ingest / "events.parquet")
    items = pd.read_parquet(layout.ingest / "items.parquet")
    cutoff = train_cutoff(config)
    ranking_dir = layout.root / "ranking_model"
    trained = [(layout.model / "training_summary.json", "cutoff", "train")]
    if config.ranking.enabled:
        trained.append((ranking_dir / "training_summary.json", "training_end", "train-ranking"))
    for path, key, cmd in trained:
        if cmd == "train-ranking" and not path.is_file():
            continue  # said below, with what to run
        end = pd.Timestamp(read_json(path)[key])
        if end > cutoff:
            raise ValueError(f"{path}: this model was trained on data up to {end:%Y-%m-%d}, after the evaluation "
                             f"cut-off {cutoff:%Y-%m-%d} (it has seen the test window); run `cartwise {cmd}` "
                             "with this config before evaluating")
    if ev.test_end is not None and config.ranking.enabled:
        window = (pd.Timestamp(ev.test_end) - pd.Timestamp(ev.split_date)).days
        if window != config.ranking.label_days:
            log(f"[{STAGE}] warning: ranking.label_days is {config.ranking.label_days} but the test window is "
                f"{window} days: the ranker is trained for another horizon than it is measured on")
    test_end = pd.Timestamp(ev.test_end, tz="UTC") + pd.Timedelta(days=1) if ev.test_end else None
    train_p, test_p = split_purchases(events, cutoff, test_end)
    if test_p.empty:
        raise ValueError(f"no purchases after {cutoff:%Y-%m-%d}: the test window is empty; move evaluation.split_date")
    history = purchase_history(train_p)
    users, relevant, hist_sets = test_targets(history, test_p)
    catalog = set(train_p[n.ITEM_ID].astype(str))
    max_k = max(ev.k)
    length = max_k + max((len(s) for s in hist_sets.values()), default=0)
    popular = baselines.popularity(train_p, cutoff, ev.popularity_days)
    store = open_store(layout.feature_store)
    known = items[items[n.FIRST_SEEN] < cutoff][n.ITEM_ID].astype(str).tolist()
    with step(STAGE, f"embed {len(known):,} items known at the cut-off and build the index", log):
        item_frame = item_features_as_of(store, known, cutoff)
        embed_items = load_tower(layout.model / CANDIDATE_TOWER)
        emb = embed_items(tensors(item_frame, CANDIDATE_STRINGS, CANDIDATE_FLOATS))
        searcher, params = build_searcher(emb, config.retrieval.index)
    # calibrated as export calibrates the bundle's index, on training buyers who are not test users, up to the
    # length of the lists the evaluation asks for
    tested = set(users)
    embed_query = load_tower(layout.model / QUERY_TOWER)
    params = calibrate_on_users(
        searcher, emb, params, [u for u in buyers_by_activity(history) if u not in tested][
            :config.retrieval.index.calibration_queries],
        lambda some: embed_users(embed_query, store, some, cutoff, emb.shape[1])[1],
        max(config.retrieval.k, length), config.retrieval.index, STAGE, log)
    lists: dict[str, dict[str, list[str]]] = {}
    with step(STAGE, f"two-tower retrieval for {len(users):,} warm test users", log):
        lists["two_tower"] = model_lists(embed_query, searcher,
                                         np.asarray(known, dtype=object),
                                         user_features_as_of(store, users, cutoff), length, params)
    with step(STAGE, "baselines: popularity, repeat, item-kNN, EASE", log):
        fitted = fit_item_knn(train_p, cutoff)
        lists.update(baseline_lists(train_p, users, cutoff, popular, length, config.ranking.ease_max_items, fitted))
        if "ease" not in lists:
            log(f"[{STAGE}] EASE baseline left out: the customers' items exceed ranking.ease_max_items "
                f"({config.ranking.ease_max_items:,})")
    cold_users, baskets, cold_relevant = cold_user_targets(train_p, test_p)
    categories = items.set_index(n.ITEM_ID)[n.CATEGORY].astype(str).to_dict()
    with step(STAGE, f"cold users: {len(cold_users):,} first-time buyers after their first basket", log):
        cold_lists = cold_user_lists(cold_users, baskets, popular, max_k, *fitted, embed_query, searcher,
                                     np.asarray(known, dtype=object), params, categories)
    candidates = pd.DataFrame()
    own_lists: dict = {}
    if config.ranking.enabled:
        if not (ranking_dir / "training_summary.json").is_file():
            raise FileNotFoundError(f"{ranking_dir}: no ranking model; run `cartwise build-ranking-dataset` and "
                                    "`cartwise train-ranking`, or set ranking.enabled: false")
        with step(STAGE, "retrieval + ranking: candidates, point-in-time features, DCN scores", log) as s:
            ranked, candidates = ranked_lists(config, store, events[events[n.EVENT_TYPE] == n.PURCHASE], items,
                                              cutoff, users, lists["two_tower"], load_scorer(ranking_dir),
                                              popular, length)
            s["result"] = f"{len(candidates):,} candidate rows"
        r = config.ranking
        new = items[items[n.FIRST_SEEN] >= cutoff][n.ITEM_ID].astype(str).tolist()
        # positions are reserved in the list as served: after exclusions, so the new-to-user variant
        # (the list with `exclude_purchased`) gets them at the same positions
        ranked_new = {u: [i for i in lst if i not in hist_sets.get(u, set())] for u, lst in ranked.items()}
        own_lists = {"model": ranked_new}
        lists = {"model": ranked, **lists}
        if r.new_item_slots and new:
            emb_text = text_embeddings(items, dim=config.features.text_embedding_size)
            cust = train_p[train_p[n.USER_ID].notna()]
            picks = new_item_lists(emb_text, new, cust, users, cutoff, r.new_item_slots)
            lists["model_new_item_slots"] = insert_slots(ranked, picks, r.new_item_slots, r.new_item_first_position)
            own_lists["model_new_item_slots"] = insert_slots(ranked_new, picks, r.new_item_slots,
                                                             r.new_item_first_position)
    revenue = test_revenue(test_p)
    with step(STAGE, "metrics", log):
        metrics = score_lists(lists, relevant, hist_sets, ev.k, catalog, revenue,
                              new_to_user_lists=own_lists if "model" in lists else None)
        lines = train_p[train_p[n.USER_ID].notna()].groupby(n.USER_ID).size()
        median_lines = float(lines.loc[users].median()) if users else 0.0
        cohorts = {"light_users": [u for u in users if lines.get(u, 0) <= median_lines],
                   "heavy_users": [u for u in users if lines.get(u, 0) > median_lines]}
        cold_items = set(test_p[n.ITEM_ID].astype(str)) - set(train_p[n.ITEM_ID].astype(str))
        metrics.update(extra_metrics(lists, relevant, cohorts, cold_items, categories, ev.k, catalog))
        metrics["cohorts"]["cold_users"] = {m: evaluate_lists(ls, cold_relevant, ev.k, catalog)
                                            for m, ls in cold_lists.items()}
        if "model_new_item_slots" in lists:
            metrics["new_item_pool"] = new_item_pool(new, config.ranking.new_item_slots, relevant, cold_items)
        if not candidates.empty:
            cand_rel = {u: relevant[u] & set(g) for u, g in candidates.groupby(n.USER_ID)[n.ITEM_ID]}
            metrics["candidates"] = {
                "recall": round(candidate_recall(candidates, relevant), 4),
                "per_user": round(float(candidates.groupby(n.USER_ID).size().mean()), 1),
                "by_source": {k: int(v) for k, v in candidates[n.CANDIDATE_SOURCE].value_counts().items()},
                f"ranking_ndcg@{min(ev.k)}_given_candidates":
                    evaluate_lists(lists["model"], cand_rel, [min(ev.k)], catalog)[f"ndcg@{min(ev.k)}"],
            }
            sample = candidates["score"].sample(min(5000, len(candidates)), random_state=0)
            metrics["scores"] = {"model": [round(float(x), 4) for x in sample]}
    metrics["training"] = _training_history(layout)
    metrics["test_users"] = len(users)
    metrics["test_purchases"] = int(len(test_p))
    metrics["catalog_items"] = len(catalog)
    metrics["cold_items"] = {"items": len(cold_items), "test_lines": int(test_p[n.ITEM_ID].astype(str).isin(cold_items).sum())}
    metrics["cold_users"] = {"users": len(cold_users),
                             "basket_items_mean": round(float(np.mean([len(b) for b in baskets.values()])), 2)
                             if baskets else 0.0,
                             "relevant_items_mean": round(float(np.mean([len(r) for r in cold_relevant.values()])), 2)
                             if cold_relevant else 0.0}
    metrics["split"] = {"train_end": str(ev.split_date), "cutoff": cutoff.isoformat(),
                        "test_end": str(ev.test_end) if ev.test_end else None}
    metrics["index"] = params
    write_json(layout.evaluation / "metrics.json", metrics)
    report = write_report(metrics, layout.evaluation / "report.html")
    write_manifest(layout.evaluation, STAGE, {"model": str(layout.model), "ranking_model": str(ranking_dir)}, ev,
                   {"metrics": "metrics.json", "report": "report.html"})
    log(format_table(metrics, ev.k))
    log(f"[{STAGE}] report: {report}")
    return metrics


def run_on_file(config: CartwiseConfig, path, *, adapter: str | None = None, out=None,
                log: Log = default_log) -> dict:
    """Evaluate the CURRENT bundle on the purchases of a raw file from a later period.

    The file is read by the same adapter, with the same cleaning, as ingest
    (nothing is written to the event log); duplicates are counted once. The
    bundle's purchase history is the training side; user features are read
    point in time at the file's first day.

    Args:
        config: parsed cartwise.yaml (work_dir, data.adapter, evaluation.k).
        path: the raw file.
        adapter: its format (default `data.adapter`).
        out: metrics JSON to write (default `<work_dir>/evaluation/metrics_<file stem>.json`).

    Returns:
        The metrics, including how many rows the adapter quarantined.
    """
    from pathlib import Path

    from cartwise.bundle import current_bundle, load_bundle
    from pipelines.adapters.base import get_adapter

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: test events file not found")
    layout = Layout(config.work_dir)
    root = current_bundle(layout.bundles)
    bundle = load_bundle(root)
    name = adapter or config.data.adapter
    with step(STAGE, f"read {path.name} with the {name} adapter", log) as s:
        result = get_adapter(name).read(path, config.data.on_malformed_value)
        events = result.events.drop_duplicates(n.EVENT_ID)
        s["result"] = (f"{result.input_rows:,} rows: {len(events):,} distinct events, "
                       f"{len(result.quarantine):,} quarantined")
    test = events[events[n.EVENT_TYPE] == n.PURCHASE]
    if test.empty:
        raise ValueError(f"{path}: no purchases to evaluate on")
    as_of = pd.Timestamp(test[n.EVENT_TIMESTAMP].min()).floor("D")
    bundle_as_of = pd.Timestamp(bundle.manifest["as_of"])
    if as_of < bundle_as_of:
        log(f"[{STAGE}] warning: the file starts {as_of:%Y-%m-%d}, before the bundle's data ends "
            f"({bundle_as_of:%Y-%m-%d}); the bundle has seen part of this period")
    history = bundle.history.copy()
    store = open_store(Path(bundle.manifest["feature_store"]))
    metrics = evaluate_all(
        history=history, test=test, popular=list(bundle.popular), catalog=set(history[n.ITEM_ID].astype(str)),
        embed_query=bundle.embed_query, searcher=bundle.searcher, item_ids=bundle.item_ids,
        user_features=lambda users: user_features_as_of(store, users, as_of), index=bundle.manifest.get("index"),
        as_of=as_of, ks=config.evaluation.k, log=log)
    metrics["bundle"] = bundle.version
    metrics["file"] = {"path": str(path), "adapter": name, "input_rows": result.input_rows,
                       "quarantined": int(len(result.quarantine)), "first_day": str(as_of.date()),
                       "overlaps_bundle_data": bool(as_of < bundle_as_of)}
    out = Path(out) if out else layout.evaluation / f"metrics_{path.name.split('.')[0]}.json"
    write_json(out, metrics)
    log(format_table(metrics, config.evaluation.k))
    log(f"[{STAGE}] metrics written to {out}")
    return metrics
