"""The rule-override rate: exact on a crafted request stream, the alarm's crossing and recovery,
Prometheus counters in a private registry, the rolling window and thread safety."""
from __future__ import annotations

import datetime as dt
import logging
import threading

import numpy as np
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from cartwise.config import parse_config
from serving.candidates import Candidates
from serving.overrides import OverrideTracker
from serving.rules import RuleChain, RuleContext

T0 = dt.datetime(2024, 11, 1, tzinfo=dt.timezone.utc)
K = 5
CHAIN = RuleChain.from_config(parse_config({"rules": [
    {"type": "out_of_stock"},
    {"type": "block", "items": ["top"], "flag": "restricted"},
]}).rules)
IDS = ["top", "a", "b", "c", "d", "e", "f"]


def _candidates(b_in_stock: bool = True) -> Candidates:
    stock = np.ones(len(IDS), dtype=bool)
    stock[2] = b_in_stock
    return Candidates.from_lists(IDS, np.linspace(1.0, 0.4, len(IDS)), "two_tower",
                                 ["x", "y", "z", "x", "y", "z", "x"], {"in_stock": stock})


def _serve(tracker: OverrideTracker, restricted: bool = False, b_in_stock: bool = True):
    c = _candidates(b_in_stock)
    ctx = RuleContext(T0, "DE", {"restricted"} if restricted else set())
    out, fired = CHAIN.apply(c, ctx, K)
    return tracker.record(c.head(K), out, fired, K)


def _value(reg: CollectorRegistry, name: str, **labels) -> float | None:
    return reg.get_sample_value(name, labels)


def test_crafted_stream_rate_alarm_and_recovery(caplog):
    # 200 requests; request j (1-based) carries `restricted` when floor(3j / 20) steps up, so after n
    # requests floor(3n / 20) <= 0.15 n had their top item blocked: never above the threshold on the
    # way, exactly 30 of 200 = 0.15 at the end (not above: no alarm). (3 in a row per 20 would cross
    # early: 16 of 101.) Requests with j % 10 == 5 (never a restricted one: those have j % 10 in
    # {0, 4, 7}) have b (3rd) out of stock: out_of_stock fires in 20 requests without touching the top item.
    reg = CollectorRegistry()
    tr = OverrideTracker(threshold=0.15, window=1000, registry=reg, min_requests=100, rules=CHAIN.names)
    caplog.set_level(logging.INFO, logger="serving.overrides")
    for j in range(1, 201):
        restricted = 3 * j // 20 > 3 * (j - 1) // 20
        rec = _serve(tr, restricted=restricted, b_in_stock=j % 10 != 5)
        assert rec.top1_changed == restricted and not (restricted and j % 10 == 5)
    assert tr.rate() == 0.15 and not tr.alarm
    rates = tr.rule_rates()
    assert rates["block"] == {"fired": 0.15, "override": 0.15}
    assert rates["out_of_stock"] == {"fired": 0.10, "override": 0.0}
    st = tr.status()
    assert st["status"] == "ok" and "warning" not in st and st["requests"] == 200
    # blocked requests keep 4 of 5 (top dropped, f comes in), out-of-stock ones too (b dropped):
    # mean overlap = (30 x 0.8 + 20 x 0.8 + 150 x 1) / 200 = 0.95
    assert st["topk_overlap"] == pytest.approx(0.95)
    assert not caplog.records

    # one more blocked request: 31/201 > 0.15 -> alarm, one warning; 10 more keep it on without repeating it
    _serve(tr, restricted=True)
    assert tr.alarm and tr.status()["status"] == "warning" and "warning" in tr.status()
    for _ in range(10):
        _serve(tr, restricted=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "block 31" in warnings[0].getMessage()

    # 41 overrides: below again once 41 / n <= 0.15, i.e. n >= 274 (273.3...): 63 clean requests after 211
    for _ in range(62):
        _serve(tr)
    assert tr.alarm  # 41 / 273 = 0.1502
    _serve(tr)
    assert not tr.alarm and tr.status()["status"] == "ok"  # 41 / 274 = 0.1496
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]

    # a second crossing warns again (once per crossing)
    for _ in range(5):
        _serve(tr, restricted=True)
    assert tr.alarm and sum(r.levelno == logging.WARNING for r in caplog.records) == 2

    assert _value(reg, "cartwise_rules_requests_total") == 279
    assert _value(reg, "cartwise_rules_overrides_total") == 46
    assert _value(reg, "cartwise_rules_fired_total", rule="block") == 46
    assert _value(reg, "cartwise_rules_fired_total", rule="out_of_stock") == 20
    assert _value(reg, "cartwise_rules_rule_overrides_total", rule="block") == 46
    assert _value(reg, "cartwise_rules_rule_overrides_total", rule="out_of_stock") == 0
    assert _value(reg, "cartwise_rules_override_rate") == pytest.approx(46 / 279)
    assert _value(reg, "cartwise_rules_override_alarm") == 1


