"""Validate the point-in-time training set with Great Expectations; a failure stops the run.

Where it sits: build_dataset -> **validate_dataset** -> train / export.
Writes `<work_dir>/dataset/validation.json` (the verdict export requires).
"""
from __future__ import annotations

import pandas as pd

from cartwise.config import CartwiseConfig
from feature_repo import names as n
from pipelines.layout import Layout
from pipelines.manifest import write_json
from pipelines.progress import Log, default_log, step
from validation.suites import run_suite, training_set_suite

STAGE = "validate"


class ValidationFailed(RuntimeError):
    """The training set broke at least one expectation; the message lists them."""


def training_event_types(config: CartwiseConfig) -> list[str]:
    """The event types a training set may hold: those the objective weighs, and sampled negatives when it asks
    for them (this stage's suite and export's gate check the same set)."""
    weights = config.objective.event_weights
    return [k for k, w in weights.items() if w > 0] + ([n.NEGATIVE] if config.objective.negatives_per_positive else [])


def run(config: CartwiseConfig, *, log: Log = default_log) -> dict:
    """Run the training-set suite and write the verdict.

    Raises:
        ValidationFailed: any expectation failed or the validator itself failed.
    """
    layout = Layout(config.work_dir)
    df = pd.read_parquet(layout.dataset / "train.parquet")
    v = config.validation
    suite = training_set_suite(min_rows=v.min_rows, max_null_fraction=v.max_null_fraction,
                               max_weight=v.max_weight, event_types=training_event_types(config))
    with step(STAGE, f"{len(suite.expectations)} expectations on {len(df):,} training rows", log) as s:
        verdict = run_suite(df, suite, "training_set")
        s["result"] = "PASS" if verdict["success"] else "FAIL"
    write_json(layout.dataset / "validation.json", verdict)
    if not verdict["success"]:
        lines = [f"  {f['expectation']}({f['column']}): {f.get('error') or f['observed']}" for f in verdict["failures"]]
        if verdict.get("error"):
            lines.insert(0, f"  {verdict['error']}")
        raise ValidationFailed("training set failed validation:\n" + "\n".join(lines))
    return verdict
