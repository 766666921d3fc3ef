"""The whole path on a tiny synthetic shop with real parts: Feast (DuckDB + SQLite),
Great Expectations, TFRS, ScaNN, an exported bundle, and a real HTTP server.

The shop's users each prefer one of four categories (tests/synthetic.py), so
a model that learned anything ranks the preferred category first; popularity
cannot, since it gives every user the same list.
"""
from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pandas as pd
import pytest

from cartwise import batch
from cartwise.bundle import BundleError, current_bundle, load_bundle, verify
from feature_repo import names as n
from serving.app import create_app
from serving.pipeline import COLD_ANONYMOUS, COLD_UNKNOWN, Recommender
from serving.server import BackgroundServer

pytestmark = pytest.mark.integration


def test_training_set_is_point_in_time_and_complete(trained_shop):
    cfg, events, _, results = trained_shop
    train = pd.read_parquet(cfg.work_dir / "dataset" / "train.parquet")
    cutoff = pd.Timestamp(results["dataset"]["cutoff"])
    expected = events[(events[n.EVENT_TYPE] == "purchase") & events[n.USER_ID].notna()
                      & (events[n.EVENT_TIMESTAMP] < cutoff)]
    assert sorted(train[n.EVENT_ID]) == sorted(expected[n.EVENT_ID])  # no row dropped, none added
    # weight = 1 (purchase) x min(2, max(1, line value / median line value)) x 4 in the last 7 days
    e = expected.set_index(n.EVENT_ID).loc[train[n.EVENT_ID]]
    value = (e[n.QUANTITY] * e[n.UNIT_PRICE]).to_numpy()
    recent = (e[n.EVENT_TIMESTAMP] >= cutoff - pd.Timedelta(days=7)).to_numpy()
    want = np.clip(value / np.median(value), 1.0, 2.0) * np.where(recent, 4.0, 1.0)
    assert np.allclose(train[n.WEIGHT].to_numpy(), want)
    assert recent.any() and (~recent).any() and len(set(np.round(want, 6))) > 2
    assert results["validate"]["success"] and results["validate"]["expectations"] > 20


def test_model_beats_popularity_and_metrics_are_reported(trained_shop):
    _, _, _, results = trained_shop
    m = results["evaluate"]
    for variant in ("all_items", "new_to_user"):
        assert set(m[variant]) - {"model_new_item_slots"} == {"model", "two_tower", "popularity", "repeat",
                                                               "item_knn", "ease"}
        for method in ("model", "two_tower"):
            assert m[variant][method]["ndcg@10"] > m[variant]["popularity"]["ndcg@10"] + 0.1, (variant, method)
    assert m["test_users"] > 30


def test_bundle_is_complete_and_tamper_is_refused(trained_shop, tmp_path):
    cfg, _, items, results = trained_shop
    root = current_bundle(cfg.work_dir / "bundles")
    manifest = verify(root)
    assert manifest["version"] == results["export"]["version"] == root.name
    assert manifest["index"]["items"] == len(items)
    assert manifest["index"]["recall_at_10_vs_brute_force"] >= cfg.retrieval.index.min_recall
    copy = tmp_path / root.name
    shutil.copytree(root, copy)
    target = copy / "item_embeddings.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="item_embeddings.npy does not match"):
        load_bundle(copy)


def test_saved_towers_and_index_give_identical_scores_after_reload(trained_shop):
    cfg, _, _, _ = trained_shop
    root = current_bundle(cfg.work_dir / "bundles")
    a = Recommender.from_bundle_dir(root).recommend("U002", 10)
    b = Recommender.from_bundle_dir(root).recommend("U002", 10)
    assert [(r.item_id, r.score) for r in a.items] == [(r.item_id, r.score) for r in b.items]


def test_known_user_gets_their_category_and_unknown_users_cold_start(trained_shop):
    cfg, _, items, _ = trained_shop
    rec = Recommender.from_bundle_dir(current_bundle(cfg.work_dir / "bundles"))
    cat = items.set_index(n.ITEM_ID)[n.CATEGORY]
    hits = []
    for u in range(12):
        r = rec.recommend(f"U{u:03d}", 5)
        assert not r.flags and all(x.source == "two_tower" for x in r.items)
        hits.append(np.mean([cat[x.item_id] == f"cat{u % 4}" for x in r.items]))
    assert np.mean(hits) > 0.6  # chance is 0.25
    assert rec.recommend("never-seen", 3).flags == [COLD_UNKNOWN]
    anon = rec.recommend(None, 3)
    assert anon.flags == [COLD_ANONYMOUS] and [x.source for x in anon.items] == ["popularity"] * 3