def test_no_alarm_before_min_requests_and_the_window_rolls():
    tr = OverrideTracker(threshold=0.15, window=100, min_requests=10)
    for _ in range(9):
        tr.record(["a"], ["b"], ["pin"])
    assert tr.rate() == 1.0 and not tr.alarm  # 9 < min_requests
    tr.record(["a"], ["b"], ["pin"])
    assert tr.alarm
    for _ in range(100):
        tr.record(["a"], ["a"], [])
    assert tr.rate() == 0.0 and not tr.alarm and tr.rule_rates() == {}  # the overrides left the window
    assert tr.status()["requests"] == 100


def test_record_details():
    tr = OverrideTracker()
    rec = tr.record(["a", "b", "c"], ["b", "c", "d"], ["x", "x"], k=3)
    assert rec.top1_changed and rec.overlap == pytest.approx(2 / 3) and rec.fired == ("x",)
    assert tr.record(["a"], [], ["block"]).top1_changed  # an emptied list changed the top item
    rec = tr.record([], [], [])
    assert not rec.top1_changed and rec.overlap == 1.0
    c = Candidates.from_lists(["a", "b"], [2, 1])
    assert not tr.record(c, c.head(1), [], k=2).top1_changed
    assert tr.record(c, c.head(1), [], k=2).overlap == 0.5


def test_private_registries_and_config():
    a, b = OverrideTracker(), OverrideTracker(registry=CollectorRegistry())  # no duplicate-timeseries clash
    a.record(["x"], ["y"], ["pin"])
    assert a.registry.get_sample_value("cartwise_rules_requests_total") == 1
    assert b.registry.get_sample_value("cartwise_rules_requests_total") == 0
    assert prometheus_client.REGISTRY.get_sample_value("cartwise_rules_requests_total") is None
    cfg = parse_config({"serving": {"override_alarm_rate": 0.2, "override_window": 500, "override_min_requests": 50}})
    tr = OverrideTracker.from_config(cfg.serving, rules=["pin"])
    assert (tr.threshold, tr.window, tr.min_requests) == (0.2, 500, 50)
    assert tr.registry.get_sample_value("cartwise_rules_fired_total", {"rule": "pin"}) == 0
    with pytest.raises(ValueError):
        OverrideTracker(threshold=1.5)


def test_thread_safe_counts():
    # 4 threads x 500 requests, every 5th overridden: exactly 400 of 2000
    reg = CollectorRegistry()
    tr = OverrideTracker(window=5000, registry=reg, min_requests=1, threshold=0.5)

    def work():
        for j in range(500):
            tr.record(["a"], ["b"] if j % 5 == 0 else ["a"], ["pin"] if j % 5 == 0 else [])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tr.rate() == 0.2 and tr.rule_rates()["pin"] == {"fired": 0.2, "override": 0.2}
    assert reg.get_sample_value("cartwise_rules_requests_total") == 2000
    assert reg.get_sample_value("cartwise_rules_fired_total", {"rule": "pin"}) == 400


