"""Tiny synthetic shop data in the canonical schema, for fast tests.

Each user prefers one category (user index mod number of categories) and
buys mostly from it, so a working two-tower model must rank the user's
category above the others.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from feature_repo import names as n
from pipelines.schema import conform_events, conform_items

START = pd.Timestamp("2011-01-01", tz="UTC")


def make_shop(n_users: int = 60, n_items: int = 48, n_categories: int = 4, days: int = 120,
              purchases_per_user: int = 30, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events (purchases, a few guests and returns) and the item catalog."""
    rng = np.random.default_rng(seed)
    items = [f"I{i:03d}" for i in range(n_items)]
    cat_of = {it: f"cat{i % n_categories}" for i, it in enumerate(items)}
    price_of = {it: float(1 + (i % 7)) for i, it in enumerate(items)}
    rows = []
    for u in range(n_users):
        uid = f"U{u:03d}"
        fav = f"cat{u % n_categories}"
        fav_items = [it for it in items if cat_of[it] == fav]
        for j in range(purchases_per_user):
            item = rng.choice(fav_items) if rng.random() < 0.85 else rng.choice(items)
            ts = START + pd.Timedelta(minutes=int(rng.integers(0, days * 24 * 60)))
            rows.append((uid, item, f"S{u}-{j // 3}", "purchase", ts, int(rng.integers(1, 5))))
    for g in range(40):
        ts = START + pd.Timedelta(minutes=int(rng.integers(0, days * 24 * 60)))
        rows.append((None, rng.choice(items), f"G{g}", "purchase", ts, 1))
    for r in range(10):
        uid, item, sess, _, ts, q = rows[r * 7]
        rows.append((uid, item, "C" + sess, "return", ts + pd.Timedelta(days=2), q))
    df = pd.DataFrame(rows, columns=[n.USER_ID, n.ITEM_ID, n.SESSION_ID, n.EVENT_TYPE, n.EVENT_TIMESTAMP, n.QUANTITY])
    df[n.EVENT_ID] = [f"e{i:06d}" for i in range(len(df))]
    df[n.UNIT_PRICE] = df[n.ITEM_ID].map(price_of)
    df[n.DEVICE] = None
    df[n.COUNTRY] = "United Kingdom"
    df[n.SOURCE] = "synthetic"
    df[n.IS_GUEST] = df[n.USER_ID].isna()
    events = conform_events(df)
    first = events.groupby(n.ITEM_ID)[n.EVENT_TIMESTAMP].min()
    cat = pd.DataFrame({n.ITEM_ID: items, n.TITLE: [f"THING {it}" for it in items],
                        n.CATEGORY: [cat_of[i] for i in items], n.PRICE: [price_of[i] for i in items],
                        n.IN_STOCK: pd.array([None] * n_items, dtype="boolean"), n.MARGIN: np.nan,
                        n.FIRST_SEEN: [first.get(i, START) for i in items]})
    return events, conform_items(cat)


def write_ingest(work_dir, events: pd.DataFrame, items: pd.DataFrame) -> None:
    """Write frames where the ingest stage would, with a minimal manifest."""
    d = work_dir / "ingest"
    d.mkdir(parents=True, exist_ok=True)
    events.to_parquet(d / "events.parquet", index=False)
    items.to_parquet(d / "items.parquet", index=False)
    (d / "manifest.json").write_text('{"stage": "ingest", "outputs": {"synthetic": true}}')
