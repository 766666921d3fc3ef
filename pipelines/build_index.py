"""Build the ScaNN index over item embeddings and check it against brute force.

Where it sits: train_retrieval (candidate tower) -> item embeddings ->
**build_index** -> evaluate (index over the catalog at the cut-off) and
export (index over the whole catalog, serialized into the bundle).
"""
from __future__ import annotations

import math

import numpy as np
from scann.scann_ops.py import scann_ops_pybind

from cartwise.bundle import reorder_kwargs
from cartwise.config import IndexConfig


def build_searcher(embeddings: np.ndarray, cfg: IndexConfig, k: int = 10):
    """A ScaNN pybind searcher for maximum inner product.

    Below `cfg.brute_force_below` items the search is exact; above, a tree
    (about sqrt(n) leaves; with `cfg.soar_lambda` each item is also filed in
    a second leaf, SOAR: Sun et al., NeurIPS 2023), asymmetric hashing
    (`dims_per_block`, default :func:`default_dims_per_block`) and exact
    re-ordering. Unless configured, a query searches
    `default_leaves_to_search(leaves)` leaves. Every caller passes
    `**cartwise.bundle.reorder_kwargs(params, k)`
    per query (serving's two-tower source, evaluation, the export's recall
    gate and the bundle's golden replay, the benchmark); the searcher's own
    default is `cfg.reorder`.

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


def recall_vs_brute_force(searcher, embeddings: np.ndarray, queries: np.ndarray, k: int = 10,
                          index: dict | None = None) -> float:
    """Mean recall@k of the searcher's results against exact inner-product search.

    Args:
        searcher: a ScaNN searcher over `embeddings`.
        embeddings: float32 [N, D].
        queries: float32 [Q, D] golden queries.
        k: neighbours compared.
        index: the index parameters (`build_searcher`'s): each query re-orders what serving re-orders
            for k neighbours (`cartwise.bundle.reorder_kwargs`); None: the searcher's default.
    """
    k = min(k, embeddings.shape[0])
    got, _ = searcher.search_batched(np.ascontiguousarray(queries, dtype=np.float32), final_num_neighbors=k,
                                     **reorder_kwargs(index, k))
    exact = np.argsort(-(queries @ embeddings.T), axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(got, exact)]))
