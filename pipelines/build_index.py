"""Build the ScaNN index over item embeddings and check it against brute force.

Where it sits: train_retrieval (candidate tower) -> item embeddings ->
**build_index** -> evaluate (index over the catalog at the cut-off) and
export (index over the whole catalog, serialized into the bundle).
"""
from __future__ import annotations

import math

import numpy as np
from scann.scann_ops.py import scann_ops_pybind

from cartwise.bundle import search_kwargs
from cartwise.config import IndexConfig


def build_searcher(embeddings: np.ndarray, cfg: IndexConfig, k: int = 10):
    """A ScaNN pybind searcher for maximum inner product.

    Below `cfg.brute_force_below` items the search is exact; above, a tree
    (about sqrt(n) leaves; with `cfg.soar_lambda` each item is also filed in
    a second leaf, SOAR: Sun et al., NeurIPS 2023), asymmetric hashing
    (`dims_per_block`, default :func:`default_dims_per_block`) and exact
    re-ordering. Unless configured, a query searches at most
    `default_leaves_to_search(leaves)` leaves; :func:`calibrate_leaves` then
    lowers that per number of neighbours asked for. Every caller passes
    `**cartwise.bundle.search_kwargs(params, k)` per query (serving's
    two-tower source, evaluation, the export's recall gate and the bundle's
    golden replay, the benchmarks); the searcher's own defaults are
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
    / 0.78-0.84 at 8 (sqrt(leaves)). Export refuses an index whose recall on
    its golden queries (real users' queries) is below `min_recall`: raise
    `num_leaves_to_search` then.
    """
    return max(1, min(leaves, round(3 * math.sqrt(leaves)), MAX_DEFAULT_LEAVES_TO_SEARCH))


def calibration_ks(k_max: int, first: int = 10) -> list[int]:
    """Neighbour counts the search is calibrated at: 10, doubling, up to and including `k_max`.

    A query for k neighbours uses the calibration of the smallest count >= k
    (`cartwise.bundle.query_leaves`), so it searches at most twice the leaves a list of its own length needed.
    """
    ks, k = [], first
    while k < k_max:
        ks.append(k)
        k *= 2
    return ks + [k_max]


def leaves_ladder(most: int) -> list[int]:
    """Leaves counts tried by :func:`calibrate_leaves`: steps of about 25% from 1 up to `most`."""
    return sorted({min(most, max(1, round(1.25 ** i))) for i in range(64) if 1.25 ** i < most * 1.25} | {most})


#: standard errors of the calibration queries' mean recall a setting keeps above the target
CALIBRATION_STANDARD_ERRORS = 2.0


def calibrate_leaves(searcher, embeddings: np.ndarray, queries: np.ndarray, params: dict, k_max: int,
                     target: float | None) -> dict:
    """The fewest leaves a query for k neighbours must search to reach `target` recall@k, per k.

    Where it sits: after :func:`build_searcher` in export (queries: the query tower's outputs for the most
    active buyers after the golden ones, so the export's recall gate stays an independent check) and in
    evaluation (training users who are not test users); the benchmarks pass queries drawn apart from the
    ones they time.

    For every k of :func:`calibration_ks` (`k_max`: the most neighbours the caller asks for), at the
    re-ordering depth a query for k uses (`cartwise.bundle.query_reorder`), the leaves of
    :func:`leaves_ladder` are tried from the previous k's choice upwards; the first whose mean recall@k
    against exact inner-product search, less :data:`CALIBRATION_STANDARD_ERRORS` standard errors, reaches
    `target` is kept. A k that does not reach it within `params["num_leaves_to_search"]` (the configured or
    default most) keeps that most, so calibration only ever lowers the work of a query: it does not buy
    recall the configured index does not have.

    Args:
        searcher: the tree + AH searcher over `embeddings`.
        embeddings: float32 [N, D].
        queries: float32 [Q, D] calibration queries (none: no calibration).
        params: the index parameters of :func:`build_searcher`.
        k_max: largest neighbour count calibrated.
        target: recall@k to reach; None: no calibration.

    Returns:
        `params` plus `leaves_by_k` ({str(k): leaves}), `target_recall`, `calibration_queries` and
        `calibrated_recall` ({str(k): mean recall@k at the chosen leaves}); `params` unchanged for an exact
        index, no queries or no target.
    """
    from cartwise.bundle import query_reorder

    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, embeddings.shape[1])
    if params.get("type") != "tree_ah" or target is None or len(queries) == 0:
        return params
    n = embeddings.shape[0]
    ks = calibration_ks(min(k_max, n))
    exact = exact_top_k(embeddings, queries, ks[-1])
    ladder = leaves_ladder(params["num_leaves_to_search"])
    leaves_by_k, recall_by_k, start = {}, {}, 0
    for k in ks:
        truth = [set(row[:k].tolist()) for row in exact]
        for pos in range(start, len(ladder)):
            got, _ = searcher.search_batched(queries, final_num_neighbors=k, leaves_to_search=ladder[pos],
                                             pre_reorder_num_neighbors=query_reorder(params, k))
            r = np.array([len(t & set(np.asarray(g).tolist())) / k for g, t in zip(got, truth)])
            low = r.mean() - CALIBRATION_STANDARD_ERRORS * (r.std(ddof=1) if len(r) > 1 else 0.0) / np.sqrt(len(r))
            if low >= target or pos == len(ladder) - 1:
                break
        start = pos
        leaves_by_k[str(k)], recall_by_k[str(k)] = ladder[pos], round(float(r.mean()), 4)
    return {**params, "leaves_by_k": leaves_by_k, "target_recall": target, "calibration_queries": len(queries),
            "calibrated_recall": recall_by_k}


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int, budget: int = 1 << 25) -> np.ndarray:
    """Exact inner-product top-k rows per query, best first (ties by row): matmul in blocks of queries
    (about `budget` scores at a time) + argpartition."""
    n = embeddings.shape[0]
    k = min(k, n)
    block = max(1, budget // max(n, 1))
    out = np.empty((len(queries), k), np.int64)
    for lo in range(0, len(queries), block):
        s = queries[lo:lo + block] @ embeddings.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(s), 1))
        order = np.lexsort((top, -np.take_along_axis(s, top, axis=1)), axis=1)
        out[lo:lo + block] = np.take_along_axis(top, order, axis=1)
    return out


def recall_vs_brute_force(searcher, embeddings: np.ndarray, queries: np.ndarray, k: int = 10,
                          index: dict | None = None) -> float:
    """Mean recall@k of the searcher's results against exact inner-product search.

    Args:
        searcher: a ScaNN searcher over `embeddings`.
        embeddings: float32 [N, D].
        queries: float32 [Q, D] golden queries.
        k: neighbours compared.
        index: the index parameters (`build_searcher`'s): each query re-orders what serving re-orders
            for k neighbours (`cartwise.bundle.search_kwargs`); None: the searcher's default.
    """
    k = min(k, embeddings.shape[0])
    got, _ = searcher.search_batched(np.ascontiguousarray(queries, dtype=np.float32), final_num_neighbors=k,
                                     **search_kwargs(index, k))
    exact = exact_top_k(embeddings, np.asarray(queries, dtype=np.float32), k)
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(got, exact)]))
