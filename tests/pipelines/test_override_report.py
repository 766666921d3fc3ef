"""The offline rule-override report on the synthetic shop's real bundle: every test user through the real serving
pipeline with a block, a promotion, diversity and a pin, the per-rule counts checked against a recount made
independently from the served lists of the same pipeline without rules; then the metrics.json key and the report
section, and the plain note for a bundle without rules."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from cartwise.bundle import current_bundle
from cartwise.config import parse_config
from pipelines import override_report
from serving.pipeline import SERVING_SECTIONS, Recommender

pytestmark = pytest.mark.integration
FACTOR = 50.0
K = 10


@pytest.fixture(scope="module")
def shop(trained_shop):
    cfg, *_ = trained_shop
    base = Recommender.from_bundle_dir(current_bundle(cfg.work_dir / "bundles"))
    raw = json.loads((base.bundle.root / "config.json").read_text())
    serving = {s: raw[s] for s in SERVING_SECTIONS if s in raw}
    return cfg, base, serving, override_report.test_users(cfg)


def _with(base: Recommender, raw: dict) -> Recommender:
    """The same bundle, features and ranker (whatever the bundle serves with), other rules."""
    return Recommender(base.bundle, base.features, config=parse_config(raw), ranker=base.ranker)


def _boost(s: float) -> float:
    return s * FACTOR if s >= 0 else s / FACTOR


def test_per_rule_counts_match_a_recount_from_the_served_lists(shop):
    cfg, base, serving, users = shop
    assert len(users) >= 20
    plain = _with(base, {**serving, "rules": [], "diversity": {"method": "none"}})
    depth = plain.config.retrieval.k
    # the model's whole ranked list per user: (id, score) best first (no rules, no diversity: the ranker's order)
    lists = {u: [(i.item_id, i.score) for i in plain.recommend(u, depth).items] for u in users}
    cat = base.categories
    tops = Counter(cat[lst[0][0]] for lst in lists.values())
    blocked = tops.most_common()[1][0] if len(tops) > 1 else tops.most_common()[0][0]  # not every user's top
    lower = Counter(cat[i] for lst in lists.values() for i, _ in lst[1:K] if cat[i] != blocked)
    promoted = lower.most_common(1)[0][0]
    below = Counter(i for lst in lists.values() for i, _ in lst[1:] if cat[i] not in (blocked, promoted))
    pinned = min(below, key=lambda i: (abs(below[i] - len(users) / 2), i))  # in about half the users' candidates
    rules = [{"type": "block", "name": "regulation", "categories": [blocked]},
             {"type": "promotion", "name": "promo", "categories": [promoted], "factor": FACTOR},
             {"type": "pin", "name": "contract", "item": pinned, "position": 1}]
    rec = _with(base, {**serving, "rules": rules, "diversity": {"method": "max_per_category", "max_per_category": 2}})

    section = override_report.measure(rec, users, K)

    # the recount, from the lists alone: each rule's step on the model's list, in chain order
    want = Counter()
    overrides = 0
    for u in users:
        model = lists[u]
        after_block = [(i, s) for i, s in model if cat[i] != blocked]
        boosted = [(i, _boost(s) if cat[i] == promoted else s) for i, s in after_block]
        after_promo = sorted(boosted, key=lambda x: -x[1])  # stable: ties keep list order
        first = [x[0] for x in (model, after_block, after_promo) if x]
        changed = {"regulation": not after_block or first[0] != first[1],
                   "promo": bool(after_promo) and after_promo[0][0] != after_block[0][0],
                   "contract": any(i == pinned for i, _ in after_promo) and after_promo[0][0] != pinned}
        served = [i.item_id for i in rec.recommend(u, K).items]
        # diversity keeps the top item; the pin puts its item first when it is a candidate
        assert served[0] == (pinned if any(i == pinned for i, _ in after_promo) else after_promo[0][0]), u
        if served[0] != model[0][0]:
            overrides += 1
            want.update(r for r, c in changed.items() if c)
    n = len(users)
    assert section["requests"] == n and section["overrides"] == overrides
    assert section["top1_override_rate"] == pytest.approx(overrides / n)
    got = {r: v["overrides"] for r, v in section["by_rule"].items()}
    assert got == {"regulation": want["regulation"], "promo": want["promo"], "contract": want["contract"],
                   "diversity": 0}
    assert all(got[r] > 0 for r in ("regulation", "promo", "contract")), got  # the rules really acted
    assert section["by_rule"]["diversity"]["fired"] > 0  # it reordered, and never moved the top item
    # the tracker measured the same requests twice (measure, then the recount's recommend calls): same counts
    tot = rec.tracker.totals()
    assert tot["requests"] == 2 * n and {r: t["overrides"] for r, t in tot["rules"].items()} == \
        {r: 2 * c for r, c in got.items()}
    assert 0 < section["mean_topk_overlap"] < 1
    assert section["by_rule"]["regulation"]["removed_per_request"] > 0


def test_the_section_lands_in_metrics_json_and_the_report(shop, tmp_path):
    cfg, base, serving, users = shop
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    shutil.copy(cfg.work_dir / "evaluation" / "metrics.json", evaluation / "metrics.json")
    rec = _with(base, {**serving, "rules": [{"type": "block", "name": "regulation",
                                             "items": [base.bundle.popular[0]]}]})
    lines = []
    section = override_report.run(cfg, rec, users=users[:30], k=K, evaluation_dir=evaluation, log=lines.append)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["rule_overrides"] == json.loads(json.dumps(section)) and "all_items" in metrics
    doc = (evaluation / "report.html").read_text()
    assert "Business rules: how often they override the model" in doc and "regulation" in doc
    assert f"{section['top1_override_rate']:.4f}" in doc and doc.count("data:image/png") >= 2
    assert any("regulation" in line and "top-1 overrides" in line for line in lines)

    # the bundle as exported (no rules): said plainly, and nothing fires
    quiet = override_report.measure(base, users[:30], K)
    assert quiet["business_rules"] == [] and quiet["overrides"] == 0 and quiet["top1_override_rate"] == 0.0
    assert "declares no business rules" in quiet["note"]
    doc = override_report.add_to_evaluation(quiet, evaluation).read_text()
    assert "declares no business rules" in doc
