"""Great Expectations 1.x suites by dataset name, and a fail-closed runner.

Where it sits: build_dataset (training set) -> **validation** -> export.
`pipelines/validate_dataset.py` runs :func:`training_set_suite` on the
point-in-time training set; export refuses to run without a passing verdict.
The drift gate (`validation/gate.py`) adds :func:`event_log_suite`,
:func:`feature_table_suite` and, once a blessed reference exists,
:func:`reference_suite` (schema, types, ranges, null fractions and allowed
categories taken from the reference profile).

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
#: shares: between 0 and 1. Not `item_conversion_30d`: purchases per view (smoothed), above 1 where purchases
#: come without logged views (up to 12.8 on Online Retail, which logs none); it is checked non-negative only
RATE_FEATURES = (n.ITEM_REPEAT_RATE,)


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
        # BASIC: observed values and unexpected counts, without SUMMARY's per-value listings (20% faster)
        result = batch.validate(suite, result_format="BASIC")
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


# --- event log, feature tables and reference-derived suites (issue 7) ----------------

#: Type names Great Expectations reports for a pandas dtype (ExpectColumnValuesToBeInTypeList).
#: pandas extension dtypes are reported by class name (StringDtype), object columns per value (str).
GE_TYPES = {"string": ["str", "StringDtype", "object"], "int": ["int64", "int32", "Int64Dtype", "int"],
            "float": ["float64", "float32", "Float64Dtype", "float"], "bool": ["bool", "BooleanDtype"]}


def ge_type_list(dtype: str) -> list[str] | None:
    """Accepted GE type names for a pandas dtype string, or None when GE has no stable name for it."""
    d = dtype.lower()
    if d.startswith(("string", "object", "str")):
        return GE_TYPES["string"]
    if d.startswith("int") or d.startswith("uint"):
        return GE_TYPES["int"]
    if d.startswith("float"):
        return GE_TYPES["float"]
    if d.startswith("bool"):
        return GE_TYPES["bool"]
    return None


def event_log_suite(*, min_rows: int = 1, name: str = "event_log") -> gx.ExpectationSuite:
    """Expectations of the canonical event log (with each event's item category joined).

    Used when there is no blessed reference yet: schema of names.EVENT_COLUMNS,
    keys not null, quantities and prices non-negative, canonical event types,
    unique event ids, at least `min_rows` rows.
    """
    ephemeral_context()
    e = gx.expectations
    suite = gx.ExpectationSuite(name=name)
    suite.add_expectation(e.ExpectTableRowCountToBeBetween(min_value=min_rows))
    for col in n.EVENT_COLUMNS:
        suite.add_expectation(e.ExpectColumnToExist(column=col))
    for col in (n.EVENT_ID, n.ITEM_ID, n.EVENT_TYPE, n.EVENT_TIMESTAMP):
        suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=col))
    suite.add_expectation(e.ExpectColumnValuesToBeBetween(column=n.QUANTITY, min_value=0))
    suite.add_expectation(e.ExpectColumnValuesToBeBetween(column=n.UNIT_PRICE, min_value=0))
    suite.add_expectation(e.ExpectColumnValuesToBeInTypeList(column=n.QUANTITY, type_list=GE_TYPES["int"]))
    suite.add_expectation(e.ExpectColumnValuesToBeInTypeList(column=n.UNIT_PRICE, type_list=GE_TYPES["float"]))
    suite.add_expectation(e.ExpectColumnValuesToBeInSet(column=n.EVENT_TYPE, value_set=list(n.EVENT_TYPES)))
    suite.add_expectation(e.ExpectColumnValuesToBeUnique(column=n.EVENT_ID))
    return suite


#: Required columns, non-negative columns and not-null columns of the feature tables the suites guard.
FEATURE_TABLES = {
    n.USER_STATS_VIEW: ((n.USER_ID, n.EVENT_TIMESTAMP, *n.USER_FEATURES), n.USER_FEATURES),
    n.ITEM_STATS_VIEW: ((n.ITEM_ID, n.EVENT_TIMESTAMP, *n.ITEM_FEATURES), n.ITEM_FEATURES),
    n.ITEM_CONTENT_VIEW: ((n.ITEM_ID, n.EVENT_TIMESTAMP, n.CATEGORY, n.PRICE), (n.PRICE,)),
    n.USER_WINDOWS_VIEW: ((n.USER_ID, n.EVENT_TIMESTAMP, *n.USER_WINDOW_FEATURES), n.USER_WINDOW_FEATURES),
    n.ITEM_WINDOWS_VIEW: ((n.ITEM_ID, n.EVENT_TIMESTAMP, *n.ITEM_WINDOW_FEATURES), n.ITEM_WINDOW_FEATURES),
}


def feature_table_suite(table: str, *, min_rows: int = 1) -> gx.ExpectationSuite:
    """Expectations of one feature table under the Feast repo's data directory.

    Args:
        table: a key of :data:`FEATURE_TABLES` (`user_purchase_stats`,
            `item_purchase_stats`, `item_content`, `user_purchase_windows`, `item_activity_windows`).
        min_rows: fewest rows.

    Returns:
        Schema (required columns exist), keys and features not null, counts,
        money, prices and windowed activity non-negative, rates (:data:`RATE_FEATURES`)
        at most 1, row count.
    """
    ephemeral_context()
    e = gx.expectations
    required, non_negative = FEATURE_TABLES[table]
    suite = gx.ExpectationSuite(name=f"feature_table_{table}")
    suite.add_expectation(e.ExpectTableRowCountToBeBetween(min_value=min_rows))
    for col in required:
        suite.add_expectation(e.ExpectColumnToExist(column=col))
        suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=col))
    for col in non_negative:
        suite.add_expectation(e.ExpectColumnValuesToBeBetween(column=col, min_value=0,
                                                              max_value=1 if col in RATE_FEATURES else None))
    return suite


def reference_suite(reference: dict, *, min_rows: int, max_null_fraction_change: float,
                    max_new_category_share: float, name: str | None = None) -> gx.ExpectationSuite:
    """Expectations derived from a blessed reference profile (`validation/drift.py`).

    Args:
        reference: the profile of the data the CURRENT bundle was built from.
        min_rows: fewest rows.
        max_null_fraction_change: a column may have this much more null share than the reference.
        max_new_category_share: share of rows a categorical column may carry outside the reference's values.
        name: suite name (default `<dataset>_vs_reference`).

    Returns:
        Schema (every reference column exists with a compatible type),
        row count, null fractions, non-negative ranges where the reference
        never went negative, and allowed categories.
    """
    ephemeral_context()
    e = gx.expectations
    suite = gx.ExpectationSuite(name=name or f"{reference['dataset']}_vs_reference")
    suite.add_expectation(e.ExpectTableRowCountToBeBetween(min_value=min_rows))
    for col, c in reference["columns"].items():
        suite.add_expectation(e.ExpectColumnToExist(column=col))
        types = ge_type_list(c["dtype"])
        if types and c["kind"] != "other":
            suite.add_expectation(e.ExpectColumnValuesToBeInTypeList(column=col, type_list=types))
        allowed_null = c["null_fraction"] + max_null_fraction_change
        if allowed_null < 1.0:
            suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=col, mostly=max(0.0, 1.0 - allowed_null)))
        if c["kind"] == "numeric" and c.get("min", -1) >= 0:
            suite.add_expectation(e.ExpectColumnValuesToBeBetween(column=col, min_value=0))
        if c["kind"] == "categorical" and 0 < len(c.get("shares", {})) <= 200 and not c["dtype"].startswith("bool"):
            suite.add_expectation(e.ExpectColumnValuesToBeInSet(column=col, value_set=sorted(c["shares"]),
                                                                mostly=max(0.0, 1.0 - max_new_category_share)))
    return suite