def test_trackers_and_apps_keep_their_own_counts_after_import_feast():
    """`import feast` puts prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, feast/metrics.py), in
    which metric objects of one name share one stored value across registries: a Counter made after another has
    counted starts from that count (a hot-swapped bundle's tracker would start from the old one's). A fresh process
    imports feast first and shows that hazard on two plain Counters; then trackers and apps, each made after the
    previous one counted, count only their own requests: tracker a 1 then b 2, app one 3 then app two 5."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    code = textwrap.dedent("""
        import os, types
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import feast  # noqa: F401  (first, as when a script imports pipelines before serving)
        import prometheus_client.values as v
        from prometheus_client import CollectorRegistry, Counter
        assert "MultiProcess" in v.ValueClass.__qualname__, v.ValueClass
        r1, r2 = CollectorRegistry(), CollectorRegistry()
        Counter("probe", "", registry=r1).inc()
        Counter("probe", "", registry=r2)
        assert r2.get_sample_value("probe_total") == 1.0  # plain metric objects share one value

        from fastapi.testclient import TestClient
        from serving.app import create_app
        from serving.overrides import OverrideTracker
        from serving.pipeline import Recommendation, Recommended

        a = OverrideTracker(rules=["block"])
        a.record(["x"], ["y"], ["block"])
        b = OverrideTracker(rules=["block"])
        for _ in range(2):
            b.record(["x"], ["x"], [])
        for t, (req, over, fired) in ((a, (1, 1, 1)), (b, (2, 0, 0))):
            got = (t.registry.get_sample_value("cartwise_rules_requests_total"),
                   t.registry.get_sample_value("cartwise_rules_overrides_total"),
                   t.registry.get_sample_value("cartwise_rules_fired_total", {"rule": "block"}))
            assert got == (req, over, fired), got

        class Fake:
            version, titles, categories = "v1", {}, {}
            features = types.SimpleNamespace(ping=lambda: True)
            def __init__(self):
                self.tracker = OverrideTracker(rules=["block"])
                self.registry = self.tracker.registry
            def recommend(self, user_id, k, exclude=(), exclude_purchased=False, session=None):
                self.tracker.record(["I1"], ["I2"], ["block"])
                return Recommendation(user_id, [Recommended("I2", 1.0, "popularity")], "v1", [])

        apps = []
        for n in (3, 5):
            apps.append(create_app(Fake()))
            c = TestClient(apps[-1])
            for _ in range(n):
                assert c.post("/v1/recommend", json={"k": 1}).status_code == 200
        for n, app in zip((3, 5), apps):
            reg = app.state.registry
            got = (reg.get_sample_value("cartwise_rules_requests_total"),
                   reg.get_sample_value("cartwise_rules_rule_overrides_total", {"rule": "block"}),
                   reg.get_sample_value("cartwise_http_requests_total", {"endpoint": "/v1/recommend", "status": "200"}))
            assert got == (n, n, n), (n, got)
            text = TestClient(app).get("/metrics").text
            assert f"cartwise_rules_requests_total {float(n)}" in text, text
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_a_registry_refuses_a_second_tracker():
    reg = CollectorRegistry()
    OverrideTracker(registry=reg)
    with pytest.raises(ValueError, match="Duplicated"):
        OverrideTracker(registry=reg)


# --- which rule overrode: per-rule attribution from RuleStage's steps -------------------------------------------

PROMO = (T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=2))  # promotion window
PIN = (T0 + dt.timedelta(days=3), T0 + dt.timedelta(days=4))    # pin window
ATTRIBUTION = parse_config({"rules": [
    {"type": "out_of_stock"},
    {"type": "block", "items": ["top"], "flag": "restricted"},
    {"type": "promotion", "name": "promo", "items": ["c"], "factor": 10.0, "start": PROMO[0], "end": PROMO[1]},
    {"type": "pin", "name": "contract", "item": "f", "position": 1, "start": PIN[0], "end": PIN[1]},
]})


