"""The simulated shop: shoppers, items, sessions and the per-impression funnel.

Where it sits: beside the data flow, upstream of it. ``simulate`` writes the
canonical event log and item catalog (``events.parquet``, ``items.parquet``:
the schema of ``pipelines/schema.py``) that the ``canonical`` adapter
ingests unchanged; ground truth (item appeal and quality, daily stock) goes to
``truth/`` beside them, which no pipeline reads. ``simulator/abtest.py`` drives
the same :class:`Shop` day by day with a policy choosing what each session is
shown instead of the organic listing.

The world (parameters in :class:`simulator.config.WorldConfig`):

* items have a category and attributes (brand, colour, material, style, tier)
  from which their latent vector and their title are built, so content
  features carry signal; a price, a margin, a launch day (items launched
  after day 0 are cold items) and stock that sells out and is restocked;
* each item has two separate qualities: click appeal (visual distinctiveness,
  plus a trend wave and a launch novelty that fades) and purchase quality;
  their correlation is ``appeal_utility_correlation``;
* shoppers have latent tastes (a vector and category preferences) that drift
  a little every day, a price sensitivity, a lifetime-value segment, a
  preferred device and a visit rate; new shoppers arrive every day;
* a session has a start hour, a weekday (weekends busier), a device and a
  current category; each shown item goes through the funnel of
  :class:`simulator.config.FunnelConfig`: click mostly by appeal and relevance
  (and whether the shopper has seen the item lately: novelty), add-to-cart and
  purchase by utility, price sensitivity and stock; purchases are returned
  with a small probability.

Randomness comes from one generator per (seed, stream, day), so a day's draws
do not depend on how many days are generated: the same seed gives
byte-identical files, and an A/B test continuing a world sees the same
history ``simulate`` wrote.
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_repo import names as n
from pipelines.schema import conform_items
from simulator.config import WorldConfig

DEVICES = ("desktop", "mobile", "tablet")
DEVICE_SHARE = (0.45, 0.45, 0.10)
CATEGORY_NOUNS = ("DRESS", "SNEAKER", "LAMP", "TEAPOT", "SERUM", "PUZZLE", "BACKPACK", "HEADPHONES", "NOVEL",
                  "PLANTER", "NECKLACE", "DOG BED", "MUG", "CANDLE", "RUG", "WATCH", "SCARF", "KNIFE SET",
                  "YOGA MAT", "TOY CAR", "CUSHION", "JACKET", "SPEAKER", "NOTEBOOK")
COLORS = ("RED", "BLUE", "GREEN", "BLACK", "WHITE", "PINK", "GREY", "YELLOW", "NAVY", "OLIVE", "CORAL", "GOLD")
MATERIALS = ("COTTON", "LINEN", "WOOL", "LEATHER", "CERAMIC", "BAMBOO", "STEEL", "GLASS")
STYLES = ("CLASSIC", "MODERN", "VINTAGE", "SPORTY", "MINIMAL", "BOHO", "RETRO", "RUSTIC")
BRANDS = tuple(f"{a}{b}" for a in ("NOR", "VEL", "KAI", "LUM", "ORA", "ZEN") for b in ("BY", "TEX", "MO", "RA", "LINE"))
TIERS = ("BASIC", "STANDARD", "PREMIUM")
TIER_SHARE = (0.3, 0.5, 0.2)
TIER_PRICE = (0.75, 1.0, 1.5)
#: relative traffic by hour of day (UTC): quiet nights, lunch and evening peaks
HOURLY = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 3.8, 4, 4.5, 4.3, 4, 4, 4.2, 4.5, 5, 5.8, 6, 5.5, 4,
                   2.2])
STREAMS = {"items": 1, "init": 2, "arrive": 3, "visit": 4, "organic": 5, "react": 6, "drift": 7, "stock": 8,
           "assign": 9, "policy": 10, "cap": 11}
EVENT_CODES = (n.VIEW, n.CLICK, n.ADD_TO_CART, n.PURCHASE, n.RETURN)
EVENT_SCHEMA = pa.schema([(n.EVENT_ID, pa.string()), (n.USER_ID, pa.string()), (n.ITEM_ID, pa.string()),
                          (n.SESSION_ID, pa.string()), (n.EVENT_TYPE, pa.string()),
                          (n.EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC")), (n.QUANTITY, pa.int64()),
                          (n.UNIT_PRICE, pa.float64()), (n.DEVICE, pa.string()), (n.COUNTRY, pa.string()),
                          (n.SOURCE, pa.string()), (n.IS_GUEST, pa.bool_())])
DAY_US = 86_400_000_000


def rng_for(seed: int, stream: str, day: int = 0) -> np.random.Generator:
    """The generator of one (seed, stream, day): independent of every other day's draws."""
    return np.random.default_rng([int(seed), STREAMS[stream], int(day) + 1000])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Sessions:
    """One day's sessions (arrays of equal length, one entry per session).

    Attributes:
        user: shopper index; hour, weekend, device (index into DEVICES),
        category: current category; start_s: seconds after midnight;
        session_no: global session number (for ids); is_new: first visit day.
    """

    user: np.ndarray
    hour: np.ndarray
    weekend: np.ndarray
    device: np.ndarray
    category: np.ndarray
    start_s: np.ndarray
    session_no: np.ndarray
    is_new: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, mask: np.ndarray) -> "Sessions":
        return Sessions(**{k: v[mask] for k, v in self.__dict__.items()})


