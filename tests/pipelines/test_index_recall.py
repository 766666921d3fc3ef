"""The shipped ScaNN index on clustered embeddings: recall against brute force, and the bundle round trip.

`build_searcher` with the default `retrieval.index` over 20k clustered 32-d
items (tree + AH, as export builds it above `brute_force_below`), its search
(leaves, re-ordering depth) calibrated on other queries as export calibrates
it, must reach
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
from pipelines.build_index import (MIN_CALIBRATION_QUERIES, build_searcher, calibrate_search, calibration_ks,
                                   leaves_ladder, recall_lower_bound, recall_per_query, recall_vs_brute_force,
                                   reorder_ladder, search_cost)

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
    """The index as export ships it: built, then its search (leaves, re-ordering depth) calibrated to
    `target_recall`."""
    emb, _, calibration = data
    searcher, params = uncalibrated
    return searcher, calibrate_search(searcher, emb, calibration, params, K_SERVE, IndexConfig().target_recall)


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
    assert kw == {"pre_reorder_num_neighbors": params["reorder_by_k"]["10"],
                  "leaves_to_search": params["leaves_by_k"]["10"]}
    assert reorder_ladder(params, 10) == [20, 30, 50]
    assert kw["pre_reorder_num_neighbors"] in reorder_ladder(params, 10)
    assert kw["leaves_to_search"] < params["num_leaves_to_search"]
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


@pytest.mark.parametrize("manifest_kind", ["current", "before_reorder_calibration", "before_calibration",
                                           "before_reorder_per_neighbor"])
def test_serving_source_searches_what_its_request_needs(data, shipped, manifest_kind):
    """The two-tower source asks the tree + AH index for the neighbours it wants (its quota plus the excluded
    rows it over-fetches) with the search a query of that length needs: the calibrated leaves and re-ordering
    depth of the next calibrated count (never fewer candidates than neighbours); past the largest, the
    searcher's most leaves and `reorder_depth` candidates (all of them past `reorder`). A bundle exported before
    depths were calibrated re-orders `reorder_depth` (5 per neighbour for a short list, `reorder` for a long
    one) with the calibrated leaves; one exported before calibration searches the most leaves; one exported
    before `reorder_per_neighbor` also keeps re-ordering `reorder`. Its answer is the searcher's answer to that
    call."""
    import datetime as dt

    from cartwise.config import TwoTowerSourceConfig
    from serving.sources import ROW, Catalog, Query, ScannSource

    emb, queries, _ = data
    searcher, params = shipped
    index = dict(params)
    assert calibration_ks(K_SERVE) == [10, 20, 40, 80, 100] and list(index["leaves_by_k"]) == ["10", "20", "40", "80",
                                                                                                 "100"]
    assert list(index["reorder_by_k"]) == list(index["leaves_by_k"])
    calibration = ("leaves_by_k", "reorder_by_k", "target_recall", "calibration_queries", "calibrated_recall",
                   "calibrated_recall_low")
    del_keys = {"current": (), "before_reorder_calibration": ("reorder_by_k",), "before_calibration": calibration,
                "before_reorder_per_neighbor": calibration + ("reorder_per_neighbor",)}[manifest_kind]
    for key in del_keys:
        del index[key]
    # n + 5 neighbours are asked for: 15 -> the calibration at 20, 65 -> at 80, 305 -> past 100: the most leaves
    if manifest_kind == "current":
        reorder = {10: max(15, params["reorder_by_k"]["20"]), 60: max(65, params["reorder_by_k"]["80"]), 300: 305}
    elif manifest_kind == "before_reorder_per_neighbor":
        reorder = {10: 200, 60: 200, 300: 305}
    else:
        reorder = {10: 75, 60: 200, 300: 305}
    leaves = ({10: params["leaves_by_k"]["20"], 60: params["leaves_by_k"]["80"], 300: None}
              if manifest_kind in ("current", "before_reorder_calibration") else {10: None, 60: None, 300: None})
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


def cheapest_reaching(searcher, calibration: np.ndarray, truth: np.ndarray, plain: dict, k: int,
                      target: float, shallower: tuple[int, ...] | None = None) -> tuple[int, int]:
    """The oracle of `calibrate_search` for k neighbours, from every ladder setting: (leaves, depth)."""
    import pipelines.build_index as bi

    shallower = bi.SHALLOWER_PER_NEIGHBOR if shallower is None else shallower
    ladder, depths = leaves_ladder(plain["num_leaves_to_search"]), reorder_ladder(plain, k, shallower)

    def low(leaves, depth):
        got, _ = searcher.search_batched(calibration, final_num_neighbors=k, leaves_to_search=leaves,
                                         pre_reorder_num_neighbors=depth)
        return recall_lower_bound(recall_per_query(got, truth, k))

    if low(ladder[-1], depths[-1]) < target:  # the configured search falls short: kept
        return ladder[-1], depths[-1]
    # every depth's fewest leaves that reach it, the cheapest of them (a tie: the shallower)
    reached = [(search_cost(plain, lv, d), d, lv) for d in depths
               for lv in [next((lv for lv in ladder if low(lv, d) >= target), None)] if lv is not None]
    _, d, lv = min(reached)
    return lv, d


@pytest.mark.parametrize("target, reorder_cost", [(None, None), (0.98, None), (0.98, 0.0), (0.98, 1e6),
                                                  (0.95, "leaves_only")])
def test_calibration_keeps_the_cheapest_search_that_reaches_the_target(data, uncalibrated, shipped, target,
                                                                       reorder_cost, monkeypatch):
    """Calibrated on its own queries, each list length gets, of the re-ordering depths tried (the configured
    one and 2 or 3 per neighbour), the setting of least `search_cost` among each depth's fewest leaves that
    reached the target recall with two standard errors to spare (checked against every ladder setting), and
    the configured search where that falls short. At the shipped target, and at 0.98 (where a shallower depth
    needs more leaves) with the shipped cost of a re-ordered candidate and with costs where only leaves (0) or
    only candidates (1e6) count; and with no shallower depth tried (`leaves_only`: the leaves alone, at the
    configured depth)."""
    import pipelines.build_index as bi

    emb, _, calibration = data
    searcher, plain = uncalibrated
    most = plain["num_leaves_to_search"]
    if target is None:
        _, params = shipped
        target = IndexConfig().target_recall
    elif reorder_cost == "leaves_only":
        params = calibrate_search(searcher, emb, calibration, plain, K_SERVE, target, shallower=())
    else:
        if reorder_cost is not None:
            monkeypatch.setattr(bi, "REORDER_COST_IN_HASHED_POINTS", reorder_cost)
        params = calibrate_search(searcher, emb, calibration, plain, K_SERVE, target)
    shallower = () if reorder_cost == "leaves_only" else bi.SHALLOWER_PER_NEIGHBOR
    truth = exact_top_k(emb, calibration, K_SERVE)
    for k in calibration_ks(K_SERVE):
        depths = reorder_ladder(plain, k, shallower)
        assert depths[-1] == b.reorder_depth(k, plain["reorder"], plain["reorder_per_neighbor"])
        want = cheapest_reaching(searcher, calibration, truth, plain, k, target, shallower)
        assert (params["leaves_by_k"][str(k)], params["reorder_by_k"][str(k)]) == want, k
        assert params["calibrated_recall_low"][str(k)] >= target or want == (most, depths[-1])


def test_calibration_lowers_the_search_of_a_short_list_and_holds_the_target_on_other_queries(
        data, uncalibrated, shipped):
    """The short list's search is cut below the configured one; the target still holds on the other (measured)
    queries; one ladder step fewer leaves falls short; a count the configured search cannot bring to the target
    keeps it."""
    emb, queries, calibration = data
    searcher, plain = uncalibrated
    _, params = shipped
    target, most = params["target_recall"], plain["num_leaves_to_search"]
    assert target == IndexConfig().target_recall and params["calibration_queries"] == N_CALIBRATION
    ladder = leaves_ladder(most)
    # the short list's search is cut (fewer leaves or fewer candidates than configured)
    assert (params["leaves_by_k"]["10"], params["reorder_by_k"]["10"]) != (most, 50)
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
    # the fewest at its depth: one ladder step fewer leaves falls short on the calibration queries themselves
    leaves_10 = params["leaves_by_k"]["10"]
    assert leaves_10 > ladder[0]
    fewer = ladder[ladder.index(leaves_10) - 1]
    got, _ = searcher.search_batched(calibration, final_num_neighbors=10, leaves_to_search=fewer,
                                     pre_reorder_num_neighbors=b.query_reorder(params, 10))
    r = np.array([len(set(g.tolist()) & set(t.tolist())) / 10 for g, t in zip(got, exact_top_k(emb, calibration, 10))])
    assert r.mean() - 2 * r.std(ddof=1) / np.sqrt(len(r)) < target
    # a target the index cannot reach within the most leaves: every count keeps the most
    unreachable = calibrate_search(searcher, emb, calibration, plain, K_SERVE, 1.0)
    assert set(unreachable["leaves_by_k"].values()) == {most}
    assert unreachable["reorder_by_k"] == {str(k): b.query_reorder(plain, k) for k in calibration_ks(K_SERVE)}
    # no target, or no queries: the parameters as built (every query searches the most leaves)
    assert calibrate_search(searcher, emb, calibration, plain, K_SERVE, None) == plain
    assert calibrate_search(searcher, emb, calibration[:0], plain, K_SERVE, target) == plain
    assert calibrate_search(searcher, emb, calibration[:MIN_CALIBRATION_QUERIES - 1], plain, K_SERVE, target) == plain
    # a searcher that may search one leaf: nothing to lower, every count gets it
    one = calibrate_search(searcher, emb, calibration, {**plain, "num_leaves_to_search": 1}, K_SERVE, target)
    assert set(one["leaves_by_k"].values()) == {1}


def test_export_refusal_names_the_setting_that_helps():
    """An index below `min_recall` on the golden queries: where calibration cut the search (fewer leaves or fewer
    re-ordered candidates than configured) the refusal asks for a higher `target_recall`, else for more leaves or
    candidates; it names the search the golden queries ran."""
    from pipelines.export import refusal

    built = {"type": "tree_ah", "items": 20_000, "num_leaves": 141, "num_leaves_to_search": 36, "reorder": 200,
             "reorder_per_neighbor": 5}
    cut_depth = {**built, "leaves_by_k": {"10": 36}, "reorder_by_k": {"10": 20}}
    cut_leaves = {**built, "leaves_by_k": {"10": 9}, "reorder_by_k": {"10": 50}}
    for params in (cut_depth, cut_leaves):
        text = refusal(0.8, 0.9, params)
        assert "raise retrieval.index.target_recall" in text, text
        assert (f"{params['leaves_by_k']['10']} of at most 36 leaves and {params['reorder_by_k']['10']} of 50 "
                "re-ordered") in text, text
    for params in (built, {**built, "leaves_by_k": {"10": 36}, "reorder_by_k": {"10": 50}}):
        text = refusal(0.8, 0.9, params)
        assert "raise retrieval.index.num_leaves_to_search or reorder_per_neighbor" in text, text
        assert "searching 36 leaves and re-ordering 50 candidates" in text, text
