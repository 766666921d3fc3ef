"""Great Expectations 1.x suites by dataset name, and a fail-closed runner.

Where it sits: build_dataset (training set) -> **validation** -> export.
`pipelines/validate_dataset.py` runs :func:`training_set_suite` on the
point-in-time training set; export refuses to run without a passing verdict.

Fail-closed: a suite that raises, evaluates fewer expectations than it holds,
or meets an empty batch yields a failing verdict, never a pass.
"""
from __future__ import annotations

from typing import Any, Iterable

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from feature_repo import names as n

COUNT_FEATURES = (n.USER_PURCHASE_COUNT, n.USER_ORDER_COUNT, n.USER_DISTINCT_ITEMS, n.USER_DAYS_ACTIVE,
                  n.ITEM_PURCHASE_COUNT, n.ITEM_BUYER_COUNT)
MONEY_FEATURES = (n.USER_REVENUE, n.USER_AVG_ORDER_VALUE, n.ITEM_REVENUE, n.PRICE)


def ephemeral_context():
    """A fresh in-memory GE context (no files), progress bars off; suites need one to exist."""
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def training_set_suite(*, min_rows: int, max_null_fraction: float, max_weight: float,
                       event_types: Iterable[str], name: str = "training_set") -> gx.ExpectationSuite:
    """Expectations of a point-in-time training set.

    Args:
        min_rows: fewest rows a usable training set has.
        max_null_fraction: largest share of nulls allowed in any key or feature column.
        max_weight: largest sample weight allowed (weights must also be > 0).
        event_types: event types allowed as labels.
        name: suite name.

    Returns:
        The suite: schema (columns present), row count, keys and features not
        null, weights in (0, max_weight], counts and money non-negative,
        event types in the allowed set.
    """
    ephemeral_context()
    e = gx.expectations
    mostly = 1.0 - max_null_fraction
    suite = gx.ExpectationSuite(name=name)
    suite.add_expectation(e.ExpectTableRowCountToBeBetween(min_value=min_rows))
    keys = (n.EVENT_ID, n.USER_ID, n.ITEM_ID, n.EVENT_TYPE, n.EVENT_TIMESTAMP, n.WEIGHT)
    for col in (*keys, *COUNT_FEATURES, *MONEY_FEATURES, n.CATEGORY):
        suite.add_expectation(e.ExpectColumnToExist(column=col))
        suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=col, mostly=mostly))
    suite.add_expectation(e.ExpectColumnValuesToBeBetween(column=n.WEIGHT, min_value=0, max_value=max_weight,
                                                          strict_min=True))
    for col in (*COUNT_FEATURES, *MONEY_FEATURES):
        suite.add_expectation(e.ExpectColumnValuesToBeBetween(column=col, min_value=0))
    suite.add_expectation(e.ExpectColumnValuesToBeInSet(column=n.EVENT_TYPE, value_set=sorted(event_types)))
    suite.add_expectation(e.ExpectColumnValuesToBeUnique(column=n.EVENT_ID))
    return suite


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items() if k not in ("partial_unexpected_index_list",)}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v[:10]]
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def run_suite(df: pd.DataFrame, suite: gx.ExpectationSuite, dataset: str) -> dict:
    """Validate `df` against `suite` in an ephemeral GE context.

    Args:
        df: the batch.
        suite: expectations to evaluate.
        dataset: name recorded in the verdict.

    Returns:
        A JSON-serializable verdict: `success`, `statistics`, `failures`
        (expectation, column, observed) and every result.
    """
    expected = len(suite.expectations)
    verdict: dict[str, Any] = {"dataset": dataset, "suite": suite.name, "expectations": expected,
                               "rows": int(len(df)), "success": False, "failures": [], "results": []}
    if df.empty:
        verdict["error"] = "empty batch"
        return verdict
    try:
        ctx = ephemeral_context()
        asset = ctx.data_sources.add_pandas(f"{dataset}_source").add_dataframe_asset(dataset)
        batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": df})
        result = batch.validate(suite)
    except Exception as exc:  # fail closed: a validator that raises blocks export
        verdict["error"] = f"validator raised {type(exc).__name__}: {exc}"
        return verdict
    for r in result.results:
        cfg = r.expectation_config
        row = {"expectation": cfg.type, "column": cfg.kwargs.get("column"), "success": bool(r.success),
               "observed": _json_safe(r.result)}
        if r.exception_info and r.exception_info.get("raised_exception"):
            row["success"] = False
            row["error"] = str(r.exception_info.get("exception_message"))
        verdict["results"].append(row)
        if not row["success"]:
            verdict["failures"].append(row)
    evaluated = len(verdict["results"])
    verdict["statistics"] = _json_safe(dict(result.statistics))
    if evaluated < expected:
        verdict["error"] = f"suite evaluated {evaluated} of {expected} expectations"
    verdict["success"] = bool(result.success) and not verdict["failures"] and evaluated == expected
    return verdict
