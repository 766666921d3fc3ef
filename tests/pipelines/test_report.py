"""The HTML report: self-contained, every section present, missing keys degrade to a note."""
import base64
import copy
import json
import re

import pytest

from pipelines import report
from pipelines.report import write_report


def _row(scale: float) -> dict:
    return {"users": 1301, "ndcg@10": 0.3 * scale, "hit_rate@10": 0.8 * scale, "recall@10": 0.2 * scale,
            "map@10": 0.15 * scale, "coverage@10": 0.1, "revenue_hit_rate@10": 0.25 * scale,
            "ndcg@50": 0.35 * scale, "hit_rate@50": 0.9 * scale, "recall@50": 0.4 * scale,
            "map@50": 0.12 * scale, "coverage@50": 0.3, "revenue_hit_rate@50": 0.45 * scale}


METRICS = {
    "all_items": {"model": _row(1.0), "popularity": _row(0.4), "repeat": _row(1.1),
                  "item_knn": _row(1.2), "ease": _row(0.9)},
    "new_to_user": {"model": _row(0.5), "popularity": _row(0.2), "repeat": _row(0.2),
                    "item_knn": _row(0.45), "ease": _row(0.5)},
    "cohorts": {"cold_items": {"model": {"users": 120, "recall@50": 0.05},
                               "popularity": {"users": 120, "recall@50": 0.0}},
                "light_users": {"model": {"users": 300, "recall@50": 0.2, "ndcg@10": 0.1}}},
    "coverage_curve": {"model": [[10, 0.1], [50, 0.3], [100, 0.45]], "popularity": [[10, 0.003], [50, 0.015]]},
    "category_spread": {"model": {"distinct@10": 3.2, "top_share@10": 0.55},
                        "popularity": {"distinct@10": 2.0, "top_share@10": 0.8}},
    "candidates": {"recall@k": {"100": 0.31, "300": 0.5}, "ranking_ndcg@10_given_candidates": 0.21},
    "scores": {"model": [0.1 * i for i in range(100)], "ease": [0.01 * i for i in range(-50, 50)]},
    "training": {"retrieval": [{"epoch": 1, "loss": 900.0, "examples_per_s": 12000.0},
                               {"epoch": 2, "loss": 850.0, "examples_per_s": 13000.0}],
                 "ranking": [{"epoch": 1, "loss": 0.3, "examples_per_s": 30000.0}]},
    "rule_overrides": {"bundle": "20240101T000000Z", "k": 10, "requests": 1301, "overrides": 91,
                       "top1_override_rate": 0.0699, "mean_topk_overlap": 0.93, "alarm_threshold": 0.15,
                       "business_rules": ["block", "black_friday"], "diversity": "max_per_category",
                       "flags": {"cold_start:unknown_user": 3}, "note": "The rules changed the top item in 7.0%.",
                       "by_rule": {"block": {"kind": "filter", "top1_override_rate": 0.0538, "fired_share": 0.08,
                                             "topk_change_share": 0.08, "topk_out_per_request": 0.09,
                                             "topk_in_per_request": 0.09, "removed_per_request": 1.5},
                                   "black_friday": {"kind": "reweight", "top1_override_rate": 0.0161,
                                                    "fired_share": 0.2, "topk_change_share": 0.05,
                                                    "topk_out_per_request": 0.06, "topk_in_per_request": 0.06,
                                                    "removed_per_request": 0.0}}},
    "test_users": 1301, "test_purchases": 82780,
    "split": {"train_end": "2011-07-31", "test_end": "2011-09-30"},
}
SECTIONS = ("All items", "New to the user", "Metrics by cohort", "Coverage curves", "Category spread",
            "Business rules: how often they override the model", "Candidate generation", "Score distributions",
            "Training curves")


@pytest.fixture
def no_render(monkeypatch):
    """Figures are still built but not rendered to PNG (the full report test renders them): keeps tests quick."""
    monkeypatch.setattr(report, "_img", lambda fig, alt: f'<img alt="{alt}">')


def test_full_report_is_self_contained(tmp_path):
    out = write_report(METRICS, tmp_path / "sub" / "report.html")
    assert out == tmp_path / "sub" / "report.html" and out.is_file()
    doc = out.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f">{title}" in doc
    assert "Not available" not in doc
    # 2 variant charts + 2 cohort charts + coverage + rule overrides + scores + training = 8 figures, inline PNGs
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    assert len(images) == 8
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    # nothing fetched: no external URLs, scripts or stylesheets
    assert not re.search(r'(src|href)="(?!data:)', doc)
    assert "<script" not in doc and "http://" not in doc and "https://" not in doc
    # table values, the MAP and revenue columns, and cohort / candidate figures are there
    for text in ("MAP@10", "Revenue hit rate@50", "item_knn", "ease", "cold_items", "light_users",
                 "candidate recall@300", "0.5000", "82,780", "2011-07-31",
                 "black_friday", "top-1 override rate", "0.0538", "The rules changed the top item in 7.0%."):
        assert text in doc
    # best per column is marked: item_knn has the highest all-items NDCG@10 (0.3 x 1.2 = 0.36)
    assert '<td class="best">0.3600</td>' in doc


@pytest.mark.parametrize("key", ["all_items", "new_to_user", "cohorts", "coverage_curve", "category_spread",
                                 "rule_overrides", "candidates", "scores", "training"])
def test_missing_key_gives_not_available(tmp_path, key, no_render):
    m = copy.deepcopy(METRICS)
    del m[key]
    doc = write_report(m, tmp_path / "r.html").read_text(encoding="utf-8")
    assert doc.count("Not available") == 1
    assert f'no &quot;{key}&quot;' in doc


def test_empty_metrics_still_writes_every_section(tmp_path):
    doc = write_report({}, tmp_path / "r.html").read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f">{title}" in doc
    # overview + 9 sections
    assert doc.count("Not available") == 10
    assert "data:image/png" not in doc


def test_malformed_section_does_not_stop_the_report(tmp_path, no_render):
    m = copy.deepcopy(METRICS)
    m["coverage_curve"] = {"model": [[10]]}  # a pair without coverage
    m["training"] = {"retrieval": [{"epoch": 1}]}  # no loss recorded: plotted as "not recorded"
    doc = write_report(m, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Not available: could not be drawn (ValueError" in doc
    assert doc.count("Not available") == 1
    assert "New to the user" in doc and "Training curves" in doc


def test_reads_a_metrics_json_round_trip(tmp_path, no_render):
    # what evaluate writes is JSON: string keys and lists, no tuples
    m = json.loads(json.dumps(METRICS))
    m["new_to_user"]["model<script>"] = m["new_to_user"].pop("model")
    doc = write_report(m, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "model&lt;script&gt;" in doc and "<script" not in doc
