"""Adapter for the REES46 / Open CDP multi-category store event log.

Where it sits: REES46 monthly CSV(.gz) -> **this adapter** -> canonical
view / add-to-cart / purchase events + item catalog -> ``pipelines/ingest.py``
-> feature tables -> training sets.

Columns: ``event_time`` (``YYYY-MM-DD HH:MM:SS UTC``), ``event_type``
(``view``, ``cart``, ``purchase``, ``remove_from_cart``), ``product_id``,
``category_id``, ``category_code`` (``electronics.smartphone``, may be
empty), ``brand`` (may be empty), ``price``, ``user_id``, ``user_session``.

``view`` -> view, ``cart`` -> add_to_cart, ``purchase`` -> purchase;
``remove_from_cart`` (no canonical counterpart) and any other value are
quarantined as ``"unsupported event type ..."``. An unparseable time or price
or an empty product id is malformed. ``price`` becomes ``unit_price``,
``user_session`` the session, quantity is 1; an empty user id would be a
guest. Catalog: ``title`` = brand + category code (``"item <id>"`` when both
are empty), ``category`` = first segment of the category code, or
``"cat_<category_id>"`` when the code is empty, ``price`` = the price of the
item's latest event (attributes too come from its latest event).

The data has no explicit licence: it is not shipped; tests write small
synthetic files in this format.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo import names as n
from pipelines.adapters.base import Adapter, AdapterOutput, Triage, blank_to_null, event_ids, read_csv_strings
from pipelines.schema import conform_events, conform_items

COLUMNS = ("event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price",
           "user_id", "user_session")
EVENT_MAP = {"view": n.VIEW, "cart": n.ADD_TO_CART, "purchase": n.PURCHASE}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


class Rees46Adapter(Adapter):
    """REES46 events -> view / add_to_cart / purchase events (see the module docstring)."""

    name = "rees46"

    def read(self, path: Path, on_malformed: str) -> AdapterOutput:
        """Read one REES46 events file.

        Args:
            path: the CSV(.gz).
            on_malformed: ``"fail"`` or ``"quarantine"``.

        Returns:
            Events, catalog, quarantine and the input row count.

        Raises:
            MalformedInputError: a column is missing, or (``"fail"``) a value cannot be parsed.
        """
        raw = read_csv_strings(path, COLUMNS)
        tri = Triage(raw, path, on_malformed)
        ts = pd.to_datetime(raw["event_time"].str.strip(), format=TIME_FORMAT, errors="coerce", utc=True)
        event = raw["event_type"].str.strip()
        product = raw["product_id"].str.strip()
        price = pd.to_numeric(raw["price"].str.strip(), errors="coerce")
        user = raw["user_id"].str.strip()

        tri.malformed("event_time", ts.isna())
        tri.malformed("product_id", product.eq(""))
        tri.malformed("price", ~np.isfinite(price))
        tri.raise_if_failing()
        tri.flag(~event.isin(EVENT_MAP), "unsupported event type '" + event + "'")

        ok = tri.ok
        events = conform_events(pd.DataFrame({
            n.EVENT_ID: event_ids(raw[ok], COLUMNS, self.name),
            n.USER_ID: blank_to_null(user[ok]),
            n.ITEM_ID: product[ok],
            n.SESSION_ID: blank_to_null(raw["user_session"].str.strip()[ok]),
            n.EVENT_TYPE: event[ok].map(EVENT_MAP),
            n.EVENT_TIMESTAMP: ts[ok],
            n.QUANTITY: 1,
            n.UNIT_PRICE: price[ok],
            n.DEVICE: None,
            n.COUNTRY: None,
            n.SOURCE: self.name,
            n.IS_GUEST: user[ok].eq(""),
        }))
        return AdapterOutput(events, _catalog(raw[ok], events), tri.quarantine(), len(raw))


def _catalog(raw: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame({
        n.ITEM_ID: events[n.ITEM_ID].to_numpy(),
        "t": events[n.EVENT_TIMESTAMP].to_numpy(),
        "order": np.arange(len(events)),
        "code": raw["category_code"].str.strip().to_numpy(),
        "cat_id": raw["category_id"].str.strip().to_numpy(),
        "brand": raw["brand"].str.strip().to_numpy(),
        n.PRICE: events[n.UNIT_PRICE].to_numpy(),
    })
    first_seen = df.groupby(n.ITEM_ID)["t"].min()
    latest = df.sort_values([n.ITEM_ID, "t", "order"]).drop_duplicates(n.ITEM_ID, keep="last").set_index(n.ITEM_ID)
    title = (latest["brand"] + " " + latest["code"]).str.strip()
    category = latest["code"].str.split(".").str[0]
    items = pd.DataFrame({
        n.TITLE: title.where(title.ne(""), "item " + latest.index.to_series()),
        n.CATEGORY: category.where(category.ne(""), "cat_" + latest["cat_id"]),
        n.PRICE: latest[n.PRICE],
        n.IN_STOCK: pd.NA,
        n.MARGIN: np.nan,
        n.FIRST_SEEN: first_seen,
    }).rename_axis(n.ITEM_ID).reset_index()
    return conform_items(items)
