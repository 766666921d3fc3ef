"""The shipped ScaNN index on clustered embeddings: recall against brute force, and the bundle round trip.

`build_searcher` with the default `retrieval.index` over 20k clustered 32-d
items (tree + AH, as export builds it above `brute_force_below`), its leaves
searched calibrated on other queries as export calibrates them, must reach
recall@10 >= 0.95 against exact search on the timed queries; serialized as
export does and loaded with `cartwise.bundle.load_searcher`, it must return
the same neighbours.
Timings are in benchmarks/bench_index.py, never asserted here.
"""
from __future__ import annotations

import numpy as np
import pytest

from cartwise import bundle as b
from cartwise.config import IndexConfig
from cartwise.bundle import exact_top_k
from pipelines.build_index import (MIN_CALIBRATION_QUERIES, build_searcher, calibrate_leaves, calibration_ks,
                                   leaves_ladder, recall_vs_brute_force)

pytestmark = pytest.mark.integration

N_ITEMS, DIM, CLUSTERS, N_QUERIES, N_CALIBRATION = 20_000, 32, 400, 1000, 200
K_SERVE = 100  # as export passes retrieval.k


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
    """Items, the measured queries and the calibration queries (apart from the measured ones, as export
    calibrates on other users than its golden ones), all from one mixture."""
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    w = rng.lognormal(0.0, 1.0, CLUSTERS)
    w /= w.sum()
    return (clustered(N_ITEMS, rng, centers, w, items=True), clustered(N_QUERIES, rng, centers, w, items=False),
            clustered(N_CALIBRATION, rng, centers, w, items=False))


@pytest.fixture(scope="module")
def uncalibrated(data):
    emb, _, _ = data
    return build_searcher(emb, IndexConfig(), k=K_SERVE)


@pytest.fixture(scope="module")
def shipped(data, uncalibrated):
    """The index as export ships it: built, then its leaves searched calibrated to `target_recall`."""
    emb, _, calibration = data
    searcher, params = uncalibrated
    return searcher, calibrate_leaves(searcher, emb, calibration, params, K_SERVE, IndexConfig().target_recall)


def test_tree_ah_recall_at_10_vs_brute_force(data, shipped):
    emb, queries, _ = data
    searcher, params = shipped
    assert params["type"] == "tree_ah"
    assert 1 <= params["num_leaves_to_search"] < params["num_leaves"]
    # one query at a time, as serving calls it, against matmul + argpartition brute force
    exact = [set(row.tolist()) for lo in range(0, N_QUERIES, 250)
             for row in np.argpartition(queries[lo:lo + 250] @ emb.T, -10, axis=1)[:, -10:]]
    # re-ordering and searching what serving would for 10 neighbours
    kw = b.search_kwargs(params, 10)
    assert kw["pre_reorder_num_neighbors"] == 50 and kw["leaves_to_search"] < params["num_leaves_to_search"]
    assert params["soar_lambda"] and params["dims_per_block"] == 1  # 32-d: one dimension per block
    got = [set(np.asarray(searcher.search(q, final_num_neighbors=10, **kw)[0]).tolist()) for q in queries]
    assert np.mean([len(g & e) / 10 for g, e in zip(got, exact)]) >= 0.95
    # the export gate's own measure (batched, on a subset)
    assert recall_vs_brute_force(searcher, emb, queries[:300], k=10, index=params) >= 0.95


def test_serialized_index_loads_with_identical_neighbours(data, shipped, tmp_path):
    _, queries, _ = data
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


@pytest.mark.parametrize("manifest_kind", ["current", "before_calibration", "before_reorder_per_neighbor"])
def test_serving_source_searches_what_its_request_needs(data, shipped, manifest_kind):
    """The two-tower source asks the tree + AH index for the neighbours it wants (its quota plus the excluded
    rows it over-fetches) with the search a query of that length needs: `reorder_depth` candidates re-ordered
    (5 per neighbour for a short list, `reorder` for a long one, all of them past `reorder`) and the calibrated
    leaves of the next calibrated count (none past the largest: the searcher's most). A bundle exported before
    calibration searches the most leaves; one exported before `reorder_per_neighbor` also keeps re-ordering
    `reorder`. Its answer is the searcher's answer to that call."""
    import datetime as dt

    from cartwise.config import TwoTowerSourceConfig
    from serving.sources import ROW, Catalog, Query, ScannSource

    emb, queries, _ = data
    searcher, params = shipped
    index = dict(params)
    assert calibration_ks(K_SERVE) == [10, 20, 40, 80, 100] and list(index["leaves_by_k"]) == ["10", "20", "40", "80",
                                                                                                 "100"]
    if manifest_kind != "current":
        for key in ("leaves_by_k", "target_recall", "calibration_queries", "calibrated_recall",
                    "calibrated_recall_low"):
            del index[key]
    if manifest_kind == "before_reorder_per_neighbor":
        del index["reorder_per_neighbor"]
    # n + 5 neighbours are asked for: 15 -> the calibration at 20, 65 -> at 80, 305 -> past 100: the most leaves
    reorder = {10: 75, 60: 200, 300: 305} if manifest_kind != "before_reorder_per_neighbor" else {10: 200, 60: 200,
                                                                                                  300: 305}
    leaves = ({10: params["leaves_by_k"]["20"], 60: params["leaves_by_k"]["80"], 300: None}
              if manifest_kind == "current" else {10: None, 60: None, 300: None})
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
            want_call = {"final_num_neighbors": n + 5, "pre_reorder_num_neighbors": reorder[n],
                         **({"leaves_to_search": leaves[n]} if leaves[n] else {})}
            assert call == want_call
            want, _ = searcher.search(q, **want_call)
            assert got.tolist() == [r for r in np.asarray(want).tolist() if r >= 5][:n]


