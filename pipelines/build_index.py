"""Build the ScaNN index over item embeddings and check it against brute force.

Where it sits: train_retrieval (candidate tower) -> item embeddings ->
**build_index** -> evaluate (index over the catalog at the cut-off) and
export (index over the whole catalog, serialized into the bundle).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scann.scann_ops.py import scann_ops_pybind

from cartwise.bundle import configured_reorder, exact_top_k, search_kwargs
from cartwise.config import MIN_CALIBRATION_QUERIES, IndexConfig
from pipelines.progress import Log, step


def build_searcher(embeddings: np.ndarray, cfg: IndexConfig, k: int = 10):
    """A ScaNN pybind searcher for maximum inner product.

    Below `cfg.brute_force_below` items the search is exact; above, a tree
    (about sqrt(n) leaves; with `cfg.soar_lambda` each item is also filed in
    a second leaf, SOAR: Sun et al., NeurIPS 2023), asymmetric hashing
    (`dims_per_block`, default :func:`default_dims_per_block`) and exact
    re-ordering. Unless configured, a query searches at most
    `default_leaves_to_search(leaves)` leaves and re-orders `cfg.reorder_per_neighbor`
    candidates per neighbour; :func:`calibrate_search` then lowers both per
    number of neighbours asked for. Every caller passes
    `**cartwise.bundle.search_kwargs(params, k)` per query (serving's
    two-tower source, evaluation, the export's recall gate and the bundle's
    golden replay, the benchmarks; calibration and the benchmark's sweep
    pass leaves and depths of their own); the searcher's own defaults are
    `cfg.reorder` and the most leaves.

    Args:
        embeddings: float32 [N, D].
        cfg: index section of cartwise.yaml.
        k: default number of neighbours.

    Returns:
        (searcher, params): the searcher and the parameters used (for the manifest).
    """
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = emb.shape
    if n == 0:
        raise ValueError("cannot build an index over zero items")
    builder = scann_ops_pybind.builder(emb, min(k, n), "dot_product")
    if n < max(cfg.brute_force_below, 16):
        return builder.score_brute_force().build(), {"type": "brute_force", "items": n}
    leaves = cfg.num_leaves or default_num_leaves(n)
    search = min(cfg.num_leaves_to_search or default_leaves_to_search(leaves), leaves)
    dpb = min(cfg.dims_per_block or default_dims_per_block(dim), dim)
    searcher = (builder.tree(num_leaves=leaves, num_leaves_to_search=search, training_sample_size=n,
                             soar_lambda=cfg.soar_lambda)
                .score_ah(dpb, anisotropic_quantization_threshold=0.2)
                .reorder(cfg.reorder)
                .build())
    return searcher, {"type": "tree_ah", "items": n, "num_leaves": leaves, "num_leaves_to_search": search,
                      "soar_lambda": cfg.soar_lambda, "dims_per_block": dpb, "reorder": cfg.reorder,
                      "reorder_per_neighbor": cfg.reorder_per_neighbor}


def default_num_leaves(n: int) -> int:
    """Leaves of the tree when `num_leaves` is not configured: about sqrt(items)."""
    return max(2, int(math.sqrt(n)))


def default_dims_per_block(dim: int) -> int:
    """Dimensions per AH codebook when not configured: 1 below 64-d, else 2 (32 codebooks or more from 32-d).

    The hash's precision grows with its number of codebooks. At 100k clustered
    32-d items (benchmarks/bench_index.py's mixture, SOAR, 18 of 316 leaves,
    50 candidates re-ordered) recall@10 was 0.919 with 2 dimensions per block
    (16 codebooks) and 0.949 with 1 (32), for 14 vs 17 us; at 64-d 2 per
    block gives 32 codebooks and 0.97.
    """
    return 1 if dim < 64 else 2


#: most leaves a query searches by default (past it recall@10 stops growing at 1M items; see below)
MAX_DEFAULT_LEAVES_TO_SEARCH = 50


def default_leaves_to_search(leaves: int) -> int:
    """Leaves a query searches when `num_leaves_to_search` is not configured: 3 sqrt(leaves), at most 50.

    A shrinking share of the leaves (16% of 316, 5% of 1,000), because the
    leaves that hold a query's top 10 grow more slowly than the tree: at 1M
    clustered items (benchmarks/bench_index.py, SOAR, 1,000 leaves) recall@10
    was 0.993 / 0.996 / 0.996 at 20 / 50 / 95 leaves (64-d) and 0.973 / 0.976
    / 0.977 (32-d), for 32 / 62 / 109 us at 64-d. Small trees need a larger share for
    the trained towers' queries, which are harder than the benchmark's
    synthetic ones: on the demo bundle's 200 golden queries (3,648 items, 60
    leaves, SOAR) recall@10 / @60 was 0.99 / 0.97 at 23 leaves but 0.85-0.91
    / 0.78-0.84 at 8 (sqrt(leaves)). This is the most a query searches:
    :func:`calibrate_search` lowers it per list length where real queries
    reach `target_recall` with fewer. Export refuses an index whose recall on
    its golden queries (real users' queries) is below `min_recall`, saying
    which setting to raise.
    """
    return max(1, min(leaves, round(3 * math.sqrt(leaves)), MAX_DEFAULT_LEAVES_TO_SEARCH))


def calibration_ks(k_max: int, first: int = 10) -> list[int]:
    """Neighbour counts the search is calibrated at: 10, doubling, up to and including `k_max`.

    A query for k neighbours searches the leaves calibrated at the smallest count >= k
    (`cartwise.bundle.query_leaves`): what a list up to twice its length needed.
    """
    ks, k = [], first
    while k < k_max:
        ks.append(k)
        k *= 2
    return ks + [k_max]


def leaves_ladder(most: int) -> list[int]:
    """Leaves counts tried by :func:`calibrate_search`: steps of about 25% from 1 up to `most`."""
    return sorted({min(most, max(1, round(1.25 ** i))) for i in range(64) if 1.25 ** i < most * 1.25} | {most})


#: standard errors of the calibration queries' mean recall a setting keeps above the target
CALIBRATION_STANDARD_ERRORS = 2.0


def recall_lower_bound(recalls: np.ndarray) -> float:
    """Mean recall less :data:`CALIBRATION_STANDARD_ERRORS` standard errors (what calibration holds to the target)."""
    r = np.asarray(recalls, dtype=np.float64)
    spread = r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else 0.0
    return float(r.mean() - CALIBRATION_STANDARD_ERRORS * spread)


#: candidates re-ordered per neighbour that calibration tries besides the configured depth (`reorder_per_neighbor`)
SHALLOWER_PER_NEIGHBOR = (2, 3)

#: hashed points one re-ordered candidate costs as much as (:func:`search_cost`). Measured by
#: benchmarks/search_cost.py on bench_index.py's mixture, this 2-core machine (2026-11-28 01:06 UTC, one query at
#: a time, p50 at 8 and 24 leaves x 20 and 80 candidates): a hashed point 0.43-0.71 ns, a re-ordered candidate
#: 72-80 ns (reading its float row misses the cache at these sizes): 122 points at 100k x 64-d, 103 at 100k x
#: 32-d, 185 at 1M x 64-d (a scratch run at 00:00 UTC: 131, 113, 194).
REORDER_COST_IN_HASHED_POINTS = 150


def search_cost(params: dict, leaves: int, depth: int) -> float:
    """Relative cost of one query that searches `leaves` leaves and re-orders `depth` candidates, in hashed points.

    The hashed points of those leaves (items per leaf, twice with SOAR) plus :data:`REORDER_COST_IN_HASHED_POINTS`
    per re-ordered candidate. Only ranks settings that all reach the calibration target against each other: a
    wrong constant costs speed, never recall below the target. Measured where a re-ordered row misses the cache
    (100k and 1M items); in a small catalog whose vectors stay cached (the demo's 3,648 x 32-d, 467 KB) a
    re-ordered candidate is likely cheaper than the constant says, so there it favours shallow depths.
    """
    per_leaf = params["items"] * (2 if params.get("soar_lambda") else 1) / params["num_leaves"]
    return leaves * per_leaf + depth * REORDER_COST_IN_HASHED_POINTS


def reorder_ladder(params: dict, k: int, shallower: tuple[int, ...] = SHALLOWER_PER_NEIGHBOR) -> list[int]:
    """Re-ordering depths :func:`calibrate_search` tries for `k` neighbours, shallowest first: the configured
    one (`cartwise.bundle.configured_reorder`) and `shallower` x k below it (never fewer than k); the configured
    one alone with `reorder_per_neighbor: 0` (always re-order `reorder`)."""
    configured = configured_reorder(params, k)
    if not params.get("reorder_per_neighbor"):
        return [configured]
    return sorted({max(k, min(configured, m * k)) for m in shallower} | {configured})


def calibrate_search(searcher, embeddings: np.ndarray, queries: np.ndarray, params: dict, k_max: int,
                     target: float | None, shallower: tuple[int, ...] = SHALLOWER_PER_NEIGHBOR) -> dict:
    """The cheapest search (leaves, re-ordering depth) a query for k neighbours needs to reach `target` recall@k,
    per k.

    Where it sits: after :func:`build_searcher`, through :func:`calibrate_on_users` in export (the query
    tower's outputs for the most active buyers after the golden ones, so the export's recall gate stays an
    independent check) and in evaluation (training buyers who are not test users); the benchmarks pass
    queries drawn apart from the ones they time.

    For every k of :func:`calibration_ks` (`k_max`: the most neighbours the caller asks for) and every depth
    of :func:`reorder_ladder` (the configured one and shallower), the leaves of :func:`leaves_ladder` are
    tried upwards: the first whose :func:`recall_lower_bound` of recall@k against exact inner-product search
    reaches `target` is that depth's setting. Of those, the one of least :func:`search_cost` is kept (a tie:
    the shallower depth; leaves that cost more than the best so far are not tried). A k that does not reach
    the target with the configured search (`params["num_leaves_to_search"]`, the configured or default most
    leaves, at the configured depth) keeps it, so calibration only ever lowers the work of a query: it does
    not buy recall the configured index does not have.

    Args:
        searcher: the tree + AH searcher over `embeddings`.
        embeddings: float32 [N, D].
        queries: float32 [Q, D] calibration queries (fewer than :data:`MIN_CALIBRATION_QUERIES`: none).
        params: the index parameters of :func:`build_searcher`.
        k_max: largest neighbour count calibrated (at most N).
        target: recall@k to reach; None: no calibration.
        shallower: candidates per neighbour tried below the configured depth (`()`: the leaves alone, at the
            configured depth; benchmarks/bench_index.py times both. Before 2026-11-28 calibration also walked
            each length's leaves on from the shorter length's choice, so they never fell with the length: each
            length now walks from one leaf).

    Returns:
        `params` plus `leaves_by_k` and `reorder_by_k` ({str(k): leaves}, {str(k): candidates re-ordered}),
        `target_recall`, `calibration_queries`, `calibrated_recall` and `calibrated_recall_low` ({str(k): mean
        recall@k and its lower bound at the chosen setting}); `params` unchanged for an exact index, too few
        queries or no target.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, embeddings.shape[1])
    if params.get("type") != "tree_ah" or target is None or len(queries) < MIN_CALIBRATION_QUERIES:
        return params
    ks = calibration_ks(min(k_max, embeddings.shape[0]))
    exact = exact_top_k(embeddings, queries, ks[-1])
    ladder = leaves_ladder(params["num_leaves_to_search"])

    def recall(k: int, leaves: int, depth: int) -> np.ndarray:
        got, _ = searcher.search_batched(queries, final_num_neighbors=k, leaves_to_search=leaves,
                                         pre_reorder_num_neighbors=depth)
        return recall_per_query(got, exact, k)

    leaves_by_k, reorder_by_k, mean, low = {}, {}, {}, {}
    for k in ks:
        depths = reorder_ladder(params, k, shallower)
        # the configured search first: where even it falls short, nothing cheaper is tried
        r = recall(k, ladder[-1], depths[-1])
        best = (ladder[-1], depths[-1], r)
        if recall_lower_bound(r) >= target:
            best_cost = search_cost(params, ladder[-1], depths[-1])
            for depth in reversed(depths):  # the configured depth's walk bounds the shallower ones' cost
                for leaves in ladder:
                    cost = search_cost(params, leaves, depth)
                    if cost > best_cost:
                        break
                    r = recall(k, leaves, depth) if (leaves, depth) != best[:2] else best[2]
                    if recall_lower_bound(r) >= target:
                        best, best_cost = (leaves, depth, r), cost  # equal cost: the later (shallower) depth
                        break
        leaves_by_k[str(k)], reorder_by_k[str(k)], r = best
        mean[str(k)], low[str(k)] = round(float(r.mean()), 4), round(recall_lower_bound(r), 4)
    return {**params, "leaves_by_k": leaves_by_k, "reorder_by_k": reorder_by_k, "target_recall": target,
            "calibration_queries": len(queries), "calibrated_recall": mean, "calibrated_recall_low": low}


