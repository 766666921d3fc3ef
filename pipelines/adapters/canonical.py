"""Adapter for files already in the canonical schema (``pipelines/schema.py``).

Where it sits: a shop's own export (parquet or CSV with the canonical
columns) -> **this adapter** (validation only) -> ``pipelines/ingest.py`` ->
feature tables -> training sets. It is also how the output of one ingest
(``events.parquet``) is fed to another.

Every column of :data:`pipelines.schema.EVENT_DTYPES` is required (extra
columns are ignored). Per row: an empty ``event_id`` or ``item_id``, an
unparseable ``event_timestamp`` (naive times are read as UTC), a non-integer
``quantity``, a non-numeric ``unit_price`` (empty = unknown = NaN) or an
``is_guest`` that is not true/false/1/0 is malformed; an ``event_type`` outside
:data:`feature_repo.names.EVENT_TYPES` is quarantined as unsupported.
Empty strings in the other text columns become nulls.

Catalog: ``items.parquet`` in the same directory, if present, must hold every
canonical item column; its rows are taken as they are (items without events
included: a new product can be recommended from its content), a missing
``first_seen`` is filled from the events. Without it the catalog is
``"item <id>"`` / ``"unknown"`` / median unit price.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo import names as n
from pipelines.adapters.base import (Adapter, AdapterOutput, MalformedInputError, Triage, read_csv_strings,
                                     require_columns)
from pipelines.schema import EVENT_DTYPES, ITEM_DTYPES, conform_events, conform_items

ITEMS_FILE = "items.parquet"
_TRUE, _FALSE = {"true", "1", "t", "yes"}, {"false", "0", "f", "no"}


def _read_frame(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if name.endswith(".parquet"):
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise MalformedInputError(path, None, problem=f"not a readable parquet file: {e}") from None
        require_columns(df, list(EVENT_DTYPES), path)
        return df.reset_index(drop=True)
    if name.endswith((".csv", ".csv.gz")):
        return read_csv_strings(path, list(EVENT_DTYPES))
    raise MalformedInputError(path, None, problem="unsupported file type (expected .parquet, .csv or .csv.gz)")


def _text(col: pd.Series) -> pd.Series:
    """Strings with nulls and blanks as null."""
    s = col.astype("string").str.strip()
    return s.mask(s.eq(""))


class CanonicalAdapter(Adapter):
    """Canonical-schema parquet/CSV -> validated events (see the module docstring)."""

    name = "canonical"

    def read(self, path: Path, on_malformed: str) -> AdapterOutput:
        """Read and validate one canonical events file (and ``items.parquet`` beside it).

        Args:
            path: ``.parquet``, ``.csv`` or ``.csv.gz`` with the canonical columns.
            on_malformed: ``"fail"`` or ``"quarantine"``.

        Returns:
            Events, catalog, quarantine and the input row count.

        Raises:
            MalformedInputError: a column is missing (in the events or the items
                file), or (``"fail"``) a value cannot be parsed.
        """
        raw = _read_frame(path)
        tri = Triage(raw, path, on_malformed)
        text = {c: _text(raw[c]) for c, t in EVENT_DTYPES.items() if t == "string"}
        if pd.api.types.is_datetime64_any_dtype(raw[n.EVENT_TIMESTAMP]):
            ts = raw[n.EVENT_TIMESTAMP]
            ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
        else:
            ts = pd.to_datetime(_text(raw[n.EVENT_TIMESTAMP]), format="ISO8601", utc=True, errors="coerce")
        qty = pd.to_numeric(raw[n.QUANTITY], errors="coerce")
        price_text = _text(raw[n.UNIT_PRICE].astype("string"))
        price = pd.to_numeric(price_text, errors="coerce").astype("float64")
        guest_text = _text(raw[n.IS_GUEST]).str.lower()

        tri.malformed(n.EVENT_ID, text[n.EVENT_ID].isna())
        tri.malformed(n.ITEM_ID, text[n.ITEM_ID].isna())
        tri.malformed(n.EVENT_TIMESTAMP, ts.isna())
        # a whole number within what int64 and float64 both hold exactly (1e30 wrapped to int64's minimum)
        tri.malformed(n.QUANTITY, qty.isna() | (qty.fillna(0) % 1 != 0) | qty.abs().gt(2 ** 53))
        tri.malformed(n.UNIT_PRICE, price_text.notna() & (price.isna() | np.isinf(price) | price.lt(0)))
        tri.malformed(n.IS_GUEST, ~guest_text.isin(_TRUE | _FALSE).fillna(False).astype(bool))
        tri.raise_if_failing()
        tri.flag(~text[n.EVENT_TYPE].isin(n.EVENT_TYPES).fillna(False).astype(bool),
                 "unsupported event type '" + text[n.EVENT_TYPE].fillna("") + "'")

        ok = tri.ok
        events = pd.DataFrame({c: s[ok] for c, s in text.items()})
        events[n.EVENT_TIMESTAMP] = ts[ok]
        events[n.QUANTITY] = qty[ok].astype("int64")
        events[n.UNIT_PRICE] = price[ok]
        events[n.IS_GUEST] = guest_text[ok].isin(_TRUE).astype(bool)
        events = conform_events(events)
        return AdapterOutput(events, _catalog(path, events), tri.quarantine(), len(raw))


def _catalog(path: Path, events: pd.DataFrame) -> pd.DataFrame:
    first_seen = events.groupby(n.ITEM_ID)[n.EVENT_TIMESTAMP].min()
    items_path = path.parent / ITEMS_FILE
    if items_path.is_file() and items_path != path:
        items = pd.read_parquet(items_path)
        require_columns(items, list(ITEM_DTYPES), items_path)
        # ids as the events' are read (stripped): " A1 " and the events' "A1" are one item, not two
        items[n.ITEM_ID] = _text(items[n.ITEM_ID])
        if items[n.ITEM_ID].isna().any() or items[n.ITEM_ID].duplicated().any():
            bad = items[n.ITEM_ID][items[n.ITEM_ID].isna() | items[n.ITEM_ID].duplicated(keep=False)]
            raise MalformedInputError(items_path, n.ITEM_ID, problem="empty or repeated item ids (after stripping "
                                      f"spaces): {sorted(set(bad.fillna('<empty>')))[:5]}")
        try:
            items = conform_items(items)
        except (ValueError, TypeError) as e:
            raise MalformedInputError(items_path, None, problem=f"not in the canonical item schema: {e}") from None
        items[n.FIRST_SEEN] = items[n.FIRST_SEEN].fillna(items[n.ITEM_ID].map(first_seen))
        return conform_items(items)
    items = first_seen.rename(n.FIRST_SEEN).reset_index()
    items[n.TITLE] = "item " + items[n.ITEM_ID]
    items[n.CATEGORY] = "unknown"
    items[n.PRICE] = items[n.ITEM_ID].map(events.groupby(n.ITEM_ID)[n.UNIT_PRICE].median())
    items[n.IN_STOCK] = pd.NA
    items[n.MARGIN] = np.nan
    return conform_items(items)
