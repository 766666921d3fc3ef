"""The shipped ScaNN index on clustered embeddings: recall against brute force, and the bundle round trip.

`build_searcher` with the default `retrieval.index` over 20k clustered 32-d
items (tree + AH, as export builds it above `brute_force_below`) must reach
recall@10 >= 0.95 against exact search; serialized as export does and loaded
with `cartwise.bundle.load_searcher`, it must return the same neighbours.
Timings are in benchmarks/bench_index.py, never asserted here.
"""
from __future__ import annotations

import numpy as np
import pytest

from cartwise import bundle as b
from cartwise.config import IndexConfig
from pipelines.build_index import build_searcher, recall_vs_brute_force

pytestmark = pytest.mark.integration

N_ITEMS, DIM, CLUSTERS, N_QUERIES = 20_000, 32, 400, 1000


def clustered(n: int, rng: np.random.Generator, centers: np.ndarray, weights: np.ndarray,
              items: bool) -> np.ndarray:
    """Gaussian mixture rows; items get log-normal norms (sigma 0.37, as our trained candidate tower)."""
    c = rng.choice(len(centers), size=n, p=weights)
    x = centers[c] + 0.3 * rng.standard_normal((n, centers.shape[1])).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if items:
        x *= rng.lognormal(0.0, 0.37, (n, 1)).astype(np.float32)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    w = rng.lognormal(0.0, 1.0, CLUSTERS)
    w /= w.sum()
    return clustered(N_ITEMS, rng, centers, w, items=True), clustered(N_QUERIES, rng, centers, w, items=False)


@pytest.fixture(scope="module")
def shipped(data):
    emb, _ = data
    return build_searcher(emb, IndexConfig(), k=100)  # k as export passes retrieval.k


def test_tree_ah_recall_at_10_vs_brute_force(data, shipped):
    emb, queries = data
    searcher, params = shipped
    assert params["type"] == "tree_ah"
    assert 1 <= params["num_leaves_to_search"] < params["num_leaves"]
    # one query at a time, as serving calls it, against matmul + argpartition brute force
    exact = [set(row.tolist()) for lo in range(0, N_QUERIES, 250)
             for row in np.argpartition(queries[lo:lo + 250] @ emb.T, -10, axis=1)[:, -10:]]
    # re-ordering what serving re-orders for 10 neighbours
    pre = b.query_reorder(params, 10)
    assert pre == 50 and params["soar_lambda"] and params["dims_per_block"] == 1  # 32-d: one dimension per block
    got = [set(np.asarray(searcher.search(q, final_num_neighbors=10, pre_reorder_num_neighbors=pre)[0]).tolist())
           for q in queries]
    assert np.mean([len(g & e) / 10 for g, e in zip(got, exact)]) >= 0.95
    # the export gate's own measure (batched; full argsort, so on a subset)
    assert recall_vs_brute_force(searcher, emb, queries[:300], k=10, index=params) >= 0.95


def test_serialized_index_loads_with_identical_neighbours(data, shipped, tmp_path):
    _, queries = data
    searcher, _ = shipped
    path = tmp_path / b.INDEX_DIR
    path.mkdir()
    searcher.serialize(str(path), relative_path=True)  # as pipelines/export.write_index
    loaded = b.load_searcher(path)
    for k in (10, 100):
        want_i, want_d = searcher.search_batched(queries, final_num_neighbors=k)
        got_i, got_d = loaded.search_batched(queries, final_num_neighbors=k)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_allclose(got_d, want_d, rtol=1e-6)
    for q in queries[:50]:
        np.testing.assert_array_equal(loaded.search(q, final_num_neighbors=10)[0],
                                      searcher.search(q, final_num_neighbors=10)[0])


class RecordingSearcher:
    """The real searcher, with the keyword arguments of every `search` call kept (what serving asked for)."""

    def __init__(self, searcher):
        self.searcher, self.calls = searcher, []

    def search(self, q, **kw):
        self.calls.append(kw)
        return self.searcher.search(q, **kw)


@pytest.mark.parametrize("manifest_kind", ["current", "before_reorder_per_neighbor"])
def test_serving_source_reorders_what_its_request_needs(data, shipped, manifest_kind):
    """The two-tower source asks the tree + AH index to re-order `reorder_depth` candidates for the
    neighbours it wants (its quota plus the excluded rows it over-fetches): 5 per neighbour for a short
    list, `reorder` for a long one, all of them past `reorder`; a bundle exported before the setting
    (no `reorder_per_neighbor` in its manifest) keeps re-ordering `reorder`. Its answer is the searcher's
    answer at that depth."""
    import datetime as dt

    from cartwise.config import TwoTowerSourceConfig
    from serving.sources import ROW, Catalog, Query, ScannSource

    emb, queries = data
    searcher, params = shipped
    index = dict(params)
    if manifest_kind == "before_reorder_per_neighbor":
        del index["reorder_per_neighbor"]
    expected = ({10: 75, 60: 200, 300: 305} if manifest_kind == "current" else {10: 200, 60: 200, 300: 305})
    ids = [f"I{i:05d}" for i in range(len(emb))]
    recording = RecordingSearcher(searcher)
    catalog = Catalog(ids, ["c"] * len(ids), ids[:10], None, None, searcher=recording, index=index)
    source = ScannSource(TwoTowerSourceConfig(type="two_tower")).bind(catalog)
    for q in queries[:10]:
        excluded = np.zeros(len(ids), bool)
        excluded[:5] = True
        query = Query(None, q, None, np.zeros(0, np.int64), np.zeros(0, np.int64), -1, excluded, 5,
                      dt.datetime.now(dt.timezone.utc))
        for n in (10, 60, 300):
            recording.calls.clear()
            got = source.retrieve(query, n).column(ROW)
            (call,) = recording.calls
            assert call == {"final_num_neighbors": n + 5, "pre_reorder_num_neighbors": expected[n]}
            want, _ = searcher.search(q, final_num_neighbors=n + 5, pre_reorder_num_neighbors=expected[n])
            assert got.tolist() == [r for r in np.asarray(want).tolist() if r >= 5][:n]