def test_exclusions_are_respected(trained_shop):
    cfg, events, _, _ = trained_shop
    rec = Recommender.from_bundle_dir(current_bundle(cfg.work_dir / "bundles"))
    bought = set(events[(events[n.USER_ID] == "U005") & (events[n.EVENT_TYPE] == "purchase")][n.ITEM_ID])
    first = rec.recommend("U005", 5)
    excluded = [first.items[0].item_id]
    again = rec.recommend("U005", 5, exclude=excluded)
    assert excluded[0] not in {x.item_id for x in again.items}
    fresh = rec.recommend("U005", 5, exclude_purchased=True)
    assert not bought & {x.item_id for x in fresh.items} and len(fresh.items) == 5


def test_http_server_answers_over_a_real_socket(trained_shop):
    cfg, _, _, results = trained_shop
    rec = Recommender.from_bundle_dir(current_bundle(cfg.work_dir / "bundles"))
    with BackgroundServer(create_app(rec, max_k=20)) as srv:
        r = httpx.post(f"{srv.url}/v1/recommend", json={"user_id": "U003", "k": 4})
        assert r.status_code == 200
        body = r.json()
        assert body["bundle_version"] == results["export"]["version"]
        assert len(body["items"]) == 4 and all(i["source"] == "two_tower" for i in body["items"])
        assert httpx.get(f"{srv.url}/health/live").json() == {"status": "ok"}
        assert httpx.get(f"{srv.url}/health/ready").json()["online_store"] == "ok"
        for bad, field in (({"user_id": "U003", "k": 0}, "k"), ({"user_id": "U003", "k": 21}, "k"),
                           ({"user_id": "U003", "colour": "red"}, "colour"), ({"user_id": ""}, "user_id"),
                           ({"user_id": "U003", "k": "ten"}, "k"), ({"exclude": "I001"}, "exclude"),
                           ({"user_id": "U" * 129}, "user_id"), ({"exclude": ["x" * 129]}, "exclude")):
            r = httpx.post(f"{srv.url}/v1/recommend", json=bad)
            assert r.status_code == 422, bad
            assert any(field in d["loc"] for d in r.json()["detail"]), r.json()
        r = httpx.post(f"{srv.url}/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422


def test_batch_recommend_flags_unknown_users(trained_shop, tmp_path):
    cfg, events, _, _ = trained_shop
    users = tmp_path / "users.csv"
    users.write_text("user_id\nU001\nU002\nghost\n")
    out = tmp_path / "recs.parquet"
    df = batch.run(cfg, users, out, k=3, exclude_purchased=True)
    assert pd.read_parquet(out).equals(df)
    assert list(df.groupby("user_id").size()) == [3, 3, 3]
    assert df.groupby("user_id")["rank"].apply(list).tolist() == [[1, 2, 3]] * 3
    assert df.set_index("user_id").loc["ghost", "cold_start"].all()
    assert not df.set_index("user_id").loc[["U001", "U002"], "cold_start"].any()
    bought = events[(events[n.USER_ID] == "U001") & (events[n.EVENT_TYPE] == "purchase")][n.ITEM_ID]
    assert not set(df[df.user_id == "U001"].item_id) & set(bought)
    bad = tmp_path / "bad.csv"
    bad.write_text("customer\n1\n")
    with pytest.raises(ValueError, match="column 'user_id' is missing"):
        batch.run(cfg, bad, tmp_path / "x.csv", k=3)


def test_export_refused_without_passing_validation(trained_shop, tmp_path):
    from pipelines import export
    from pipelines.export import ExportRefused

    cfg, _, _, _ = trained_shop
    verdict = cfg.work_dir / "dataset" / "validation.json"
    saved = verdict.read_text()
    try:
        verdict.write_text(json.dumps({**json.loads(saved), "success": False}))
        before = sorted(p.name for p in (cfg.work_dir / "bundles").iterdir())
        with pytest.raises(ExportRefused, match="no passing validation verdict"):
            export.run(cfg, log=lambda m: None)
        assert sorted(p.name for p in (cfg.work_dir / "bundles").iterdir()) == before
    finally:
        verdict.write_text(saved)


def test_evaluate_bundle_on_a_later_file(trained_shop, tmp_path):
    """`cartwise evaluate --test-events`: the bundle scored on purchases after its data ends."""
    from pipelines.evaluate import run_on_file
    from tests.synthetic import make_shop

    cfg, events, _, _ = trained_shop
    later, _ = make_shop(days=30, purchases_per_user=5, seed=1)  # same shoppers, new period
    later[n.EVENT_TIMESTAMP] = later[n.EVENT_TIMESTAMP] + pd.Timedelta(days=150)
    later[n.EVENT_ID] = "later-" + later[n.EVENT_ID]
    later = pd.concat([later, later.iloc[:3]])  # three exact duplicates: counted once
    f = tmp_path / "later" / "events.parquet"
    f.parent.mkdir()
    later.to_parquet(f, index=False)
    out = tmp_path / "m.json"
    m = run_on_file(cfg, f, adapter="canonical", out=out, log=lambda s: None)
    assert json.loads(out.read_text())["bundle"] == m["bundle"]
    assert m["file"]["input_rows"] == len(later) and not m["file"]["overlaps_bundle_data"]
    assert m["test_users"] == 60
    assert set(m["all_items"]) == {"two_tower", "popularity", "repeat"}
    assert m["all_items"]["two_tower"]["ndcg@10"] > m["all_items"]["popularity"]["ndcg@10"]


def test_sampled_negatives_join_like_their_positive(trained_shop):
    from pipelines.build_dataset import sample_negatives, train_cutoff, training_entities

    cfg, events, items, _ = trained_shop
    ent = training_entities(events, cfg, train_cutoff(cfg), items)
    ent[n.LABEL] = 1
    neg = sample_negatives(ent, items, k=3, seed=1)
    first_seen = items[n.FIRST_SEEN].to_numpy()
    available = np.array([(first_seen <= t).sum() for t in ent[n.EVENT_TIMESTAMP].to_numpy()])
    assert len(neg) == 3 * (available >= 2).sum() and (available < 2).sum() < 5
    assert (neg[n.LABEL] == 0).all() and (neg[n.EVENT_TYPE] == n.NEGATIVE).all() and (neg[n.WEIGHT] == 1.0).all()
    pos = ent.set_index(n.EVENT_ID)
    base = neg[n.EVENT_ID].str.split("~").str[0]
    assert (neg[n.ITEM_ID].to_numpy() != pos.loc[base, n.ITEM_ID].to_numpy()).all()
    assert (neg[n.USER_ID].to_numpy() == pos.loc[base, n.USER_ID].to_numpy()).all()
    first = items.set_index(n.ITEM_ID)[n.FIRST_SEEN]
    assert (first.loc[neg[n.ITEM_ID]].to_numpy() <= neg[n.EVENT_TIMESTAMP].to_numpy()).all()  # no future items
    assert neg[n.EVENT_ID].is_unique
    again = sample_negatives(ent, items, k=3, seed=1)
    assert again[n.ITEM_ID].tolist() == neg[n.ITEM_ID].tolist()  # same seed, same sample
    # a catalog row no event mentions (no first appearance) is never drawn and breaks nothing
    ghost = pd.concat([items, items.iloc[:1].assign(**{n.ITEM_ID: "never-seen", n.FIRST_SEEN: pd.NaT})],
                      ignore_index=True)
    with_ghost = sample_negatives(ent, ghost, k=3, seed=1)
    assert "never-seen" not in set(with_ghost[n.ITEM_ID]) and len(with_ghost) == len(neg)


def test_configured_max_age_makes_old_user_features_missing(trained_shop):
    import datetime as dt

    from serving.features import OnlineUserFeatures

    cfg, _, _, _ = trained_shop
    repo = cfg.work_dir / "feature_store"
    fresh = OnlineUserFeatures(repo, n.RETRIEVAL_QUERY_SERVICE)
    assert fresh.get("U001")[n.USER_PURCHASE_COUNT] > 0 and not fresh.last_stale
    # features.max_age_hours: {user_purchase_stats: 1}: values from 2011 are stale today
    strict = OnlineUserFeatures(repo, n.RETRIEVAL_QUERY_SERVICE, max_age={n.USER_STATS_VIEW: dt.timedelta(hours=1)})
    assert strict.get("U001") is None
    assert f"{n.USER_STATS_VIEW}:{n.USER_PURCHASE_COUNT}" in strict.last_stale
