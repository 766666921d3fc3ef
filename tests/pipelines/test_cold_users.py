"""The evaluation's cold-user cohort (pipelines/cold_users.py): who is in it, what is relevant, each method's list."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cartwise.config import IndexConfig
from feature_repo import names as n
from pipelines.baselines import Interactions, ItemKNN
from pipelines.build_index import build_searcher
from pipelines.cold_users import UNKNOWN, cold_user_lists, cold_user_targets, session_category
from pipelines.train_retrieval import QUERY_FLOATS

CUT = pd.Timestamp("2011-08-01", tz="UTC")


def _lines(rows):
    return pd.DataFrame([{n.USER_ID: u, n.ITEM_ID: i, n.EVENT_TIMESTAMP: CUT + pd.Timedelta(days=d)}
                         for u, i, d in rows])


def test_cold_users_are_first_time_buyers_asked_after_their_first_basket():
    train = _lines([("warm", "a", -10), (None, "b", -5)])
    test = _lines([
        ("warm", "a", 3), ("warm", "z", 9),  # bought before the cut-off: not cold
        ("B", "x", 1), ("B", "y", 1), ("B", "y", 4), ("B", "z", 4), ("B", "z", 6),  # first basket {x, y}
        ("C", "x", 2),  # one basket only
        ("D", "q", 2), ("D", "q", 5),  # later buys only what the basket held
        (None, "x", 3),  # a guest
    ])
    users, baskets, relevant = cold_user_targets(train, test)
    assert users == ["B"]
    assert baskets == {"B": ["x", "y"]}
    assert relevant == {"B": {"z"}}  # y was in the basket: serving never returns the cart


def test_session_category_is_the_baskets_most_common_known_category():
    cats = {"a": "mugs", "b": "bags", "c": "bags", "d": "mugs", "u": "unknown"}
    assert session_category(["a", "b", "c", "u", "missing"], cats) == "bags"
    assert session_category(["a", "b"], cats) == "bags"  # a tie: by name
    assert session_category(["u", "missing"], cats) == UNKNOWN


def test_every_list_leaves_the_basket_out_and_knn_follows_co_purchases():
    # in training, x is always bought with w and never with v
    train = _lines([(f"u{k}", i, -k) for k in range(1, 6) for i in ("x", "w")]
                   + [(f"v{k}", "v", -k) for k in range(1, 9)] + [("p", "y", -1)])
    inter = Interactions.from_purchases(train, CUT)
    popular = ["v", "x", "y", "w"]
    items = np.array(["v", "w", "x", "y"], dtype=object)
    emb = np.array([[1, 0], [0.8, 0.2], [0.1, 0.9], [0, 1]], dtype=np.float32)  # v, w, x, y
    searcher, params = build_searcher(emb, IndexConfig(), k=4)
    seen = []

    def embed_query(inputs):  # the query tower's call: towards y for a "bags" session, else towards v
        seen.append(inputs)
        return np.stack([emb[3] if c == "bags" else emb[0] for c in inputs[n.SESSION_CATEGORY]])

    users = ["B", "E"]
    baskets = {"B": ["x"], "E": ["v", "y"]}
    cats = {"x": "bags", "v": "mugs", "y": "mugs", "w": "bags"}
    lists = cold_user_lists(users, baskets, popular, 3, inter, ItemKNN().fit(inter.matrix_), embed_query, searcher,
                            items, params, cats)
    assert set(lists) == {"popularity", "item_knn", "two_tower"}
    for method, by_user in lists.items():
        for u in users:
            assert not set(by_user[u]) & set(baskets[u]), (method, u)
            assert len(by_user[u]) == min(3, 4 - len(baskets[u]))
    assert lists["popularity"] == {"B": ["v", "y", "w"], "E": ["x", "w"]}
    assert lists["item_knn"]["B"][0] == "w"  # the basket's co-purchase neighbour before anything popular
    assert lists["two_tower"] == {"B": ["y", "w", "v"], "E": ["w", "x"]}  # by inner product, basket left out
    inputs = seen[-1]  # after the probe of every category: one batch of shoppers the tower does not know
    assert list(inputs[n.USER_ID]) == [UNKNOWN, UNKNOWN]
    assert list(inputs[n.SESSION_CATEGORY]) == ["bags", "mugs"]
    assert all(np.all(inputs[c] == 0) for c in QUERY_FLOATS)


def test_no_cold_users_gives_empty_lists():
    inter = Interactions.from_purchases(_lines([("a", "x", -1)]), CUT)
    lists = cold_user_lists([], {}, ["x"], 10, inter, None, None, None, np.array(["x"], dtype=object), None, {})
    assert lists == {"popularity": {}, "item_knn": {}, "two_tower": {}}


@pytest.mark.integration
def test_a_tower_that_embeds_every_session_alike_gives_no_two_tower_list(trained_shop):
    """The synthetic shop's "sessions" are purchases days apart, beyond the session view's 1-hour TTL: its real
    query tower never saw a session category and embeds them all alike. Serving then has no two-tower list for a
    shopper it knows only by the session (serving/pipeline.py `_tower_reads_sessions`), and the cohort none."""
    from cartwise.bundle import QUERY_TOWER, load_tower
    from pipelines.layout import Layout

    cfg, events, items, _ = trained_shop
    cutoff = events[n.EVENT_TIMESTAMP].max()
    known = sorted(items[n.ITEM_ID].astype(str))
    cats = items.set_index(n.ITEM_ID)[n.CATEGORY].astype(str).to_dict()
    baskets = {"new0": [known[0]], "new1": [known[1]]}
    purchases = events[events[n.EVENT_TYPE] == n.PURCHASE]
    inter = Interactions.from_purchases(purchases, cutoff)
    lists = cold_user_lists(["new0", "new1"], baskets, known, 10, inter, ItemKNN().fit(inter.matrix_),
                            load_tower(Layout(cfg.work_dir).model / QUERY_TOWER), None,
                            np.asarray(known, dtype=object), None, cats)
    assert set(lists) == {"popularity", "item_knn"}
    assert all(len(ls) == 10 and known[k] not in ls for k, ls in enumerate(lists["item_knn"].values()))
