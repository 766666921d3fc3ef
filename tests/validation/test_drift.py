"""The drift gate on real data: six kinds of bad batch are blocked, clean resamples pass.

Reference: the event log of the shipped UCI Online Retail file (read by the
real adapter, each event with its item's category), profiled as export stores
it. Each scenario changes a copy of that log the way a broken upstream feed
would; the gate (Great Expectations suite from the reference + drift
statistics, validation/gate.py) must block it and name the feature and the
statistic. Bootstrap resamples of the reference are what an unchanged feed
looks like; none may be blocked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cartwise.config import DriftConfig
from feature_repo import names as n
from pipelines.adapters.base import get_adapter
from validation import drift, gate

ROOT = Path(__file__).resolve().parents[2]
RETAIL = ROOT / "data" / "online_retail" / "online_retail_2010-12-01_2011-09-30.csv.gz"
THRESHOLDS = DriftConfig().thresholds()


@pytest.fixture(scope="module")
def retail():
    out = get_adapter("online_retail").read(RETAIL, "fail")
    frame = gate.event_log_frame(out.events.drop_duplicates(n.EVENT_ID), out.items)
    return frame, drift.profile(frame, gate.EVENT_LOG)


def _gate(frame, ref, thresholds=THRESHOLDS):
    return gate.evaluate(frame, gate.EVENT_LOG, reference=ref, thresholds=thresholds, min_rows=1)


def _failed(v) -> set[tuple[str, str]]:
    return {(f["feature"], f["statistic"]) for f in v["failures"]}


def _price_shift(df, rng):
    out = df.copy()
    out[n.UNIT_PRICE] = out[n.UNIT_PRICE] * 1.5
    return out


def _new_categories(df, rng):
    out = df.copy()
    idx = rng.choice(len(out), int(np.ceil(0.01 * len(out))), replace=False)
    out[n.CATEGORY] = out[n.CATEGORY].astype(object)
    out.iloc[idx, out.columns.get_loc(n.CATEGORY)] = rng.choice(["garden furniture", "pet food"], len(idx))
    return out


def _null_spike(df, rng):
    out = df.copy()
    idx = rng.choice(len(out), int(0.05 * len(out)), replace=False)
    out.iloc[idx, out.columns.get_loc(n.UNIT_PRICE)] = np.nan
    return out


SCENARIOS = {
    # scenario: (make the batch, (feature, statistic) the verdict must name)
    "price_mean_+50%": (_price_shift, (n.UNIT_PRICE, "ks")),
    "new_categories_1%": (_new_categories, (n.CATEGORY, "new_category_share")),
    "null_spike_5pts": (_null_spike, (n.UNIT_PRICE, "null_fraction_change")),
    "renamed_column": (lambda df, rng: df.rename(columns={n.UNIT_PRICE: "price_per_unit"}),
                       (n.UNIT_PRICE, "column_missing")),
    "retyped_column": (lambda df, rng: df.astype({n.QUANTITY: "string"}), (n.QUANTITY, "dtype")),
    "rows_collapsed_to_10%": (lambda df, rng: df.sample(frac=0.1, random_state=3), ("<table>", "row_ratio_min")),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_drift_scenario_is_blocked_naming_feature_and_statistic(retail, name):
    frame, ref = retail
    make, expected = SCENARIOS[name]
    v = _gate(make(frame, np.random.default_rng(0)), ref)
    assert v["status"] == gate.BLOCKED and not v["success"], v.get("error")
    assert expected in _failed(v), sorted(_failed(v))


def test_scenario_statistics_are_far_from_the_thresholds(retail):
    """The blocking statistics of the shifts, next to what the same statistic is on a clean resample."""
    frame, ref = retail
    rng = np.random.default_rng(0)
    clean = drift.compare(ref, frame.sample(frac=1.0, replace=True, random_state=0), THRESHOLDS)
    value = lambda d, f, s: next(c["value"] for c in d["checks"] if c["feature"] == f and c["statistic"] == s)  # noqa
    shifted = drift.compare(ref, _price_shift(frame, rng), THRESHOLDS)
    assert value(shifted, n.UNIT_PRICE, "ks") > 4 * THRESHOLDS["max_ks"] > 40 * value(clean, n.UNIT_PRICE, "ks")
    newcat = drift.compare(ref, _new_categories(frame, rng), THRESHOLDS)
    assert value(newcat, n.CATEGORY, "new_category_share") >= 0.01 > THRESHOLDS["max_new_category_share"]
    assert value(clean, n.CATEGORY, "new_category_share") == 0.0


def test_validator_raising_blocks(retail, monkeypatch):
    import validation.suites as suites

    frame, ref = retail

    def broken(*a, **k):
        raise RuntimeError("GE context could not be created")

    monkeypatch.setattr(suites, "ephemeral_context", broken)
    v = _gate(frame, ref)
    assert v["status"] == gate.ERROR and not v["success"] and "GE context" in v["error"]


def test_drift_statistics_raising_blocks(retail, monkeypatch):
    frame, ref = retail
    monkeypatch.setattr(drift, "psi", lambda *a: 1 / 0)
    v = _gate(frame.head(5000), ref)
    assert v["status"] == gate.ERROR and "ZeroDivisionError" in v["error"]


def test_missing_threshold_and_empty_batch_block(retail):
    frame, ref = retail
    sample = frame.sample(n=20_000, random_state=0)
    no_psi = {**THRESHOLDS, "max_psi": None}
    v = _gate(sample, ref, no_psi)
    assert v["status"] == gate.BLOCKED
    assert {f["feature"] for f in v["failures"] if f["statistic"] == "psi"} >= {n.UNIT_PRICE, n.QUANTITY}
    empty = _gate(frame.iloc[:0], ref)
    assert empty["status"] == gate.BLOCKED and empty["error"] == "empty batch"


def test_suite_that_evaluates_fewer_expectations_than_it_holds_is_an_error(retail, monkeypatch):
    """GE silently dropping an expectation must not read as a pass."""
    from great_expectations.core import ExpectationSuiteValidationResult

    frame, ref = retail
    original = ExpectationSuiteValidationResult.__init__

    def drop_one(self, *a, **k):
        original(self, *a, **k)
        self.results = self.results[:-1]

    monkeypatch.setattr(ExpectationSuiteValidationResult, "__init__", drop_one)
    v = _gate(frame.head(2000), ref)
    assert v["status"] == gate.ERROR and "evaluated" in v["error"]


def _resamples(retail, count):
    frame, ref = retail
    blocked = []
    for seed in range(count):
        v = _gate(frame.sample(frac=1.0, replace=True, random_state=100 + seed), ref)
        if not v["success"]:
            blocked.append((seed, v["status"], sorted(_failed(v)), v.get("error")))
    return blocked


def test_clean_resamples_pass(retail):
    assert _resamples(retail, 3) == []


@pytest.mark.slow
def test_twenty_clean_resamples_pass(retail):
    assert _resamples(retail, 20) == []


def test_statistics_known_answers():
    # identical distributions: zero; disjoint: JS = 1 bit; PSI of (0.5, 0.5) vs (0.9, 0.1)
    # = 0.4 ln(1.8) + (-0.4) ln(0.2) = 0.2351 + 0.6438 = 0.8789
    assert drift.js_divergence({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0.0
    assert drift.js_divergence({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    assert drift.psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.8789, abs=1e-4)
    # KS on quantiles: shifting 0..99 by +10 moves the CDF by 0.10 at every inner point
    v = np.arange(100, dtype=float)
    grid = np.quantile(v, drift.PERCENTILES)
    assert drift.ks_on_quantiles(grid, drift._cdf(v, grid), v + 10) == pytest.approx(0.10, abs=0.011)
    df = pd.DataFrame({n.EVENT_TIMESTAMP: pd.date_range("2011-01-01", periods=10, freq="D", tz="UTC"),
                       "x": np.arange(10.0), "c": list("aabbccddee")})
    ref = drift.profile(df, "t")
    assert ref["columns"]["x"]["kind"] == "numeric" and ref["columns"]["c"]["kind"] == "categorical"
    same = drift.compare(ref, df, THRESHOLDS)
    assert same["failures"] == [] and len(same["checks"]) == 2 + 1 + 3 + 3  # table (2), time (null), x (null, psi, ks), c (null, js, new)
