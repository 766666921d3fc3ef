"""The simulated shop: determinism, canonical schema, and statistical sanity of what it generates.

One small world (1,500 shoppers, 300 items, 28 days: about 5,000 sessions) is
generated once per module; each test reads its files or its ground truth.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from feature_repo import names as n
from pipelines.adapters.canonical import CanonicalAdapter
from simulator.config import ConfigError, WorldConfig, parse_simulation
from simulator.world import Shop, simulate

SMALL = WorldConfig(shoppers=1500, items=300, days=28, categories=6)


def _digest(d) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*.parquet")) + [d / "summary.json"]}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "seed1"
    simulate(SMALL, 1, out, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def events(world_dir):
    return pd.read_parquet(world_dir / "events.parquet")


def test_same_seed_is_byte_identical_and_other_seeds_differ(world_dir, tmp_path):
    simulate(SMALL, 1, tmp_path / "again", log=lambda s: None)
    simulate(SMALL, 2, tmp_path / "other", log=lambda s: None)
    first = _digest(world_dir)
    assert first == _digest(tmp_path / "again")
    other = _digest(tmp_path / "other")
    assert first["events.parquet"] != other["events.parquet"]
    assert first["items.parquet"] != other["items.parquet"]


def test_the_canonical_adapter_ingests_it_unchanged(world_dir, events):
    out = CanonicalAdapter().read(world_dir / "events.parquet", "fail")
    assert len(out.quarantine) == 0
    assert len(out.events) == out.input_rows == len(events)
    # the catalog is the simulator's (titles from attributes), not the adapter's fallback
    assert out.items[n.TITLE].str.contains("item ").sum() == 0
    assert set(out.events[n.ITEM_ID]) <= set(out.items[n.ITEM_ID])
    assert out.events[n.EVENT_ID].is_unique
    assert set(out.events[n.EVENT_TYPE]) == set(n.EVENT_TYPES)


def test_funnel_rates_are_plausible(events):
    c = events[n.EVENT_TYPE].value_counts()
    ctr = c[n.CLICK] / c[n.VIEW]
    cart = c[n.ADD_TO_CART] / c[n.CLICK]
    checkout = c[n.PURCHASE] / c[n.ADD_TO_CART]
    conversion = events.loc[events[n.EVENT_TYPE] == n.PURCHASE, n.SESSION_ID].nunique() / events[n.SESSION_ID].nunique()
    returns = c[n.RETURN] / c[n.PURCHASE]
    assert 0.02 < ctr < 0.20, ctr
    assert 0.10 < cart < 0.50, cart
    assert 0.30 < checkout < 0.90, checkout
    assert 0.03 < conversion < 0.30, conversion
    assert 0.0 < returns < 0.10, returns


def test_the_weekly_cycle_is_visible(events):
    sessions = events.drop_duplicates(n.SESSION_ID)
    day = sessions[n.EVENT_TIMESTAMP].dt.floor("D")
    per_day = sessions.groupby(day).size()
    weekend = per_day[per_day.index.dayofweek >= 5].mean()
    weekday = per_day[per_day.index.dayofweek < 5].mean()
    # weekend_factor 1.4 -> about 40% more sessions on a weekend day; noise is a few percent
    assert 1.2 < weekend / weekday < 1.6, (weekend, weekday)


def test_no_purchase_of_an_out_of_stock_item(world_dir, events):
    stock = pd.read_parquet(world_dir / "truth" / "stock.parquet")
    p = events[events[n.EVENT_TYPE] == n.PURCHASE].copy()
    start = pd.Timestamp(SMALL.start_date, tz="UTC")
    p["day"] = (p[n.EVENT_TIMESTAMP] - start).dt.days
    sold = p.groupby(["day", n.ITEM_ID])[n.QUANTITY].sum().rename("sold").reset_index()
    m = sold.merge(stock, on=["day", n.ITEM_ID], how="left")
    assert m["stock_start"].notna().all()
    assert (m["sold"] <= m["stock_start"]).all()
    # stock-outs do happen (so the check above is not vacuous) and restocks too
    out = stock.pivot(index="day", columns=n.ITEM_ID, values="stock_start")
    assert (out == 0).any().sum() > 0
    restocked = ((out.shift(1) == 0) & (out > 0)).to_numpy().sum()
    assert restocked > 0


@pytest.mark.parametrize("rho", [0.0, 0.25, 0.6])
def test_appeal_utility_correlation_matches_its_parameter(rho):
    shop = Shop(WorldConfig(items=20000, shoppers=10, appeal_utility_correlation=rho), seed=3)
    r = np.corrcoef(shop.appeal_base, shop.quality)[0, 1]
    # sd of a sample correlation over 20,000 items is below 0.01
    assert abs(r - rho) < 0.03, r


def test_clicks_follow_appeal_and_purchases_follow_quality(world_dir, events):
    truth = pd.read_parquet(world_dir / "truth" / "items.parquet").set_index(n.ITEM_ID)
    c = events.groupby([n.ITEM_ID, n.EVENT_TYPE]).size().unstack(fill_value=0)
    c = c[c[n.VIEW] >= 30].join(truth)
    ctr = c[n.CLICK] / c[n.VIEW]
    buy_per_click = c[n.PURCHASE] / c[n.CLICK].clip(lower=1)
    assert np.corrcoef(ctr, c["appeal_base"])[0, 1] > 0.4
    assert np.corrcoef(buy_per_click, c["quality"])[0, 1] > 0.3
    assert np.corrcoef(buy_per_click, c["appeal_base"])[0, 1] < np.corrcoef(buy_per_click, c["quality"])[0, 1]


def test_new_shoppers_and_new_items_keep_arriving(world_dir, events):
    items = pd.read_parquet(world_dir / "items.parquet")
    start = pd.Timestamp(SMALL.start_date, tz="UTC")
    assert (items[n.FIRST_SEEN] >= start).sum() > 20  # launched during the period: cold items
    first = events.groupby(n.USER_ID)[n.EVENT_TIMESTAMP].min()
    assert ((first - start).dt.days >= 7).sum() > 50  # first seen a week or more in: cold users
    # a text description made of the item's attributes
    assert items[n.TITLE].str.split().str.len().min() >= 6


def test_ground_truth_stays_out_of_the_event_log(world_dir, events):
    assert list(events.columns) == list(n.EVENT_COLUMNS)
    assert not {"appeal_base", "quality", "stock_start"} & set(pd.read_parquet(world_dir / "items.parquet").columns)


def test_a_bad_simulation_key_names_the_path():
    with pytest.raises(ConfigError, match="world.shopers: unknown key"):
        parse_simulation({"world": {"shopers": 10}}, source="sim.yaml")


def test_not_logging_impressions_changes_nothing_else(events, tmp_path):
    simulate(SMALL.model_copy(update={"log_impressions": False}), 1, tmp_path / "noimp", log=lambda s: None)
    quiet = pd.read_parquet(tmp_path / "noimp" / "events.parquet")
    assert (quiet[n.EVENT_TYPE] == n.VIEW).sum() == 0
    full = events[events[n.EVENT_TYPE] != n.VIEW].drop(columns=n.EVENT_ID).reset_index(drop=True)
    pd.testing.assert_frame_equal(quiet.drop(columns=n.EVENT_ID), full)
