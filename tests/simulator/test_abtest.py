"""The A/B harness: its interval is calibrated (A/A), it detects a real difference (oracle vs random),
the analysis has the known answer on hand-made data, and the bundle arm runs the real serving pipeline.
"""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from simulator import abtest
from simulator.config import parse_simulation

TINY_WORLD = {"shoppers": 800, "items": 200, "days": 7, "categories": 5}


def _run(tmp_path, control, treatment, seed, days=14, world=TINY_WORLD, report=False, **ab):
    sim = parse_simulation({"world": world, "abtest": {"days": days, "control": {"policy": control},
                                                       "treatment": {"policy": treatment}, **ab}})
    return abtest.run(sim, seed, tmp_path / f"{control}-{treatment}-{seed}", log=lambda s: None,
                      write_report=report)


def test_lift_and_interval_on_hand_made_sessions():
    # 400 shoppers per arm and stratum-free: control shoppers spend 10 or 0 per session
    # (alternating), treatment shoppers 12 or 0: lift exactly +20%.
    rows = []
    for arm, value in (("control", 10.0), ("treatment", 12.0)):
        for u in range(400):
            rows.append({"arm": arm, "stratum": "returning/low", "user": f"{arm}{u}",
                         "revenue": value if u % 2 else 0.0})
    res = abtest.lift(pd.DataFrame(rows))
    assert res["lift"] == pytest.approx(0.2)
    lo, hi = res["lift_ci"]
    assert lo < 0.2 < hi
    # se of each arm's mean is 5% (sd = mean, 400 shoppers) -> log-ratio se ~7%, interval about +-14%
    assert 0.08 < hi - 0.2 < 0.25 and 0.08 < 0.2 - lo < 0.25


def test_the_stratified_estimate_ignores_a_stratum_imbalance():
    # treatment got more high-value shoppers, but within each stratum both arms earn the same
    rows = []
    for arm, n_high in (("control", 100), ("treatment", 300)):
        for u in range(400):
            high = u < n_high
            rows.append({"arm": arm, "stratum": "returning/high" if high else "returning/low",
                         "user": f"{arm}{u}", "revenue": (20.0 if high else 2.0) * (u % 2)})
    res = abtest.lift(pd.DataFrame(rows))
    assert abs(res["lift"]) < 1e-9


def test_assignment_is_balanced_within_every_stratum():
    a = abtest.StratifiedAssigner(seed=5, treatment_share=0.5)
    rng = np.random.default_rng(0)
    users = np.arange(4000)
    new, high = rng.random(4000) < 0.3, rng.random(4000) < 0.2
    arms = a.assign(users, new, high)
    for nw in (False, True):
        for hi in (False, True):
            m = (new == nw) & (high == hi)
            # permuted blocks of 20: at most 10 off balance in each stratum
            assert abs(arms[m].sum() - m.sum() / 2) <= 10
    assert (a.assign(users, new, high) == arms).all()  # sticky


def test_oracle_beats_random_by_a_large_significant_margin(tmp_path):
    res = _run(tmp_path, "random", "oracle", seed=11, report=True)
    assert res["revenue_per_session_lift"] > 1.0
    assert res["lift_ci95"][0] > 0.5
    assert res["conversion"]["treatment"] > res["conversion"]["control"]
    assert set(res["strata"]) <= set(abtest.STRATA) and len(res["strata"]) == 4
    assert len(res["daily"]) == 14
    out = tmp_path / "random-oracle-11"
    assert json.loads((out / "abtest.json").read_text())["revenue_per_session_lift"] == res["revenue_per_session_lift"]
    html = (out / "report.html").read_text()
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html).group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_new_policy_shows_a_novelty_spike_that_fades(tmp_path):
    # the oracle shows items the organic listings rarely showed: CTR is highest in the first days
    res = _run(tmp_path, "popular", "oracle", seed=4, days=21)
    ctr = [d["treatment"]["ctr"] for d in res["daily"]]
    assert np.mean(ctr[:3]) > 1.1 * np.mean(ctr[-7:])


#: Large enough for a few hundred purchasing sessions per arm: with ~150 (1,500 shoppers) the
#: delta-method interval was measured too narrow (9% false positives over 300 A/A runs), with
#: 5,000 shoppers it holds its level (README, "Shop simulator and A/B test").
AA_WORLD = {"shoppers": 5000, "items": 300, "days": 7}


def _aa_rate(tmp_path, seeds) -> tuple[float, np.ndarray]:
    sig, p = [], []
    for s in seeds:
        res = _run(tmp_path, "popular", "popular", seed=s, days=14, world=AA_WORLD)
        sig.append(res["significant"])
        p.append(res["p_value"])
    return float(np.mean(sig)), np.asarray(p)


def test_aa_tests_are_rarely_significant(tmp_path):
    rate, p = _aa_rate(tmp_path, range(100, 116))
    # at a calibrated 5% level, P(4 or more of 16) = 0.7%; an interval ignoring that shoppers
    # return (sessions as independent) or the revenue's skew fails this far more often
    assert rate <= 3 / 16, rate
    assert 0.2 < np.median(p) < 0.8  # p-values spread out, not all tiny or all 1


@pytest.mark.slow
def test_aa_false_positive_rate_is_about_five_percent(tmp_path):
    rate, p = _aa_rate(tmp_path, range(1000, 1300))
    # 300 runs: sd of the rate at 5% is 1.3 points
    assert 0.02 <= rate <= 0.085, rate
    assert 0.06 <= np.mean(p < 0.1) <= 0.15


def test_the_experiment_continues_exactly_the_history_simulate_writes(tmp_path):
    from simulator.world import simulate

    world = {"shoppers": 600, "items": 100, "days": 10, "categories": 4}
    sim = parse_simulation({"world": world, "abtest": {"days": 2, "control": {"policy": "popular"},
                                                       "treatment": {"policy": "repeat"}}})
    abtest.run(sim, 9, tmp_path / "ab", log=lambda s: None, write_report=False)
    simulate(sim.world, 9, tmp_path / "sim", log=lambda s: None)
    a = pd.read_parquet(tmp_path / "ab" / "history" / "events.parquet")
    b = pd.read_parquet(tmp_path / "sim" / "events.parquet")
    pd.testing.assert_frame_equal(a, b)
    # no event in the history is dated after its last day (returns wait for their day)
    assert a["event_timestamp"].max() < pd.Timestamp(sim.world.start_date, tz="UTC") + pd.Timedelta(days=10)
