"""The canonical event log and item catalog every adapter produces.

Where it sits: between the raw-file adapters (`pipelines/adapters/`) and
everything downstream (feature tables, training sets, evaluation). Adapters
return frames in these exact dtypes; :func:`conform_events` and
:func:`conform_items` check and cast them so a wrong adapter fails loudly.
"""
from __future__ import annotations

import pandas as pd

from feature_repo import names as n

EVENT_DTYPES: dict[str, str] = {
    n.EVENT_ID: "string",
    n.USER_ID: "string",          # null for guest checkouts
    n.ITEM_ID: "string",
    n.SESSION_ID: "string",
    n.EVENT_TYPE: "string",       # one of names.EVENT_TYPES
    n.EVENT_TIMESTAMP: "datetime64[us, UTC]",
    n.QUANTITY: "int64",
    n.UNIT_PRICE: "float64",      # NaN when the source has no price
    n.DEVICE: "string",
    n.COUNTRY: "string",
    n.SOURCE: "string",           # adapter name
    n.IS_GUEST: "bool",
}

ITEM_DTYPES: dict[str, str] = {
    n.ITEM_ID: "string",
    n.TITLE: "string",
    n.CATEGORY: "string",
    n.PRICE: "float64",
    n.IN_STOCK: "boolean",        # nullable: unknown when the source has no stock
    n.MARGIN: "float64",          # NaN when unknown
    n.FIRST_SEEN: "datetime64[us, UTC]",
}

QUARANTINE_DTYPES: dict[str, str] = {
    n.SOURCE_FILE: "string",
    n.SOURCE_ROW: "int64",        # 1-based data row number in the source file (header excluded)
    n.REASON: "string",
    n.RAW: "string",              # the raw row as JSON, so nothing is lost
}


def _conform(df: pd.DataFrame, dtypes: dict[str, str], what: str) -> pd.DataFrame:
    missing = [c for c in dtypes if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")
    out = df[list(dtypes)].copy()
    for col, dtype in dtypes.items():
        if dtype.startswith("datetime64"):
            ts = pd.to_datetime(out[col], utc=True)
            out[col] = ts.astype("datetime64[us, UTC]")
        else:
            out[col] = out[col].astype(dtype)
    return out.reset_index(drop=True)


def conform_events(df: pd.DataFrame) -> pd.DataFrame:
    """Check and cast an event frame to the canonical schema.

    Raises:
        ValueError: a column is missing or an event type is not canonical.
    """
    out = _conform(df, EVENT_DTYPES, "events")
    bad = set(out[n.EVENT_TYPE].dropna().unique()) - set(n.EVENT_TYPES)
    if bad:
        raise ValueError(f"events: non-canonical event types {sorted(bad)}")
    return out


def conform_items(df: pd.DataFrame) -> pd.DataFrame:
    """Check and cast an item catalog to the canonical schema."""
    return _conform(df, ITEM_DTYPES, "items")


def conform_quarantine(df: pd.DataFrame) -> pd.DataFrame:
    """Check and cast a quarantine frame."""
    return _conform(df, QUARANTINE_DTYPES, "quarantine")


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in QUARANTINE_DTYPES.items()})
