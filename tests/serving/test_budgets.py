"""Per-stage time budgets (`serving.budgets_ms`, issue 6 item 7) on the synthetic shop's real bundle.

Slowness is made deterministic rather than measured: a source that sleeps well
past a small budget, and an online store that blocks until the test lets it
go. The only timing asserted is that what came after the slow part was
skipped (or not waited for); a generous budget is checked to change nothing.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cartwise.bundle import current_bundle
from cartwise.config import ConfigError, load_config, parse_config
from feature_repo import names as n
from serving import pipeline as p
from serving.candidates import Candidates
from serving.pipeline import (
    BUDGET_RETRIEVAL, BUDGET_TOTAL, FALLBACK_FEATURES_BUDGET, FALLBACK_STORE, Recommender,
)
from serving.request import SessionContext
from serving.sources import Source

ROOT = Path(__file__).resolve().parents[2]
SLOW = "tests.serving.test_budgets.SlowSource"
#: how long a slow source sleeps: far beyond the small budgets below
NAP = 0.06

pytestmark = pytest.mark.integration


class SlowSource(Source):
    """A custom source (by dotted path) that sleeps `params.sleep` seconds, then returns `params.ids` in order;
    every call is logged in :attr:`calls` by source name."""

    calls: list[str] = []

    def retrieve(self, query, n):
        SlowSource.calls.append(self.name)
        time.sleep(float(self.config.get("sleep", 0.0)))
        ids = list(self.config.get("ids", []))[:n]
        return Candidates.from_lists(ids, -np.arange(len(ids), dtype=float), self.name)


def slow(name: str, ids: list[str], sleep: float = NAP) -> dict:
    return {"type": SLOW, "name": name, "params": {"ids": ids, "sleep": sleep}}


@pytest.fixture(scope="module")
def base(trained_shop) -> Recommender:
    cfg, *_ = trained_shop
    return Recommender.from_bundle_dir(current_bundle(cfg.work_dir / "bundles"))


@pytest.fixture(autouse=True)
def _no_calls():
    SlowSource.calls.clear()


def build(base: Recommender, raw: dict, features=None) -> Recommender:
    """The bundle with another config, ranked by retrieval scores (the orders checked here are retrieval's)."""
    return Recommender(base.bundle, features if features is not None else base.features, config=parse_config(raw),
                       ranker=p.RetrievalScoreRanker())


def overruns(rec: Recommender, stage: str) -> float | None:
    return rec.registry.get_sample_value("cartwise_budget_overruns_total", {"stage": stage})


def ids(rec) -> list[str]:
    return [i.item_id for i in rec.items]


# --- retrieval -----------------------------------------------------------------------------------------------


def test_sources_after_the_retrieval_budget_are_skipped_and_the_fallbacks_still_fill(base):
    sources = [slow("first", ["I001", "I002"]), slow("second", ["I003", "I004"]), {"type": "content", "quota": 5},
               "popularity"]
    rec = build(base, {"retrieval": {"k": 20, "sources": sources}, "serving": {"budgets_ms": {"retrieval": 5}}})
    assert overruns(rec, "retrieval") == 0
    r = rec.recommend("U002", 8, session=SessionContext(viewed=["I010"]))
    assert SlowSource.calls == ["first"]  # the slow source spent the budget: nothing after it started
    assert len(r.items) == 8 and BUDGET_RETRIEVAL in r.flags
    assert r.warnings == ["retrieval: over its 5 ms budget, skipped second, content"]
    assert ids(r)[:2] == ["I001", "I002"]  # what ran before the budget was spent is served
    assert {i.source for i in r.items[2:]} == {"popularity"}  # the fallback filled the rest
    assert overruns(rec, "retrieval") == 1 and overruns(rec, "total") == 0


def test_generous_budgets_change_nothing(base):
    sources = [{"type": "two_tower", "quota": 10}, {"type": "bought_together", "quota": 8},
               {"type": "content", "quota": 6}, {"type": "repeat", "quota": 5},
               {"type": "popular_in_category", "quota": 10}, "popularity"]
    raw = {"retrieval": {"k": 40, "sources": sources}, "rules": [{"type": "pin", "item": "I007", "position": 2}],
           "diversity": {"method": "max_per_category", "max_per_category": 2}}
    off = build(base, {**raw, "serving": {"budgets_ms": {"features": None, "retrieval": None, "total": None}}})
    default = build(base, raw)
    large = build(base, {**raw, "serving": {"budgets_ms": {"features": 60_000, "retrieval": 60_000,
                                                           "total": 120_000}}})
    assert default.budgets == parse_config({}).serving.budgets_ms
    requests = [("U002", None), ("U005", SessionContext(cart=["I000"], viewed=["I003"], category="cat1")),
                ("never-seen", SessionContext(viewed=["I004"])), (None, SessionContext(category="cat2")), (None, None)]
    for user, session in requests:
        want = off.recommend(user, 10, session=session)
        for rec in (default, large):
            got = rec.recommend(user, 10, session=session)
            assert got.items == want.items and got.flags == want.flags and got.warnings == want.warnings
            assert got.fired == want.fired
            assert not {FALLBACK_FEATURES_BUDGET, BUDGET_RETRIEVAL, BUDGET_TOTAL} & set(got.flags)
    assert all(overruns(large, s) == 0 for s in p.BUDGET_STAGES)


# --- total: diversity is optional, the rules are not ---------------------------------------------------------


def test_over_the_total_budget_diversity_is_skipped_and_the_rules_still_run(base):
    sources = [slow("slow", [f"I{i:03d}" for i in range(12)]), "popularity"]
    rules = [{"type": "pin", "item": "I030", "position": 1, "insert": True}]
    diverse = {"method": "max_per_category", "max_per_category": 1}
    budgets = {"serving": {"budgets_ms": {"total": 5, "retrieval": None}}}
    over = build(base, {"retrieval": {"k": 20, "sources": sources}, "rules": rules, "diversity": diverse, **budgets})
    plain = build(base, {"retrieval": {"k": 20, "sources": sources}, "rules": rules})
    r = over.recommend(None, 6)
    assert BUDGET_TOTAL in r.flags and "diversity" not in r.fired
    assert r.warnings == ["diversity: skipped, the request was over its total budget of 5 ms"]
    assert ids(r)[0] == "I030" and r.items[0].source == "pin"  # the pin (a rule) ran
    assert ids(r) == ids(plain.recommend(None, 6))  # exactly the answer without diversity
    assert overruns(over, "total") == 1
    # without a diversity stage nothing is skipped: counted, not flagged
    plain_over = build(base, {"retrieval": {"k": 20, "sources": sources}, "rules": rules, **budgets})
    r = plain_over.recommend(None, 6)
    assert BUDGET_TOTAL not in r.flags and overruns(plain_over, "total") == 1


# --- features ------------------------------------------------------------------------------------------------


class BlockedStore:
    """The bundle's online features behind a gate: each read waits until the test opens it."""

    def __init__(self, features):
        self.features, self.gate, self.reads = features, threading.Event(), 0

    def get(self, user_id, now=None):
        self.reads += 1
        assert self.gate.wait(30), "the test never opened the gate"
        return self.features.get(user_id, now)


def test_an_online_read_over_its_budget_is_served_as_if_the_store_were_down(base):
    store = BlockedStore(base.features)
    rec = build(base, {"serving": {"budgets_ms": {"features": 20}}}, features=store)
    down = build(base, {})
    try:
        r = rec.recommend("U002", 5)
        assert r.flags == [FALLBACK_FEATURES_BUDGET] and FALLBACK_STORE not in r.flags and len(r.items) == 5
        assert ids(r) == base.bundle.popular[:5]  # no session: the store-unavailable answer
        assert overruns(rec, "features") == 1
        # reads still blocked pile up only to MAX_ABANDONED_READS; then requests fall back without reading
        for _ in range(p.MAX_ABANDONED_READS - 1):
            rec.recommend("U002", 5)
        assert store.reads == p.MAX_ABANDONED_READS == rec._abandoned_reads
        r = rec.recommend("U002", 5)
        assert r.flags == [FALLBACK_FEATURES_BUDGET] and store.reads == p.MAX_ABANDONED_READS
    finally:
        store.gate.set()
    deadline = time.monotonic() + 30
    while rec._abandoned_reads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec._abandoned_reads == 0  # the background reads finished and were let go
    r = rec.recommend("U002", 5)  # a store that answers in time is read again
    assert r.flags == [] and ids(r) == ids(down.recommend("U002", 5))


def test_store_failures_inside_the_budget_keep_their_own_flag(base):
    class Down:
        def get(self, user_id, now=None):
            raise p.OnlineStoreUnavailable("refused")

    r = build(base, {}, features=Down()).recommend("U002", 3)
    assert r.flags == [FALLBACK_STORE]


# --- config --------------------------------------------------------------------------------------------------


def test_budgets_parse_and_reject_bad_values():
    b = parse_config({"serving": {"budgets_ms": {"features": 20, "retrieval": 30, "total": 50}}}).serving.budgets_ms
    assert (b.features, b.retrieval, b.total) == (20.0, 30.0, 50.0)
    assert parse_config({"serving": {"budgets_ms": {"total": None}}}).serving.budgets_ms.total is None
    shipped = load_config(ROOT / "cartwise.yaml").serving.budgets_ms
    assert shipped == parse_config({}).serving.budgets_ms  # the file documents the defaults
    assert "budgets_ms" in yaml.safe_load((ROOT / "cartwise.yaml").read_text())["serving"]
    for bad, reason in (({"retrieval": -1}, "greater than 0"), ({"features": 0}, "greater than 0"),
                        ({"total": "soon"}, "valid number"), ({"ranking": 5}, "unknown key")):
        with pytest.raises(ConfigError, match=rf"serving\.budgets_ms\.\w+: .*{reason}"):
            parse_config({"serving": {"budgets_ms": bad}})


def test_a_rankers_online_read_over_the_budget_keeps_the_retrieval_order(base):
    """The learned ranker's pair reads wait at most `budgets_ms.features` too: a blocked read leaves the
    candidates in retrieval order with the ranking fallback flag, and is counted as a features overrun."""
    from serving.pipeline import FALLBACK_RANKING
    from serving.ranking import LearnedRanker

    rec = Recommender(base.bundle, base.features, config=parse_config({"serving": {"budgets_ms": {"features": 50}}}))
    assert isinstance(rec.ranker, LearnedRanker) and rec.ranker.pairs is not None
    user = str(base.bundle.history[n.USER_ID].value_counts().index[0])  # a buyer: the ranker reads pair rows
    now = SessionContext(time=pd.Timestamp(rec.ranker.spec["as_of"]).to_pydatetime())
    assert FALLBACK_RANKING not in rec.recommend(user, 5, session=now).flags  # in time: ranked
    gate, real = threading.Event(), rec.ranker.pairs.matrix

    def blocked(*a, **kw):
        assert gate.wait(30), "the test never opened the gate"
        return real(*a, **kw)

    rec.ranker.pairs.matrix = blocked
    try:
        r = rec.recommend(user, 5, session=now)
        assert FALLBACK_RANKING in r.flags and len(r.items) == 5
        assert any("ranking: online features unavailable" in w for w in r.warnings)
        assert overruns(rec, "features") == 1
    finally:
        gate.set()
    deadline = time.monotonic() + 30
    while rec._abandoned_reads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec._abandoned_reads == 0