def test_calibration_lowers_the_leaves_a_short_list_searches_and_holds_the_target_on_other_queries(
        data, uncalibrated, shipped):
    """Calibrated on its own queries, the search of a short list is cut to the fewest leaves that reached
    `target_recall` (with two standard errors to spare), never more than the configured most; a longer list
    never searches fewer leaves than a shorter one; the target still holds on the other (measured) queries;
    and a count the most leaves cannot bring to the target keeps the most."""
    emb, queries, calibration = data
    searcher, plain = uncalibrated
    _, params = shipped
    target, most = params["target_recall"], plain["num_leaves_to_search"]
    assert target == IndexConfig().target_recall and params["calibration_queries"] == N_CALIBRATION
    leaves = [params["leaves_by_k"][str(k)] for k in calibration_ks(K_SERVE)]
    assert leaves == sorted(leaves) and set(leaves) <= set(leaves_ladder(most))
    assert leaves[0] < most  # the short list is cut ...
    for k, n_leaves in params["leaves_by_k"].items():  # ... only where the target was reached
        assert params["calibrated_recall_low"][k] >= target or n_leaves == most
        assert params["calibrated_recall_low"][k] <= params["calibrated_recall"][k]
    exact = exact_top_k(emb, queries, 10)
    # the chosen leaves, searched again on the calibration queries: mean less two standard errors >= target
    got, _ = searcher.search_batched(calibration, final_num_neighbors=10, **b.search_kwargs(params, 10))
    r = np.array([len(set(g.tolist()) & set(t.tolist())) / 10 for g, t in zip(got, exact_top_k(emb, calibration, 10))])
    assert r.mean() - 2 * r.std(ddof=1) / np.sqrt(len(r)) >= target
    for k in (10, 20):
        kw = b.search_kwargs(params, k)
        got, _ = searcher.search_batched(queries, final_num_neighbors=k, **kw)
        truth = exact_top_k(emb, queries, k) if k != 10 else exact
        measured = np.mean([len(set(g.tolist()) & set(t.tolist())) / k for g, t in zip(got, truth)])
        assert measured >= target - 0.01, (k, kw, measured)
    # the fewest: one ladder step fewer leaves falls short on the calibration queries themselves
    ladder = leaves_ladder(most)
    assert leaves[0] > ladder[0]
    fewer = ladder[ladder.index(leaves[0]) - 1]
    got, _ = searcher.search_batched(calibration, final_num_neighbors=10, leaves_to_search=fewer,
                                     pre_reorder_num_neighbors=b.query_reorder(params, 10))
    r = np.array([len(set(g.tolist()) & set(t.tolist())) / 10 for g, t in zip(got, exact_top_k(emb, calibration, 10))])
    assert r.mean() - 2 * r.std(ddof=1) / np.sqrt(len(r)) < target
    # a target the index cannot reach within the most leaves: every count keeps the most
    unreachable = calibrate_leaves(searcher, emb, calibration, plain, K_SERVE, 1.0)
    assert set(unreachable["leaves_by_k"].values()) == {most}
    # no target, or no queries: the parameters as built (every query searches the most leaves)
    assert calibrate_leaves(searcher, emb, calibration, plain, K_SERVE, None) == plain
    assert calibrate_leaves(searcher, emb, calibration[:0], plain, K_SERVE, target) == plain
    assert calibrate_leaves(searcher, emb, calibration[:MIN_CALIBRATION_QUERIES - 1], plain, K_SERVE, target) == plain
    # a searcher that may search one leaf: nothing to lower, every count gets it
    one = calibrate_leaves(searcher, emb, calibration, {**plain, "num_leaves_to_search": 1}, K_SERVE, target)
    assert set(one["leaves_by_k"].values()) == {1}