def calibrate_on_users(searcher, embeddings: np.ndarray, params: dict, users: list[str],
                       embed_users: Callable[[list[str]], np.ndarray], k_max: int, cfg: IndexConfig, stage: str,
                       log: Log) -> dict:
    """:func:`calibrate_search` on the query tower's outputs for `users` (`embed_users(users)` -> [U, D]), logged
    as a step of `stage`; `params` unchanged for an exact index, `target_recall: null` or fewer than
    :data:`MIN_CALIBRATION_QUERIES` users."""
    if params.get("type") != "tree_ah" or cfg.target_recall is None:
        return params
    with step(stage, f"calibrate the search (leaves, re-ordering) to recall >= {cfg.target_recall} on "
                     f"{len(users)} users' queries", log) as s:
        # below the minimum nothing is calibrated: the users' features are not even read
        queries = (embed_users(users) if len(users) >= MIN_CALIBRATION_QUERIES
                   else np.zeros((0, embeddings.shape[1]), np.float32))
        params = calibrate_search(searcher, embeddings, queries, params, k_max, cfg.target_recall)
        s["result"] = (", ".join(f"k={k}: {v} leaves, {params['reorder_by_k'][k]} re-ordered"
                                 for k, v in params["leaves_by_k"].items())
                       if "leaves_by_k" in params else
                       f"fewer than {MIN_CALIBRATION_QUERIES} queries: {params['num_leaves_to_search']} leaves for all")
    return params


def recall_per_query(got, exact: np.ndarray, k: int) -> np.ndarray:
    """Recall@k of each query's returned rows (`got`, best first) against its exact top k (`exact`, best first)."""
    return np.array([len(set(np.asarray(g)[:k].tolist()) & set(e[:k].tolist())) / k for g, e in zip(got, exact)])


def recall_vs_brute_force(searcher, embeddings: np.ndarray, queries: np.ndarray, k: int = 10,
                          index: dict | None = None) -> float:
    """Mean recall@k of the searcher's results against exact inner-product search.

    Args:
        searcher: a ScaNN searcher over `embeddings`.
        embeddings: float32 [N, D].
        queries: float32 [Q, D] golden queries.
        k: neighbours compared.
        index: the index parameters (`build_searcher`'s): each query re-orders and searches what serving
            would for k neighbours (`cartwise.bundle.search_kwargs`); None: the searcher's defaults.
    """
    k = min(k, embeddings.shape[0])
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    got, _ = searcher.search_batched(queries, final_num_neighbors=k, **search_kwargs(index, k))
    return float(recall_per_query(got, exact_top_k(embeddings, queries, k), k).mean())