@dataclass
class DayOutcome:
    """What a day's sessions did: the event table plus per-session totals and per-impression truth.

    Attributes:
        events: canonical events of the day (pyarrow, EVENT_SCHEMA).
        impressions, clicks, carts, orders, quantity, revenue: per session.
        shown_items: item index of every impression; shown_session: its session;
        true_purchase_prob: the ground-truth purchase probability of every impression.
    """

    events: pa.Table
    impressions: np.ndarray
    clicks: np.ndarray
    carts: np.ndarray
    orders: np.ndarray
    quantity: np.ndarray
    revenue: np.ndarray
    shown_items: np.ndarray
    shown_session: np.ndarray
    true_purchase_prob: np.ndarray


class Shop:
    """A world and its state (shoppers so far, stock, drifting tastes, memories) advanced day by day.

    Args:
        cfg: world parameters.
        seed: the world's seed; everything random derives from it.
    """

    def __init__(self, cfg: WorldConfig, seed: int):
        self.cfg, self.seed = cfg, int(seed)
        self.start = pd.Timestamp(cfg.start_date, tz="UTC")
        self._make_items()
        self._make_initial_shoppers()
        self.sessions_so_far = 0
        self.events_so_far = 0
        self.pending: pa.Table | None = None  # returns dated after the current day
        mem = cfg.novelty.memory_days
        # (user * n_items + item) keys per recent day: what each shopper was shown / bought lately
        self.seen: deque[np.ndarray] = deque(maxlen=mem)
        self.bought: deque[np.ndarray] = deque(maxlen=mem)

    # ---------------------------------------------------------------- items
    def _make_items(self) -> None:
        c, rng, d = self.cfg, rng_for(self.seed, "items"), self.cfg.latent_dim
        m = c.items
        self.item_category = rng.integers(0, c.categories, m)
        color, material = rng.integers(0, len(COLORS), m), rng.integers(0, len(MATERIALS), m)
        style, brand = rng.integers(0, len(STYLES), m), rng.integers(0, len(BRANDS), m)
        tier = rng.choice(3, m, p=TIER_SHARE)
        e_cat, e_col = rng.normal(0, 1, (c.categories, d)), rng.normal(0, 1, (len(COLORS), d))
        e_mat, e_sty = rng.normal(0, 1, (len(MATERIALS), d)), rng.normal(0, 1, (len(STYLES), d))
        # the latent vector is mostly its attributes, so the title's words predict taste affinity
        v = 0.7 * e_cat[self.item_category] + 0.6 * (e_col[color] + e_mat[material] + e_sty[style]) / np.sqrt(3)
        self.item_vec = (v + 0.4 * rng.normal(0, 1, (m, d))).astype(np.float32)
        rho = c.appeal_utility_correlation
        self.appeal_base = rng.normal(0, 1, m)
        tier_z = (tier - 0.9) / 0.7  # E[tier]=0.9, sd=0.7 under TIER_SHARE
        indep = 0.5 * tier_z + np.sqrt(0.75) * rng.normal(0, 1, m)  # unit variance, independent of appeal
        # quality and appeal are both unit-variance, so their correlation is rho by construction
        self.quality = rho * self.appeal_base + np.sqrt(max(0.0, 1 - rho * rho)) * indep
        cat_price = rng.normal(0, 0.4, c.categories)
        price = np.exp(rng.normal(c.price_log_mean, c.price_log_sd, m) + cat_price[self.item_category])
        self.price = np.round(price * np.asarray(TIER_PRICE)[tier], 2).clip(0.5)
        self.log_price_c = np.log(self.price) - np.log(self.price).mean()
        self.margin = np.round(rng.beta(4, 6, m) * 0.6 + 0.05 * tier, 3)
        self.trend_amp = c.trend_amplitude * np.abs(rng.normal(0, 1, m))
        self.trend_period = rng.uniform(7, 40, m)
        self.trend_phase = rng.uniform(0, 2 * np.pi, m)
        launched = rng.random(m) < c.launched_share
        self.launch_day = np.where(launched, -rng.integers(1, 366, m), rng.integers(0, c.days, m)).astype(np.int64)
        self.stock = rng.poisson(c.stock.initial_mean * np.exp(rng.normal(0, 0.7, m))).astype(np.int64) + 1
        self.titles = [f"{BRANDS[b]} {COLORS[co]} {MATERIALS[ma]} {STYLES[s]} {TIERS[t]} "
                       f"{CATEGORY_NOUNS[k % len(CATEGORY_NOUNS)]}"
                       for b, co, ma, s, t, k in zip(brand, color, material, style, tier, self.item_category)]
        self.category_names = [f"{CATEGORY_NOUNS[k].lower().replace(' ', '_')}s" for k in range(c.categories)]

    def appeal(self, day: int) -> np.ndarray:
        """Click appeal of every item on `day`: base + trend wave + launch novelty (fading)."""
        nv = self.cfg.novelty
        age = day - self.launch_day
        launch = np.where(age >= 0, nv.item_boost * np.exp(-np.maximum(age, 0) / nv.item_decay_days), 0.0)
        trend = self.trend_amp * np.sin(2 * np.pi * day / self.trend_period + self.trend_phase)
        return self.appeal_base + trend + launch

    def launched(self, day: int) -> np.ndarray:
        return self.launch_day <= day

    # ------------------------------------------------------------- shoppers
    def _new_shoppers(self, rng: np.random.Generator, count: int, day: int) -> dict[str, np.ndarray]:
        c = self.cfg
        pref = rng.dirichlet(np.full(c.categories, c.category_concentration), count) if count else \
            np.zeros((0, c.categories))
        high = rng.random(count) < c.ltv_high_share
        s = c.visit_dispersion
        rate = c.visits_per_week / 7 * np.exp(rng.normal(-s * s / 2, s, count)) * np.where(high, 1.8, 0.8)
        return {
            "taste": rng.normal(0, 1, (count, c.latent_dim)).astype(np.float32),
            "cat_pref": np.log(np.clip(pref * c.categories, 0.05, None)).astype(np.float32),
            "high": high,
            "price_sens": (c.price_sensitivity_mean * np.exp(rng.normal(0, 0.4, count))
                           * np.where(high, 0.5, 1.15)).astype(np.float32),
            "device": rng.choice(len(DEVICES), count, p=DEVICE_SHARE),
            "rate": np.minimum(rate, 0.9).astype(np.float32),
            "arrival": np.full(count, day, dtype=np.int64),
        }

    def _make_initial_shoppers(self) -> None:
        n0 = int(round(self.cfg.shoppers * self.cfg.initial_share))
        self.shoppers = self._new_shoppers(rng_for(self.seed, "init"), n0, -1)

    def _arrive(self, day: int) -> None:
        rng = rng_for(self.seed, "arrive", day)
        per_day = self.cfg.shoppers * (1 - self.cfg.initial_share) / self.cfg.days
        new = self._new_shoppers(rng, int(rng.poisson(per_day)), day)
        self.shoppers = {k: np.concatenate([v, new[k]]) for k, v in self.shoppers.items()}

    @property
    def n_shoppers(self) -> int:
        return len(self.shoppers["arrival"])

    def weekday(self, day: int) -> int:
        return int((self.start + pd.Timedelta(days=day)).dayofweek)

    # ------------------------------------------------------------- sessions
    def sessions(self, day: int) -> Sessions:
        """Shoppers arriving today, then who visits today, with each session's context."""
        self._arrive(day)
        c, sh, rng = self.cfg, self.shoppers, rng_for(self.seed, "visit", day)
        weekend = self.weekday(day) >= 5
        # the weekly cycle: weekend days get weekend_factor x the weekday traffic, same weekly mean
        norm = 7 / (5 + 2 * c.weekend_factor)
        factor = norm * (c.weekend_factor if weekend else 1.0)
        is_new = sh["arrival"] == day
        visit = (sh["arrival"] < day) & (rng.random(self.n_shoppers) < sh["rate"] * factor) | is_new
        users = np.flatnonzero(visit)
        k = len(users)
        hour = rng.choice(24, k, p=HOURLY / HOURLY.sum())
        device = np.where(rng.random(k) < 0.8, sh["device"][users], rng.choice(len(DEVICES), k, p=DEVICE_SHARE))
        gumbel = -np.log(-np.log(rng.random((k, c.categories)) + 1e-12) + 1e-12)
        category = np.argmax(sh["cat_pref"][users] + gumbel, axis=1)
        start_s = hour * 3600 + rng.integers(0, 3300, k)
        order = np.lexsort((users, start_s))
        no = self.sessions_so_far + np.arange(k, dtype=np.int64)
        self.sessions_so_far += k
        return Sessions(users[order], hour[order], np.full(k, weekend), device[order], category[order],
                        start_s[order], no, is_new[users][order])

    def organic_lists(self, sess: Sessions, day: int) -> np.ndarray:
        """What the shop shows without a recommender: category listing and home page, by appeal.

        Returns:
            (sessions, impressions_per_session) item indices, -1 where a duplicate was dropped.
        """
        c, rng = self.cfg, rng_for(self.seed, "organic", day)
        k = c.impressions_per_session
        k_cat = int(round(k * c.organic_category_share))
        live = self.launched(day)
        w = np.where(live, np.exp(0.8 * self.appeal(day)), 0.0)
        out = np.empty((len(sess), k), dtype=np.int64)
        glob = np.cumsum(w) / w.sum()
        out[:, k_cat:] = np.searchsorted(glob, rng.random((len(sess), k - k_cat)), side="right")
        for cat in range(c.categories):
            rows = np.flatnonzero(sess.category == cat)
            wc = np.where(self.item_category == cat, w, 0.0)
            if len(rows) == 0:
                continue
            if wc.sum() == 0:
                wc = w
            cum = np.cumsum(wc) / wc.sum()
            out[rows, :k_cat] = np.searchsorted(cum, rng.random((len(rows), k_cat)), side="right")
        out = np.minimum(out, c.items - 1)
        return dedupe_lists(out)

    # ----------------------------------------------------------- the funnel
    def _recent(self, memory: deque, keys: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(keys), dtype=bool)
        for arr in memory:
            if len(arr):
                j = np.minimum(np.searchsorted(arr, keys), len(arr) - 1)
                hit |= arr[j] == keys
        return hit

    def funnel(self, users: np.ndarray, items: np.ndarray, day: int, *, rank: np.ndarray, device: np.ndarray,
               hour: np.ndarray, weekend: np.ndarray, category: np.ndarray,
               appeal: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Ground truth: click, add-to-cart | click and purchase | cart probabilities, and utility.

        Args:
            users, items: (N,) shopper and item indices (one impression each).
            day: simulated day; rank: (N,) position in the list (0 = top);
            device, hour, weekend, category: (N,) session context.
            appeal: today's appeal of every item (computed if None).

        Returns:
            p_click, p_cart, p_buy, utility, each (N,); the purchase probability of
            the impression is p_click * p_cart * p_buy (0 when the item is out of stock).
        """
        f, sh = self.cfg.funnel, self.shoppers
        appeal = self.appeal(day) if appeal is None else appeal
        keys = users.astype(np.int64) * self.cfg.items + items
        affinity = ((sh["taste"][users] * self.item_vec[items]).sum(1) / np.sqrt(self.cfg.latent_dim)
                    + 0.5 * sh["cat_pref"][users, self.item_category[items]])
        unseen = ~self._recent(self.seen, keys)
        in_cat = self.item_category[items] == category
        click = (f.click_base + f.click_appeal * appeal[items] + f.click_relevance * affinity
                 - f.position_decay * rank + self.cfg.novelty.shopper_boost * unseen + f.category_match * in_cat)
        utility = (f.utility_quality * self.quality[items] + f.utility_affinity * affinity
                   - sh["price_sens"][users] * self.log_price_c[items]
                   - f.satiation * self._recent(self.bought, keys))
        high = sh["high"][users]
        cart = f.cart_base + utility + f.ltv_cart_bonus * high
        dev = np.asarray([f.device_checkout.get(d, 0.0) for d in DEVICES])[device]
        buy = (f.checkout_base + f.checkout_utility * utility + f.weekend_checkout * weekend
               + f.evening_checkout * (hour >= 18) + dev)
        p_buy = _sigmoid(buy) * (self.stock[items] > 0)
        return _sigmoid(click), _sigmoid(cart), p_buy, utility

    def react(self, sess: Sessions, shown: np.ndarray, day: int) -> DayOutcome:
        """Shoppers react to what each session is shown; stock, memories and tastes move on.

        Args:
            sess: the day's sessions.
            shown: (sessions, k) item indices per session, -1 for an empty slot.
            day: simulated day.

        Returns:
            The day's events and per-session outcomes.
        """
        c, rng = self.cfg, rng_for(self.seed, "react", day)
        s_idx, rank = np.nonzero(shown >= 0)
        items = shown[s_idx, rank]
        users = sess.user[s_idx]
        p_click, p_cart, p_buy, utility = self.funnel(
            users, items, day, rank=rank, device=sess.device[s_idx], hour=sess.hour[s_idx],
            weekend=sess.weekend[s_idx], category=sess.category[s_idx])
        nimp = len(items)
        u = rng.random((4, nimp))
        clicked = u[0] < p_click
        carted = clicked & (u[1] < p_cart)
        want = carted & (u[2] < p_buy)
        high = self.shoppers["high"][users]
        qty = 1 + rng.poisson(c.funnel.extra_quantity_rate * np.where(high, 1.5, 1.0))
        t_imp = sess.start_s[s_idx] + 15 * rank
        t_buy = sess.start_s[s_idx] + 15 * shown.shape[1] + 300
        # stock is checked at checkout in time order: later buyers of a sold-out item only keep the cart
        cand = np.flatnonzero(want)
        order = cand[np.lexsort((t_buy[cand], items[cand]))]
        it, q = items[order], qty[order]
        starts = np.r_[0, np.flatnonzero(np.diff(it)) + 1] if len(it) else np.zeros(0, dtype=np.int64)
        cum = np.cumsum(q)
        group_base = np.repeat(cum[starts] - q[starts], np.diff(np.r_[starts, len(it)]).astype(np.int64))
        ok = (cum - group_base) <= self.stock[it]
        bought = np.zeros(nimp, dtype=bool)
        bought[order[ok]] = True
        np.subtract.at(self.stock, it[ok], q[ok])
        ret_p = c.funnel.return_probability * 2 * _sigmoid(-utility)
        returned = bought & (u[3] < ret_p)
        ret_delay = rng.integers(1, 15, nimp) * 86400 + rng.integers(0, 86400, nimp)

        ns = len(sess)
        revenue = np.bincount(s_idx, weights=np.where(bought, qty * self.price[items], 0.0), minlength=ns)
        outcome = DayOutcome(
            events=self._events_table(day, sess, s_idx, items, users, qty, t_imp, clicked, carted, bought,
                                      returned, ret_delay, t_buy),
            impressions=np.bincount(s_idx, minlength=ns), clicks=np.bincount(s_idx, clicked, ns),
            carts=np.bincount(s_idx, carted, ns), orders=(np.bincount(s_idx, bought, ns) > 0).astype(np.int64),
            quantity=np.bincount(s_idx, np.where(bought, qty, 0), ns), revenue=revenue,
            shown_items=items, shown_session=s_idx, true_purchase_prob=p_click * p_cart * p_buy)
        self._end_of_day(day, users, items, bought)
        return outcome

    def _events_table(self, day, sess, s_idx, items, users, qty, t_imp, clicked, carted, bought, returned,
                      ret_delay, t_buy) -> pa.Table:
        views = np.arange(len(items)) if self.cfg.log_impressions else np.zeros(0, dtype=np.int64)
        parts = [(views, 0, t_imp), (np.flatnonzero(clicked), 1, t_imp + 5),
                 (np.flatnonzero(carted), 2, t_imp + 65), (np.flatnonzero(bought), 3, t_buy),
                 (np.flatnonzero(returned), 4, t_buy + ret_delay)]
        idx = np.concatenate([p[0] for p in parts])
        code = np.concatenate([np.full(len(p[0]), p[1], dtype=np.int8) for p in parts])
        secs = np.concatenate([p[2][p[0]] for p in parts])
        order = np.lexsort((code, idx, secs))
        idx, code, secs = idx[order], code[order], secs[order]
        m = len(idx)
        ids = self.events_so_far + np.arange(m, dtype=np.int64)
        self.events_so_far += m
        ts = pa.array(self.start.value // 1000 + day * DAY_US + secs.astype(np.int64) * 1_000_000,
                      type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        q = np.where(code >= 3, qty[idx], 1)
        dev = pa.DictionaryArray.from_arrays(pa.array(sess.device[s_idx][idx].astype(np.int32)),
                                             pa.array(DEVICES)).cast(pa.string())
        etype = pa.DictionaryArray.from_arrays(pa.array(code.astype(np.int32)), pa.array(EVENT_CODES)).cast(pa.string())
        table = pa.table([
            _prefixed("e", ids), _prefixed("u", users[idx]), _prefixed("i", items[idx]),
            _prefixed("s", sess.session_no[s_idx][idx]), etype, ts, pa.array(q.astype(np.int64)),
            pa.array(self.price[items[idx]]), dev, pa.array(np.full(m, "SIMLAND"), pa.string()),
            pa.array(np.full(m, "simulator"), pa.string()), pa.array(np.zeros(m, dtype=bool))], schema=EVENT_SCHEMA)
        return self._release(table, day)

    def _release(self, table: pa.Table, day: int) -> pa.Table:
        """Today's events: a return dated after today waits until its day comes (the log never
        holds an event that has not happened yet), returns due today join, in time order."""
        end = pa.scalar(self.start.value // 1000 + (day + 1) * DAY_US, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        later = pc.greater_equal(table[n.EVENT_TIMESTAMP], end)
        today = table.filter(pc.invert(later))
        held = [table.filter(later)]
        if self.pending is not None and self.pending.num_rows:
            old_later = pc.greater_equal(self.pending[n.EVENT_TIMESTAMP], end)
            released = self.pending.filter(pc.invert(old_later))
            held.append(self.pending.filter(old_later))
            if released.num_rows:
                today = pa.concat_tables([today, released]).sort_by(
                    [(n.EVENT_TIMESTAMP, "ascending"), (n.EVENT_ID, "ascending")])
        self.pending = pa.concat_tables(held)
        return today

    def _end_of_day(self, day: int, users, items, bought) -> None:
        keys = users.astype(np.int64) * self.cfg.items + items
        self.seen.append(np.unique(keys))
        self.bought.append(np.unique(keys[bought]))
        st, rng = self.cfg.stock, rng_for(self.seed, "stock", day)
        out = self.stock <= 0
        restock = out & (rng.random(len(self.stock)) < st.restock_probability)
        self.stock[restock] += 1 + rng.poisson(st.restock_mean, int(restock.sum()))
        drift = rng_for(self.seed, "drift", day)
        sd = self.cfg.taste_drift_per_day
        if sd > 0:
            self.shoppers["taste"] += drift.normal(0, sd, self.shoppers["taste"].shape).astype(np.float32)
            self.shoppers["cat_pref"] += drift.normal(0, sd, self.shoppers["cat_pref"].shape).astype(np.float32)

    # ------------------------------------------------------------- catalog
    def catalog(self, upto_day: int) -> pd.DataFrame:
        """The item catalog (canonical schema) of items launched by `upto_day`."""
        live = np.flatnonzero(self.launch_day <= upto_day)
        first = self.start + pd.to_timedelta(self.launch_day[live], unit="D")
        df = pd.DataFrame({
            n.ITEM_ID: [f"i{i}" for i in live], n.TITLE: [self.titles[i] for i in live],
            n.CATEGORY: [self.category_names[k] for k in self.item_category[live]],
            n.PRICE: self.price[live], n.IN_STOCK: pd.array(self.stock[live] > 0, dtype="boolean"),
            n.MARGIN: self.margin[live], n.FIRST_SEEN: first})
        return conform_items(df)

    def item_truth(self) -> pd.DataFrame:
        """Ground truth per item (for evaluation code only)."""
        return pd.DataFrame({n.ITEM_ID: [f"i{i}" for i in range(self.cfg.items)], "appeal_base": self.appeal_base,
                             "quality": self.quality, "launch_day": self.launch_day})


def _prefixed(prefix: str, ints: np.ndarray) -> pa.Array:
    """`prefix` + decimal string of each integer, built in Arrow (no Python loop)."""
    s = pa.array(np.asarray(ints, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(pa.scalar(prefix), s, "")


def dedupe_lists(lists: np.ndarray) -> np.ndarray:
    """Mark repeated items within a row as -1 (keeping the first occurrence)."""
    srt = np.sort(lists, axis=1)
    order = np.argsort(lists, axis=1, kind="stable")
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return np.where(dup, -1, lists)


def simulate(cfg: WorldConfig, seed: int, out: Path, *, log=print) -> dict:
    """Generate `cfg.days` of organic shop traffic and write it where ingest can read it.

    Writes `out/events.parquet` (streamed, one row group per chunk), `out/items.parquet`
    (items launched by the last day), `out/truth/` (item appeal and quality, stock at the
    start of each day: evaluation only) and `out/summary.json`.

    Args:
        cfg: world parameters.
        seed: random seed; the same seed writes byte-identical files.
        out: output directory.

    Returns:
        The summary (counts by event type, sessions, shoppers).
    """
    out = Path(out)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    shop = Shop(cfg, seed)
    counts = {e: 0 for e in EVENT_CODES}
    sessions = 0
    stock_days = []
    with pq.ParquetWriter(out / "events.parquet", EVENT_SCHEMA, compression="zstd") as writer:
        for day in range(cfg.days):
            stock_days.append(shop.stock.copy())
            sess = shop.sessions(day)
            outcome = shop.react(sess, shop.organic_lists(sess, day), day)
            writer.write_table(outcome.events, row_group_size=cfg.chunk_rows)
            vc = pc.value_counts(outcome.events[n.EVENT_TYPE]).to_pylist()
            for d in vc:
                counts[d["values"]] += d["counts"]
            sessions += len(sess)
            del outcome
    shop.catalog(cfg.days - 1).to_parquet(out / "items.parquet", index=False)
    shop.item_truth().to_parquet(out / "truth" / "items.parquet", index=False)
    stock = np.stack(stock_days)
    pq.write_table(pa.table({"day": np.repeat(np.arange(cfg.days), cfg.items),
                             n.ITEM_ID: _prefixed("i", np.tile(np.arange(cfg.items), cfg.days)),
                             "stock_start": stock.ravel()}), out / "truth" / "stock.parquet", compression="zstd")
    summary = {"seed": int(seed), "days": cfg.days, "start_date": str(cfg.start_date), "sessions": int(sessions),
               "shoppers": shop.n_shoppers, "items": int((shop.launch_day <= cfg.days - 1).sum()),
               "events": {k: int(v) for k, v in counts.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"[simulate] {sessions:,} sessions of {shop.n_shoppers:,} shoppers over {cfg.days} days: "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f" -> {out}")
    return summary
