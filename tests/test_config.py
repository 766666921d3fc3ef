"""cartwise.yaml parsing: defaults, the shipped example, and errors that name file, key path and reason."""
from pathlib import Path

import pytest

from cartwise.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_documented_objective():
    cfg = parse_config({})
    assert cfg.objective.label == "purchase"
    assert cfg.objective.event_weights["purchase"] == 1.0
    assert cfg.objective.event_weights["click"] < cfg.objective.event_weights["add_to_cart"] < 1.0
    assert cfg.objective.recency.window_days == 7 and 3.0 <= cfg.objective.recency.multiplier <= 5.0


def test_shipped_example_parses_and_resolves_paths():
    cfg = load_config(ROOT / "cartwise.yaml")
    assert cfg.data.adapter == "online_retail"
    assert cfg.resolve(cfg.data.paths[0]).is_file()
    assert cfg.work_dir == ROOT / "build"
    assert cfg.evaluation.k == [10, 50]


def test_unknown_key_names_file_and_key_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("objective:\n  recency:\n    windw_days: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "objective.recency.windw_days" in str(e.value) and "unknown key" in str(e.value)


@pytest.mark.parametrize("doc, path, reason", [
    ({"model": {"epochs": 0}}, "model.epochs", "greater than or equal to 1"),
    ({"objective": {"event_weights": {"like": 1.0}}}, "objective.event_weights", "unknown event type 'like'"),
    ({"data": {"adapter": "csv"}}, "data.adapter", "online_retail"),
    ({"evaluation": {"split_date": "2011-09-31"}}, "evaluation.split_date", "date"),
    ({"evaluation": {"k": [10, 0]}}, "evaluation.k", "positive"),
    ({"evaluation": {"split_date": "2011-07-31", "test_end": "2011-07-01"}}, "evaluation", "test_end"),
])
def test_bad_values_name_the_key_and_reason(doc, path, reason):
    with pytest.raises(ConfigError) as e:
        parse_config(doc, source="x.yaml")
    msg = str(e.value)
    assert msg.startswith("x.yaml: ") and path in msg and reason in msg


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config([1, 2], source="y.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    # a key twice: YAML's safe loader kept the last silently (a second `data:` replaced the first)
    twice = tmp_path / "twice.yaml"
    twice.write_text("data:\n  adapter: online_retail\nmodel: {epochs: 2}\ndata:\n  adapter: canonical\n")
    with pytest.raises(ConfigError, match=r"(?s)twice.yaml: not valid YAML: key 'data' appears twice.*line 4"):
        load_config(twice)
    nested = tmp_path / "nested.yaml"
    nested.write_text("model: {epochs: 2, epochs: 3}\n")
    with pytest.raises(ConfigError, match="key 'epochs' appears twice"):
        load_config(nested)


def test_reorder_depth_scales_with_the_neighbours_asked_for():
    from cartwise.bundle import reorder_depth

    assert [reorder_depth(k, 200, 5) for k in (1, 10, 40, 60, 200, 300)] == [5, 50, 200, 200, 200, 300]
    # 0 or None (bundles exported before the setting): always the configured depth, never fewer than k
    assert [reorder_depth(k, 200, p) for k in (10, 300) for p in (0, None)] == [200, 200, 300, 300]


def test_search_kwargs_take_the_calibrated_leaves_of_the_next_calibrated_count():
    from cartwise.bundle import query_leaves, query_reorder, search_kwargs

    index = {"type": "tree_ah", "reorder": 200, "reorder_per_neighbor": 5, "num_leaves_to_search": 50,
             "leaves_by_k": {"10": 15, "20": 28, "200": 50}}
    assert [query_leaves(index, k) for k in (1, 10, 11, 20, 21, 200, 201)] == [15, 15, 28, 28, 50, 50, None]
    assert search_kwargs(index, 10) == {"pre_reorder_num_neighbors": 50, "leaves_to_search": 15}
    # past the largest calibrated count the searcher's own (the most) leaves are searched
    assert search_kwargs(index, 300) == {"pre_reorder_num_neighbors": 300}
    # an uncalibrated index (target_recall: null, or a bundle exported before calibration) and an exact one
    uncalibrated = {k: v for k, v in index.items() if k != "leaves_by_k"}
    assert search_kwargs(uncalibrated, 10) == {"pre_reorder_num_neighbors": 50}
    # depths calibrated with the leaves: read from the same count, never fewer candidates than neighbours
    index["reorder_by_k"] = {"10": 20, "20": 60, "200": 200}
    assert [search_kwargs(index, k) for k in (5, 15, 150, 300)] == [
        {"pre_reorder_num_neighbors": 20, "leaves_to_search": 15},
        {"pre_reorder_num_neighbors": 60, "leaves_to_search": 28},
        {"pre_reorder_num_neighbors": 200, "leaves_to_search": 50},
        {"pre_reorder_num_neighbors": 300}]
    assert query_reorder({**index, "reorder_by_k": {"10": 20, "20": 20, "200": 200}}, 15) == 20
    assert query_reorder({**index, "reorder_by_k": {"10": 20, "20": 10, "200": 200}}, 15) == 15
    # leaves and depth are read at one calibrated count: a depth missing there is the configured one, never
    # another count's
    partial = {**index, "reorder_by_k": {"20": 60}}
    assert search_kwargs(partial, 10) == {"pre_reorder_num_neighbors": 50, "leaves_to_search": 15}
    assert search_kwargs(partial, 20) == {"pre_reorder_num_neighbors": 60, "leaves_to_search": 28}
    assert search_kwargs({"type": "brute_force", "items": 100}, 10) == {}
    assert search_kwargs(None, 10) == {}


def test_search_cost_counts_hashed_points_and_re_ordered_candidates():
    from pipelines.build_index import REORDER_COST_IN_HASHED_POINTS, reorder_ladder, search_cost

    assert REORDER_COST_IN_HASHED_POINTS == 150
    soar = {"type": "tree_ah", "items": 20_000, "num_leaves": 141, "soar_lambda": 1.5, "reorder": 200,
            "reorder_per_neighbor": 5}
    # SOAR files every item in two leaves: 2 x 20,000 / 141 hashed points per leaf searched
    assert search_cost(soar, 10, 50) == pytest.approx(10 * 40_000 / 141 + 50 * 150)
    assert search_cost({**soar, "soar_lambda": None}, 10, 50) == pytest.approx(10 * 20_000 / 141 + 50 * 150)
    # depths tried: 2, 3 and reorder_per_neighbor per neighbour, capped by reorder and never fewer than k
    assert reorder_ladder(soar, 10) == [20, 30, 50] and reorder_ladder(soar, 80) == [160, 200]
    assert reorder_ladder(soar, 300) == [300] and reorder_ladder(soar, 10, shallower=()) == [50]
    # reorder_per_neighbor 0: always `reorder`, nothing shallower tried
    assert reorder_ladder({**soar, "reorder_per_neighbor": 0}, 10) == [200]


def test_index_calibration_settings_are_validated():
    from cartwise.config import IndexConfig

    assert IndexConfig().target_recall == 0.95 and IndexConfig(target_recall=None).target_recall is None
    for bad in ({"target_recall": 0}, {"target_recall": 1.5}, {"calibration_queries": 5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            IndexConfig(**bad)


def test_exact_top_k_is_best_first_with_ties_to_the_lower_row_in_any_block_size():
    import numpy as np

    from cartwise.bundle import exact_top_k

    rng = np.random.default_rng(3)
    emb = rng.standard_normal((500, 4)).astype(np.float32)
    emb[7] *= 10
    emb[100:110] = emb[7]  # ten copies of row 7, the longest rows: ties at the top for the query along row 7
    queries = np.vstack([emb[7:8], rng.standard_normal((40, 4)).astype(np.float32)])
    scores = queries @ emb.T
    for budget in (500, 1 << 25):  # one query per block, all in one
        for k in (1, 5, 10, 499, 500, 600):
            got = exact_top_k(emb, queries, k, budget=budget)
            assert got.shape == (41, min(k, 500))
            np.testing.assert_array_equal(got, np.argsort(-scores, axis=1, kind="stable")[:, :k])
    assert exact_top_k(emb, queries, 3)[0].tolist() == [7, 100, 101]  # the copies of row 7 best, lowest rows first


def test_calibration_counts_double_up_to_the_largest_asked_for():
    from pipelines.build_index import calibration_ks, leaves_ladder

    assert calibration_ks(200) == [10, 20, 40, 80, 160, 200]
    assert calibration_ks(160) == [10, 20, 40, 80, 160] and calibration_ks(10) == [10] and calibration_ks(3) == [3]
    assert leaves_ladder(1) == [1] and leaves_ladder(50)[-1] == 50 and leaves_ladder(50)[:4] == [1, 2, 3, 4]
    ladder = leaves_ladder(1000)
    assert all(b / a <= 2 for a, b in zip(ladder, ladder[1:])) and ladder == sorted(set(ladder))


def test_a_staleness_limit_for_no_feature_view_stops_the_features_stage(tmp_path):
    """`features.max_age_hours` keys are view names; one that names no view (a typo) would leave the view it
    meant without a limit, silently: the features stage stops first, naming it and the views there are."""
    from pipelines import build_features

    cfg = parse_config({"data": {"work_dir": "w"}, "features": {"max_age_hours": {"user_purchase_stat": 1}}},
                       base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"no feature view named 'user_purchase_stat' \(views: .*user_purchase_stats"):
        build_features.run(cfg, log=lambda m: None)


def test_the_features_stage_names_an_empty_event_log(tmp_path):
    """A header-only input ingests no event: the features stage says so (it failed deep in the text embedding
    with `attempt to get argmax of an empty sequence`)."""
    import pandas as pd

    from pipelines import build_features
    from pipelines.schema import EVENT_DTYPES, ITEM_DTYPES

    cfg = parse_config({"data": {"work_dir": "w"}}, base_dir=tmp_path)
    (cfg.work_dir / "ingest").mkdir(parents=True)
    pd.DataFrame({c: pd.Series(dtype=t) for c, t in EVENT_DTYPES.items()}).to_parquet(
        cfg.work_dir / "ingest" / "events.parquet")
    pd.DataFrame({c: pd.Series(dtype=t) for c, t in ITEM_DTYPES.items()}).to_parquet(
        cfg.work_dir / "ingest" / "items.parquet")
    with pytest.raises(ValueError, match="events.parquet holds no events"):
        build_features.run(cfg, log=lambda m: None)
