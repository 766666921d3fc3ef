"""The export gate, `cartwise validate --candidate` and `cartwise index update` on real parts.

Each test works on a copy of the session's trained synthetic shop (real
Feast repo, GE, TF towers, ScaNN), whose CURRENT bundle carries the reference
profiles of the data it was built from.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cartwise import bundle as b
from cartwise.cli import main
from feature_repo import names as n
from pipelines import build_features, export, update_index
from pipelines.build_index import build_searcher
from pipelines.export_ranking import RANKING_DIR
from tests.conftest import quiet
from tests.shop_copy import copy_shop

pytestmark = pytest.mark.integration


@pytest.fixture()
def shop(trained_shop, tmp_path):
    cfg, *_ = trained_shop
    return copy_shop(cfg, tmp_path)


def test_first_export_blessed_a_reference_and_the_bundle_is_complete(trained_shop):
    cfg, *_ = trained_shop
    root = b.current_bundle(cfg.work_dir / "bundles")
    m = b.verify(root)
    assert {"event_log.json", "training_set.json"} <= {p.name for p in (root / b.REFERENCE_DIR).iterdir()}
    assert m["validation"] == {"status": "pass", "reference_bundle": None}  # nothing to compare with yet
    assert {"drift.json", "drift.html", "validation.json", "metrics.json", "config.json", b.ITEM_FEATURES} <= set(
        p.name for p in root.iterdir())
    assert m["golden"]["queries"] > 0 and set(m["libraries"]) >= {"tensorflow", "scann", "great-expectations"}
    assert b.read_history(cfg.work_dir / "bundles")[-1] == root.name


def test_drifted_training_set_blocks_export_and_names_feature_and_statistic(shop):
    cfg, _ = shop
    bundles = cfg.work_dir / "bundles"
    before = sorted(p.name for p in bundles.iterdir())
    train_path = cfg.work_dir / "dataset" / "train.parquet"
    train = pd.read_parquet(train_path)
    train[n.PRICE] = train[n.PRICE] * 1.5
    train.to_parquet(train_path, index=False)
    with pytest.raises(export.ExportRefused, match=r"training_set\.price: (psi|ks)") as e:
        export.run(cfg, log=quiet)
    assert "blocked" in str(e.value)
    assert sorted(p.name for p in bundles.iterdir()) == before  # nothing published, nothing left behind
    verdict = json.loads((cfg.work_dir / "validation" / "export_gate.json").read_text())
    assert verdict["status"] == "blocked" and verdict["reference_bundle"] == b.current_version(bundles)
    assert {(f["dataset"], f["feature"]) for f in verdict["failures"]} == {("training_set", n.PRICE)}
    assert "training_set" in (cfg.work_dir / "validation" / "export_gate.html").read_text()


def test_validate_candidate_exit_codes(shop, tmp_path, capsys):
    cfg, path = shop
    d = tmp_path / "cand"
    d.mkdir()
    events = pd.read_parquet(cfg.work_dir / "ingest" / "events.parquet")
    pd.read_parquet(cfg.work_dir / "ingest" / "items.parquet").to_parquet(d / "items.parquet", index=False)
    events.to_parquet(d / "same.parquet", index=False)
    out = tmp_path / "verdict.json"
    args = ["validate", "--config", str(path), "--adapter", "canonical", "--out", str(out), "--candidate"]
    assert main([*args, str(d / "same.parquet")]) == 0
    assert json.loads(out.read_text())["status"] == "pass"
    shifted = events.assign(**{n.UNIT_PRICE: events[n.UNIT_PRICE] * 1.5})
    shifted.to_parquet(d / "shifted.parquet", index=False)
    assert main([*args, str(d / "shifted.parquet")]) == 1
    v = json.loads(out.read_text())
    assert v["status"] == "blocked" and (n.UNIT_PRICE, "ks") in {(f["feature"], f["statistic"]) for f in v["failures"]}
    assert out.with_suffix(".html").is_file()
    # a tenth of the rows of an event type the format does not know: quarantined, the rest as before
    odd = events.assign(**{n.EVENT_TYPE: events[n.EVENT_TYPE].where(events.index % 10 != 0, "wishlist")})
    odd.to_parquet(d / "odd.parquet", index=False)
    assert main([*args, str(d / "odd.parquet")]) == 1
    v = json.loads(out.read_text())
    assert [(f["feature"], f["statistic"]) for f in v["failures"]] == [("<file>", "quarantined_share")]
    assert v["datasets"]["event_log"]["quarantined"] == (events.index % 10 == 0).sum()
    events.drop(columns=[n.QUANTITY]).to_parquet(d / "broken.parquet", index=False)
    assert main([*args, str(d / "broken.parquet")]) == 2
    assert json.loads(out.read_text())["status"] == "error"
    assert "quantity" in capsys.readouterr().err


#: serving sources that read the tables export writes beside the index (bought_together.parquet, content embeddings)
SESSION_SOURCES = {"retrieval": {"sources": ["two_tower", "bought_together", "content", "popularity"]}}


def test_index_update_adds_new_items_without_retraining(trained_shop, tmp_path):
    from serving.pipeline import Recommender
    from serving.request import SessionContext

    cfg, _ = copy_shop(trained_shop[0], tmp_path, **SESSION_SOURCES)
    bundles = cfg.work_dir / "bundles"
    parent = b.current_bundle(bundles)
    pm = b.verify(parent)
    items_path = cfg.work_dir / "ingest" / "items.parquet"
    items = pd.read_parquet(items_path)
    new = items.head(3).copy()
    new[n.ITEM_ID] = ["NEW001", "NEW002", "NEW003"]
    new[n.TITLE] = ["NEW THING A", "NEW THING B", "NEW THING C"]
    new[n.PRICE] = [2.0, 5.0, 9.0]
    pd.concat([items, new], ignore_index=True).astype(items.dtypes.to_dict()).to_parquet(items_path, index=False)
    # the new products' content features reach Feast; a fresh registry and online store, because the copied
    # registry's sources still point at the original shop's tables
    for f in ("registry.db", "online_store.db"):
        (cfg.work_dir / "feature_store" / "data" / f).unlink(missing_ok=True)
    build_features.run(cfg, log=quiet)

    m = update_index.run(cfg, log=quiet)
    u = m["index_update"]
    assert u["parent"] == parent.name and u["new"] == 3 and u["removed"] == 0
    assert u["embedded"] == u["new"] + u["changed"] and u["reused"] == len(items) - u["changed"]
    assert b.current_version(bundles) == m["version"] and b.read_history(bundles)[-2:] == [parent.name, m["version"]]
    child = bundles / m["version"]
    # no retraining: the towers are the parent's, byte for byte
    for rel, digest in pm["files"].items():
        if rel.startswith((b.QUERY_TOWER, b.CANDIDATE_TOWER)):
            assert m["files"][rel] == digest, rel
    loaded = b.load_bundle(child)
    assert set(new[n.ITEM_ID]) <= set(loaded.item_ids) and m["index"]["items"] == len(items) + 3
    old_emb, new_emb = np.load(parent / b.EMBEDDINGS), np.load(child / b.EMBEDDINGS)
    old_ids = list(pd.read_parquet(parent / b.ITEMS)[n.ITEM_ID])
    row = {i: k for k, i in enumerate(loaded.item_ids)}
    unchanged = [i for i in old_ids if i not in set(u["changed_items"])]
    assert np.array_equal(new_emb[[row[i] for i in unchanged]], old_emb[[old_ids.index(i) for i in unchanged]])
    # the new items are retrievable: searching with a new item's own direction (scaled) finds it among the top 5
    for item in new[n.ITEM_ID]:
        vec = new_emb[row[item]]
        got, _ = loaded.searcher.search(vec, final_num_neighbors=5)
        exact = np.argsort(-(new_emb @ vec))[:5]
        assert set(got.tolist()) == set(exact.tolist())
    # the ranker's item feature matrix is read again from the online store for the child: the new products
    # are in it with the prices Feast now holds (the refresh path between exports: build-features, then this)
    from feature_repo.item_matrix import ItemFeatureMatrix

    matrix = ItemFeatureMatrix.load(child / RANKING_DIR / "items")
    assert list(matrix.item_ids) == list(loaded.item_ids)
    np.testing.assert_array_equal(matrix.take(list(new[n.ITEM_ID]), [n.PRICE])[n.PRICE], [2.0, 5.0, 9.0])
    # the serving tables are written exactly as export writes them (export.write_tables): the item table with
    # stock and margin, co-purchase neighbours and content embeddings, so the update's config (config.json) can
    # use the sources that read them; a bundle without them fails to build a Recommender (PipelineWiringError)
    assert {b.BOUGHT_TOGETHER, b.CONTENT_EMBEDDINGS, "config.json"} <= set(m["files"])
    assert m["serving_tables"]["pairs"] > 0 and m["golden"]["k"] == export.GOLDEN_K
    assert {n.TITLE, n.IN_STOCK, n.MARGIN} <= set(pd.read_parquet(child / b.ITEMS).columns)
    assert np.load(child / b.CONTENT_EMBEDDINGS).shape[0] == len(items) + 3
    rec = Recommender.from_bundle_dir(child)
    assert rec.version == m["version"]
    assert rec.retriever.names == ("two_tower", "bought_together", "content", "popularity")
    r = rec.recommend(None, 10, session=SessionContext(cart=["I000"], viewed=["I003"]))
    assert {"bought_together", "content"} <= {i.source for i in r.items}


def _rehash(root, drop=()):
    m = json.loads((root / b.MANIFEST).read_text())
    m["files"] = b.file_hashes(root)
    for key in drop:
        m.pop(key, None)
    (root / b.MANIFEST).write_text(json.dumps(m))


def test_golden_queries_are_required_unless_the_bundle_predates_them(trained_shop, tmp_path):
    cfg, *_ = trained_shop
    root = b.current_bundle(cfg.work_dir / "bundles")
    loaded = b.load_bundle(root)  # today's export: format 2, every check ran and passed
    assert loaded.checks["format"] == b.FORMAT_GOLDEN and loaded.checks["golden"]["queries"] > 0
    assert loaded.checks["index"]["datapoints"] == len(loaded.item_ids) and loaded.checks["index"]["exact_scores"]
    # golden queries removed from a bundle of today's format (manifest re-hashed): refused, saying how to re-export
    bare = shutil.copytree(root, tmp_path / "no_golden")
    shutil.rmtree(bare / b.GOLDEN_DIR)
    _rehash(bare, drop=("golden",))
    b.verify(bare)
    with pytest.raises(b.BundleError, match=r"no golden queries .*`cartwise export`") as e:
        b.load_bundle(bare)
    assert str(bare) in str(e.value)
    # the same bundle as written before golden queries existed (format 1: none of the manifest keys and files
    # that came with or after them) still loads, with the index checks but without a replay
    for rel in (b.REFERENCE_DIR, b.ITEM_FEATURES, b.BOUGHT_TOGETHER, b.CONTENT_EMBEDDINGS, "drift.json", "drift.html"):
        path = bare / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    _rehash(bare, drop=("candidate_inputs", "validation", "serving_tables", "index_update", "format"))
    old = b.load_bundle(bare)
    assert old.checks["format"] == 1 and old.checks["golden"] is None
    assert old.checks["index"]["datapoints"] == len(old.item_ids)
    # ... but not with an index over reordered rows, which the probe queries through every row catch
    emb = np.load(bare / b.EMBEDDINGS)
    searcher, _ = build_searcher(emb[::-1].copy(), cfg.retrieval.index)
    shutil.rmtree(bare / b.INDEX_DIR)
    (bare / b.INDEX_DIR).mkdir()
    searcher.serialize(str(bare / b.INDEX_DIR), relative_path=True)
    _rehash(bare)
    with pytest.raises(b.BundleError, match=r"scann/ does not match item_embeddings\.npy.*scores .* rows unlike"):
        b.load_bundle(bare)


def test_export_and_evaluation_calibrate_a_tree_index_on_other_users_than_the_golden_ones(
        trained_shop, tmp_path, monkeypatch):
    """A tree index (forced on the shop's 48 items): export calibrates the search (leaves and re-ordering
    depth) on the buyers after the golden ones, stores the tables in the manifest, checks its golden recall and
    replays the golden queries at load with them; evaluation calibrates its own index up to the lists it asks
    for."""
    from pipelines import evaluate
    from pipelines import build_index as bi
    from pipelines.evaluate import buyers_by_activity, purchase_history

    monkeypatch.setattr(export, "GOLDEN_QUERIES", 10)
    monkeypatch.setattr(bi, "MIN_CALIBRATION_QUERIES", 10)  # the shop has a few dozen buyers
    # a late split leaves training buyers who are not test users (evaluation calibrates on them)
    cfg, _ = copy_shop(trained_shop[0], tmp_path, retrieval={"index": {"brute_force_below": 0}},
                       evaluation={"split_date": "2011-04-28", "k": [5, 10]})
    asked = []  # the index parameters every search of the gate and of the load-time replay was built from

    def recording(search_kwargs):
        def wrapper(index, k):
            asked.append((dict(index or {}), k))
            return search_kwargs(index, k)
        return wrapper

    monkeypatch.setattr(bi, "search_kwargs", recording(bi.search_kwargs))  # the export's recall gate
    monkeypatch.setattr(b, "search_kwargs", recording(b.search_kwargs))  # the golden replay at load
    m = export.run(cfg, log=quiet)
    # calibration searches with settings of its own (not through search_kwargs); the gate and the replay of the
    # staged bundle search with the calibrated tables, for 10 neighbours
    calibrated = [(idx, k) for idx, k in asked if idx.get("leaves_by_k") and idx.get("reorder_by_k")]
    assert len(calibrated) == 2 and asked == calibrated and {k for _, k in calibrated} == {10}
    asked.clear()
    index = m["index"]
    items = index["items"]
    assert index["type"] == "tree_ah" and items >= 16
    assert list(index["leaves_by_k"]) == [str(k) for k in bi.calibration_ks(min(cfg.retrieval.k, items))]
    events = pd.read_parquet(cfg.work_dir / "ingest" / "events.parquet")
    buyers = buyers_by_activity(purchase_history(events[events[n.EVENT_TYPE] == n.PURCHASE]))
    assert len(buyers) - 10 >= 10
    assert index["calibration_queries"] == min(len(buyers) - 10, cfg.retrieval.index.calibration_queries)
    root = cfg.work_dir / "bundles" / m["version"]
    golden = json.loads((root / b.GOLDEN_DIR / b.GOLDEN_EXPECTED).read_text())
    assert golden["users"] == buyers[:10]  # the calibration users are buyers[10:]: the gate stays independent
    loaded = b.load_bundle(root)  # replays the golden queries with the calibrated search
    assert list(index["reorder_by_k"]) == list(index["leaves_by_k"])
    for key in ("leaves_by_k", "reorder_by_k"):
        assert loaded.manifest["index"][key] == index[key]
        assert [idx[key] for idx, _ in asked] == [index[key]]
    assert index["recall_at_10_vs_brute_force"] >= cfg.retrieval.index.min_recall

    metrics = evaluate.run(cfg, log=quiet)
    ev = metrics["index"]
    train, test = evaluate.split_purchases(events, pd.Timestamp(metrics["split"]["cutoff"]), None)
    history = purchase_history(train)
    tested = set(evaluate.test_targets(history, test)[0])
    others = [u for u in buyers_by_activity(history) if u not in tested]
    assert ev["type"] == "tree_ah" and ev["calibration_queries"] == len(others) >= 10
    # calibrated up to the evaluation's list length, here all the items known at the cut-off (retrieval.k is 200)
    assert list(ev["leaves_by_k"]) == [str(k) for k in bi.calibration_ks(ev["items"])]


@pytest.mark.parametrize("negatives", [0, 1])
def test_first_export_gate_takes_the_training_sets_sampled_negatives_when_the_objective_asks(
        trained_shop, monkeypatch, negatives):
    """Before any reference (the first export), the gate checks the training set with the same suite as
    `validate_dataset`: with `negatives_per_positive` the sampled negatives' event type is allowed (it used to
    block the first export of such a shop), without it such rows still block."""
    from pipelines.layout import Layout

    cfg, *_ = trained_shop
    cfg = cfg.model_copy(update={"objective": cfg.objective.model_copy(update={"negatives_per_positive": negatives})})
    layout = Layout(cfg.work_dir)
    events = pd.read_parquet(cfg.work_dir / "ingest" / "events.parquet")
    items = pd.read_parquet(cfg.work_dir / "ingest" / "items.parquet")
    train = pd.read_parquet(layout.dataset / "train.parquet")
    sampled = train.head(50).assign(**{n.EVENT_TYPE: n.NEGATIVE})
    monkeypatch.setattr(export, "blessed_reference", lambda bundles: ({}, None))  # no reference yet
    verdict, _ = export.run_gate(cfg, layout, events, items, pd.concat([train, sampled], ignore_index=True),
                                 log=quiet)
    failing = {(f["dataset"], f["feature"]) for f in verdict["failures"]}
    assert (("training_set", n.EVENT_TYPE) in failing) == (not negatives), verdict["failures"]


def test_a_drift_override_for_no_column_stops_the_gate(trained_shop):
    """`validation.drift.features` keys are column names; one that names no column of the gated frames (a
    typo) would leave the column it meant on the global thresholds, silently: the gate stops, naming it."""
    from cartwise.config import ConfigError
    from pipelines.layout import Layout

    cfg, *_ = trained_shop
    drift = cfg.validation.drift.model_copy(update={"features": {"unit_pric": {"max_psi": 0.3}}})
    cfg = cfg.model_copy(update={"validation": cfg.validation.model_copy(update={"drift": drift})})
    layout = Layout(cfg.work_dir)
    events = pd.read_parquet(cfg.work_dir / "ingest" / "events.parquet")
    items = pd.read_parquet(cfg.work_dir / "ingest" / "items.parquet")
    with pytest.raises(ConfigError, match="validation.drift.features: no column named 'unit_pric'"):
        export.run_gate(cfg, layout, events, items, pd.read_parquet(layout.dataset / "train.parquet"), log=quiet)
