"""Ranking: rows built point in time at cut-offs, a DCN that learns them, saved and reloaded identically,
and the evaluation that puts it beside every baseline."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_repo import definitions
from feature_repo import names as n
from pipelines.build_ranking_dataset import ranking_cutoffs, ranking_feature_names
from pipelines.train_ranking import fit, load_scorer

ROOT = Path(__file__).resolve().parents[2]


def test_request_time_udf_matches_declared_names():
    # Feast runs the UDF from its source text: the literal column names inside must be the declared ones
    udf = definitions.ranking_request_features.feature_transformation.udf
    day = 86400
    frame = pd.DataFrame({n.REQUEST_TS: [10 * day, 10 * day], n.UI_LAST_PURCHASE_UNIX: [7 * day, 0],
                          n.UI_FIRST_PURCHASE_UNIX: [1 * day, 0], n.UI_PURCHASE_DAYS: [3, 0],
                          n.UC_LAST_PURCHASE_UNIX: [9 * day, 0], n.USER_PURCHASE_COUNT: [4, 0],
                          n.UC_PURCHASES: [1, 0]})
    out = udf(frame)
    assert tuple(out.columns) == n.RANKING_REQUEST_FEATURES
    assert out[n.UI_DAYS_SINCE_PURCHASE].tolist() == [3.0, -1.0]  # 10 - 7 days; never bought -> -1
    assert out[n.UI_DAYS_SINCE_FIRST_PURCHASE].tolist() == [9.0, -1.0]
    assert out[n.UI_REPURCHASE_INTERVAL].tolist() == [3.0, -1.0]  # days 1 .. 7 over 3 purchase days: 6 / 2
    assert out[n.UC_DAYS_SINCE_PURCHASE].tolist() == [1.0, -1.0]
    assert out[n.UC_SHARE].tolist() == [0.25, 0.0]


def test_feature_list_has_no_absolute_times_or_time_of_day():
    names = ranking_feature_names()
    assert not [f for f in names if f.endswith("_unix")]
    assert "request_hour" not in names and n.MARGIN not in names
    assert set(n.SOURCE_SCORES) <= set(names) and n.UI_PURCHASES in names


@pytest.mark.integration
def test_ranking_rows_are_point_in_time_and_labelled_by_the_window(trained_shop):
    cfg, events, _, results = trained_shop
    train = pd.read_parquet(cfg.work_dir / "ranking_dataset" / "train.parquet")
    cutoffs = ranking_cutoffs(cfg)
    assert sorted(pd.to_datetime(train["cutoff"]).unique()) == cutoffs
    p = events[events[n.EVENT_TYPE] == n.PURCHASE].copy()
    p[n.EVENT_TIMESTAMP] = pd.to_datetime(p[n.EVENT_TIMESTAMP], utc=True)
    for cutoff, block in train.groupby("cutoff"):
        cutoff = pd.Timestamp(cutoff)
        before = p[p[n.EVENT_TIMESTAMP] < cutoff]
        window = p[(p[n.EVENT_TIMESTAMP] >= cutoff)
                   & (p[n.EVENT_TIMESTAMP] < cutoff + pd.Timedelta(days=cfg.ranking.label_days))]
        # oracle for the label: bought in the window; for ui_purchases: lines strictly before the cut-off
        bought = set(zip(window[n.USER_ID].astype(str), window[n.ITEM_ID].astype(str)))
        expect = [float((u, i) in bought) for u, i in zip(block[n.USER_ID], block[n.ITEM_ID])]
        assert block[n.LABEL].tolist() == expect
        counts = before.groupby([n.USER_ID, n.ITEM_ID]).size()
        days = before.groupby([n.USER_ID, n.ITEM_ID])[n.EVENT_TIMESTAMP].agg(lambda t: t.dt.floor("D").nunique())
        keyed = block.set_index([n.USER_ID, n.ITEM_ID])
        for col, oracle in ((n.UI_PURCHASES, counts), (n.UI_PURCHASE_DAYS, days)):
            want = oracle.reindex(keyed.index).fillna(0).astype(float)
            np.testing.assert_array_equal(keyed[col].to_numpy(), want.to_numpy(), err_msg=col)
        assert (block.loc[block[n.LABEL] == 1, n.WEIGHT] >= 1.0).all()
        assert (block.loc[block[n.LABEL] == 0, n.WEIGHT] == 1.0).all()
    assert results["ranking_dataset"]["positives"] > 0


@pytest.mark.integration
def test_same_seed_same_model_and_fresh_process_gives_identical_scores(trained_shop, tmp_path):
    cfg, _, _, results = trained_shop
    rows = pd.read_parquet(cfg.work_dir / "ranking_dataset" / "train.parquet")
    feats = results["train_ranking"]["features"]
    a, _ = fit(rows, feats, cfg, log=lambda m: None)
    b, _ = fit(rows, feats, cfg, log=lambda m: None)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    scorer = load_scorer(cfg.work_dir / "ranking_model")
    here = scorer(rows)
    rows.to_parquet(tmp_path / "rows.parquet")
    code = ("import os, sys, numpy as np, pandas as pd; os.environ['TF_USE_LEGACY_KERAS']='1';"
            "from pipelines.train_ranking import load_scorer;"
            f"s = load_scorer({str(cfg.work_dir / 'ranking_model')!r})(pd.read_parquet({str(tmp_path / 'rows.parquet')!r}));"
            f"np.save({str(tmp_path / 'scores.npy')!r}, s)")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), here)


@pytest.mark.integration
def test_evaluation_reports_model_beside_every_baseline(trained_shop):
    cfg, _, _, results = trained_shop
    m = json.loads((cfg.work_dir / "evaluation" / "metrics.json").read_text())
    for variant in ("all_items", "new_to_user"):
        assert set(m[variant]) - {"model_new_item_slots"} == {"model", "two_tower", "popularity", "repeat",
                                                               "item_knn", "ease"}
        for row in m[variant].values():
            assert 0.0 <= row["ndcg@10"] <= 1.0 and "map@10" in row
    assert 0.0 < m["candidates"]["recall"] <= 1.0
    assert "cold_items" in m["cohorts"] and m["training"]["ranking"]
    # first-time buyers of the test window, asked after their first basket (pipelines/cold_users.py)
    assert set(m["cohorts"]["cold_users"]) == {"popularity", "item_knn", "two_tower"}
    assert m["cold_users"]["users"] == m["cohorts"]["cold_users"]["popularity"]["users"]  # none in this shop
    html = (cfg.work_dir / "evaluation" / "report.html").read_text()
    assert "<img" in html and "item_knn" in html
