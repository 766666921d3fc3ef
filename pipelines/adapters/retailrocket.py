"""Adapter for the RetailRocket ``events.csv`` funnel log.

Where it sits: RetailRocket ``events.csv`` -> **this adapter** -> canonical
view / add-to-cart / purchase events + a placeholder catalog ->
``pipelines/ingest.py`` -> feature tables -> training sets.

Columns: ``timestamp`` (Unix ms, UTC), ``visitorid``, ``event`` (``view``,
``addtocart``, ``transaction``), ``itemid``, ``transactionid`` (transactions
only). Other columns (a sampler's ``datetime``, say) are ignored, and do not
enter the event id, so a sample and the original file give the same ids.

``view`` -> view, ``addtocart`` -> add_to_cart, ``transaction`` -> purchase;
any other event value is quarantined. An empty visitor or item id or a
non-integer timestamp is malformed. The log has no sessions, prices,
quantities, countries or devices: sessions are rebuilt per visitor with a
30-minute inactivity gap (``"<visitorid>-<n>"``, n from 1 in time order,
numbered within one file), quantity is 1, unit price NaN, every visitor is a
known (non-guest) user. The item properties file is not read: titles are
``"item <id>"``, the category ``"unknown"``, the price NaN.

The data's licence (CC BY-NC-SA 4.0) forbids shipping it: tests write small
synthetic files in this format.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo import names as n
from pipelines.adapters.base import Adapter, AdapterOutput, Triage, event_ids, read_csv_strings
from pipelines.schema import conform_events, conform_items

REQUIRED = ("timestamp", "visitorid", "event", "itemid")
ID_COLUMNS = ("timestamp", "visitorid", "event", "itemid", "transactionid")
EVENT_MAP = {"view": n.VIEW, "addtocart": n.ADD_TO_CART, "transaction": n.PURCHASE}
SESSION_GAP = pd.Timedelta(minutes=30)


def sessionize(users: pd.Series, timestamps: pd.Series, gap: pd.Timedelta = SESSION_GAP) -> pd.Series:
    """Session ids from an inactivity gap.

    A user's events sorted by time (ties in input order) open a new session
    whenever more than ``gap`` has passed since the user's previous event.

    Args:
        users: user id per event.
        timestamps: event time per event (same index).
        gap: the inactivity gap.

    Returns:
        ``"<user>-<n>"`` per event, n = 1, 2, ... per user in time order,
        aligned with the input index.
    """
    df = pd.DataFrame({"u": users, "t": timestamps}).sort_values(["u", "t"], kind="stable")
    new = df["u"].ne(df["u"].shift()) | df["t"].diff().gt(gap)
    number = new.astype(int).groupby(df["u"]).cumsum()
    return (df["u"].astype(str) + "-" + number.astype(str)).reindex(users.index)


class RetailRocketAdapter(Adapter):
    """RetailRocket ``events.csv`` -> view / add_to_cart / purchase events (see the module docstring)."""

    name = "retailrocket"

    def read(self, path: Path, on_malformed: str) -> AdapterOutput:
        """Read one RetailRocket events file.

        Args:
            path: the CSV(.gz).
            on_malformed: ``"fail"`` or ``"quarantine"``.

        Returns:
            Events, catalog, quarantine and the input row count.

        Raises:
            MalformedInputError: a column is missing, or (``"fail"``) a value cannot be parsed.
        """
        raw = read_csv_strings(path, REQUIRED)
        tri = Triage(raw, path, on_malformed)
        ms_text = raw["timestamp"].str.strip()
        # milliseconds since the epoch in ASCII digits, 11 to 13 of them: from April 1970 (ten digits are seconds
        # since 2001, not this format's clock) to pandas' last representable instant (2262)
        ms_ok = ms_text.str.fullmatch(r"[0-9]{11,13}")
        ms_ok &= pd.to_numeric(ms_text.where(ms_ok, "0")).le(pd.Timestamp.max.value // 10**6)
        visitor = raw["visitorid"].str.strip()
        item = raw["itemid"].str.strip()
        event = raw["event"].str.strip()

        tri.malformed("timestamp", ~ms_ok)
        tri.malformed("visitorid", visitor.eq(""))
        tri.malformed("itemid", item.eq(""))
        tri.raise_if_failing()
        tri.flag(~event.isin(EVENT_MAP), "unsupported event type '" + event + "'")

        ok = tri.ok
        ts = pd.to_datetime(pd.to_numeric(ms_text.where(ms_ok, "0")), unit="ms", utc=True)[ok]
        events = conform_events(pd.DataFrame({
            n.EVENT_ID: event_ids(raw.reindex(columns=ID_COLUMNS, fill_value="")[ok], ID_COLUMNS, self.name),
            n.USER_ID: visitor[ok],
            n.ITEM_ID: item[ok],
            n.SESSION_ID: sessionize(visitor[ok], ts),
            n.EVENT_TYPE: event[ok].map(EVENT_MAP),
            n.EVENT_TIMESTAMP: ts,
            n.QUANTITY: 1,
            n.UNIT_PRICE: np.nan,
            n.DEVICE: None,
            n.COUNTRY: None,
            n.SOURCE: self.name,
            n.IS_GUEST: False,
        }))
        items = events.groupby(n.ITEM_ID)[n.EVENT_TIMESTAMP].min().rename(n.FIRST_SEEN).reset_index()
        items = items.assign(**{n.TITLE: "item " + items[n.ITEM_ID], n.CATEGORY: "unknown", n.PRICE: np.nan,
                                n.IN_STOCK: pd.NA, n.MARGIN: np.nan})
        return AdapterOutput(events, conform_items(items), tri.quarantine(), len(raw))