def test_overrides_are_attributed_to_the_rule_that_changed_the_top_item():
    """400 requests through the real RuleStage: the block changes the top item in every 5th, the promotion (c x 10
    over a, b: c ends first) in every 8th, the pin (f, 7th, to position 1) in every 10th when neither of the other
    two is in force that request; out_of_stock drops b (3rd) in every 4th, never the top item. Counts are exact."""
    from serving.pipeline import RuleStage

    stage = RuleStage(RuleChain.from_config(ATTRIBUTION.rules))
    reg = CollectorRegistry()
    tr = OverrideTracker(registry=reg, rules=stage.chain.names, window=10_000)
    want = {r: 0 for r in stage.chain.names}
    both = overrides = 0
    for j in range(400):
        blocked, promo, pinned = j % 5 == 0, j % 8 == 1, j % 10 == 7
        assert not (pinned and (blocked or promo)) or j in (17, 57, 97, 137, 177, 217, 257, 297, 337, 377)
        pinned = pinned and not blocked and not promo
        when = PROMO[0] if promo else PIN[0] if pinned else T0
        c = _candidates(b_in_stock=j % 4 != 2)
        out, fired, _, steps = stage.apply(c, RuleContext(when, "DE", {"restricted"} if blocked else set()), K)
        rec = tr.record(c.head(K), out, fired, K, steps=steps)
        expect = tuple(r for r, on in (("block", blocked), ("promo", promo), ("contract", pinned)) if on)
        assert rec.overridden_by == expect, (j, rec)
        assert rec.top1_changed == bool(expect) and set(expect) <= set(fired)
        for r in expect:
            want[r] += 1
        both += blocked and promo
        overrides += bool(expect)
    # 80 blocked, 50 promoted (10 of them also blocked: j = 25 mod 40... both rules changed the top item there),
    # the pin in every 10th (40) minus the ones the promotion or the block took over (j = 17 mod 40 -> promo)
    assert want == {"out_of_stock": 0, "block": 80, "promo": 50, "contract": 30} and both == 10
    assert overrides == 80 + 50 + 30 - 10
    got = {r: reg.get_sample_value("cartwise_rule_overrides_total", {"rule": r}) for r in want}
    assert got == want
    assert reg.get_sample_value("cartwise_rules_overrides_total") == overrides
    tot = tr.totals()
    assert tot["requests"] == 400 and tot["overrides"] == overrides
    assert {r: t["overrides"] for r, t in tot["rules"].items()} == want
    # out_of_stock drops b in 100 requests: b leaves the top 5, e comes in, the top item stays
    oos = tot["rules"]["out_of_stock"]
    assert (oos["fired"], oos["topk_changes"], oos["topk_out"], oos["topk_in"], oos["removed"]) == (100,) * 5
    assert reg.get_sample_value("cartwise_rule_topk_changes_total", {"rule": "out_of_stock"}) == 100
    # the pin brings f (7th) to the top: f in, one item displaced, in each of its 30 requests
    pin = tot["rules"]["contract"]
    assert (pin["topk_changes"], pin["topk_in"], pin["topk_out"]) == (30, 30, 30)
    # the promotion reorders within the top 5 (c from 4th to 1st, or 3rd after a block): no top-K change
    assert tot["rules"]["promo"]["topk_changes"] == 0 and tot["rules"]["promo"]["top1_changes"] == 50


def test_rule_effect_details():
    from serving.overrides import RuleStep, rule_effect

    e = rule_effect(RuleStep("block", ["a", "b", "c", "d"], ["b", "c", "d"]), k=2)
    assert (e.top1_changed, e.topk_changed, e.topk_out, e.topk_in, e.removed) == (True, True, 1, 1, 1)
    assert rule_effect(RuleStep("block", ["a"], []), k=2).top1_changed  # an emptied list changed the top item
    # a pin moving its item out of the top 2 (from 1st to 4th): not when another pin's item took the top
    e = rule_effect(RuleStep("late", ["p", "a", "b", "c"], ["a", "b"], item="p"), k=2)
    assert (e.top1_changed, e.topk_out, e.topk_in) == (True, 1, 1)
    e = rule_effect(RuleStep("other", ["p", "a", "b", "c"], ["a", "b"], item="zz"), k=2)
    assert not e.top1_changed and not e.topk_changed
    # without steps, nothing is attributed (the older counters still count)
    tr = OverrideTracker(rules=["x"])
    rec = tr.record(["a"], ["b"], ["x"])
    assert rec.top1_changed and rec.overridden_by == ()
    assert tr.registry.get_sample_value("cartwise_rule_overrides_total", {"rule": "x"}) == 0
    assert tr.registry.get_sample_value("cartwise_rules_rule_overrides_total", {"rule": "x"}) == 1
