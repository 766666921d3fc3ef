"""Simulated A/B test of revenue per session: two policies, one simulated shop, stratified assignment.

Where it sits: after export, beside serving. `cartwise abtest` (1) generates
the organic history of a world (`simulator/world.py`), (2) trains a bundle for
every arm that asks for one by running the real pipeline on that history
(ingest -> build_features -> build_dataset -> validate -> train -> export),
(3) runs `abtest.days` more days of the same world where each session is
shown the list of its arm's policy (bundles through
`serving.pipeline.Recommender`, with Feast online features), shoppers react
through the simulator's funnel, and every `refresh_days` the policies re-read
the events so far (bundles: ingest -> build_features, which re-materializes
the online store, -> export with the same towers), and (4) writes
`abtest.json` and `report.html`.

Assignment: a shopper is assigned at their first session of the experiment,
by blocked randomization within four strata: new (arrived during the
experiment) vs returning, and high vs low lifetime value. The lift interval
is a delta-method interval on the log ratio of the two arms' revenue per
session, with shoppers as clusters (the unit of randomization) and variances
summed over strata; an A/A test calibrates it (tests/simulator/test_abtest.py).
"""
from __future__ import annotations

import base64
import copy
import io
import json
import math
import shutil
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_repo import names as n
from simulator.config import ABTestConfig, PolicyConfig, SimulationFile
from simulator.policies import (BundlePolicy, OraclePolicy, Policy, PopularPolicy, RandomPolicy, RepeatPolicy)
from simulator.world import EVENT_SCHEMA, Shop, rng_for

ARMS = ("control", "treatment")
STRATA = ("returning/high", "returning/low", "new/high", "new/low")
TRAIN_STAGES = ("ingest", "build_features", "build_dataset", "validate_dataset", "train_retrieval", "export")


# ----------------------------------------------------------------- analysis
def _ratio_var(y: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """Ratio sum(y)/sum(m) over clusters and its delta-method variance."""
    k = len(y)
    if k == 0 or m.sum() == 0:
        return float("nan"), float("nan")
    r = y.sum() / m.sum()
    if k < 2:
        return float(r), float("nan")
    resid = y - r * m
    return float(r), float(k / (k - 1) * (resid ** 2).sum() / m.sum() ** 2)


def arm_metrics(s: pd.DataFrame, catalog_size: int | None = None, shown: dict | None = None) -> dict:
    """Revenue per session, conversion, CTR, AOV, items per order (and coverage) of a session frame."""
    sessions, orders = len(s), int(s["orders"].sum())
    rev = float(s["revenue"].sum())
    out = {
        "sessions": sessions, "shoppers": int(s["user"].nunique()),
        "revenue": rev,
        "revenue_per_session": rev / sessions if sessions else float("nan"),
        "conversion": orders / sessions if sessions else float("nan"),
        "ctr": float(s["clicks"].sum() / s["impressions"].sum()) if s["impressions"].sum() else float("nan"),
        "average_order_value": rev / orders if orders else float("nan"),
        "items_per_order": float(s["quantity"].sum() / orders) if orders else float("nan"),
        "orders": orders,
    }
    if catalog_size is not None and shown is not None:
        out["catalog_coverage"] = len(shown) / catalog_size
    return out


def lift(s: pd.DataFrame, confidence: float = 0.95) -> dict:
    """Relative lift of treatment over control in revenue per session, with a stratified interval.

    Each arm's revenue per session is the session-weighted mean over strata of
    the per-stratum ratio sum(revenue)/sum(sessions), stratum weights being
    the pooled session shares (so an imbalance of strata between arms cannot
    create a lift). Shoppers are the clusters: a per-stratum ratio's variance is
    the delta-method (linearization) variance over that stratum's shoppers.

    Args:
        s: one row per session with columns arm, stratum, user, revenue.
        confidence: two-sided level of the interval.

    Returns:
        revenue_per_session (stratified) per arm, lift, lift_ci (low, high), p_value.
    """
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    per_user = s.groupby(["arm", "stratum", "user"], observed=True).agg(y=("revenue", "sum"),
                                                                        m=("revenue", "size")).reset_index()
    weights = s["stratum"].value_counts(normalize=True)
    est, var = {}, {}
    for arm in ARMS:
        r_tot, v_tot = 0.0, 0.0
        for stratum, w in weights.items():
            g = per_user[(per_user["arm"] == arm) & (per_user["stratum"] == stratum)]
            r, v = _ratio_var(g["y"].to_numpy(float), g["m"].to_numpy(float))
            if math.isnan(r):
                continue  # a stratum empty in one arm carries no comparison
            r_tot += w * r
            v_tot += w * w * (0.0 if math.isnan(v) else v)
        est[arm], var[arm] = r_tot, v_tot
    c, t = est["control"], est["treatment"]
    if c <= 0 or t <= 0:
        return {"revenue_per_session": est, "lift": float("nan"), "lift_ci": [float("nan")] * 2,
                "p_value": float("nan")}
    log_ratio = math.log(t / c)
    se = math.sqrt(var["treatment"] / t ** 2 + var["control"] / c ** 2)
    p = 2 * (1 - NormalDist().cdf(abs(log_ratio) / se)) if se > 0 else float("nan")
    return {"revenue_per_session": est, "lift": t / c - 1,
            "lift_ci": [math.exp(log_ratio - z * se) - 1, math.exp(log_ratio + z * se) - 1], "p_value": p}


def analyse(s: pd.DataFrame, catalog_size: int, shown: dict[str, set], confidence: float = 0.95) -> dict:
    """Everything abtest.json reports, from the session table."""
    res: dict = {"arms": {}, "strata": {}, "daily": []}
    for arm in ARMS:
        res["arms"][arm] = arm_metrics(s[s["arm"] == arm], catalog_size, shown[arm])
    lf = lift(s, confidence)
    res["revenue_per_session"] = {a: res["arms"][a]["revenue_per_session"] for a in ARMS}
    res["revenue_per_session_stratified"] = lf["revenue_per_session"]
    res["revenue_per_session_lift"] = lf["lift"]
    res["lift_ci95" if abs(confidence - 0.95) < 1e-9 else "lift_ci"] = lf["lift_ci"]
    res["p_value"] = lf["p_value"]
    res["significant"] = bool(lf["lift_ci"][0] > 0 or lf["lift_ci"][1] < 0)
    for key in ("conversion", "ctr", "average_order_value", "items_per_order", "catalog_coverage"):
        res[key] = {a: res["arms"][a].get(key) for a in ARMS}
    for stratum in STRATA:
        g = s[s["stratum"] == stratum]
        if len(g) == 0:
            continue
        entry = {a: arm_metrics(g[g["arm"] == a]) for a in ARMS}
        c, t = entry["control"]["revenue_per_session"], entry["treatment"]["revenue_per_session"]
        entry["revenue_per_session_lift"] = t / c - 1 if c and c > 0 else float("nan")
        res["strata"][stratum] = entry
    for day, g in s.groupby("day"):
        row = {"day": int(day)}
        for a in ARMS:
            m = arm_metrics(g[g["arm"] == a])
            row[a] = {k: m[k] for k in ("sessions", "revenue_per_session", "conversion", "ctr")}
        res["daily"].append(row)
    return res


# ---------------------------------------------------------------- assignment
class StratifiedAssigner:
    """Sticky assignment of shoppers to arms by permuted blocks within strata.

    Args:
        seed: world seed (the assignment stream is separate from the world's).
        treatment_share: share of each stratum's shoppers sent to treatment.
    """

    BLOCK = 20

    def __init__(self, seed: int, treatment_share: float):
        self.seed, self.share = seed, treatment_share
        self.arm: dict[int, int] = {}
        self.stratum: dict[int, str] = {}
        self.queues: dict[str, list[int]] = {s: [] for s in STRATA}
        self.blocks = 0

    def _next(self, stratum: str) -> int:
        q = self.queues[stratum]
        if not q:
            rng = rng_for(self.seed, "assign", self.blocks)
            self.blocks += 1
            t = int(round(self.BLOCK * self.share))
            q.extend(rng.permutation(np.r_[np.zeros(self.BLOCK - t, int), np.ones(t, int)]).tolist())
        return q.pop()

    def assign(self, users: np.ndarray, new: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Arm (0 control, 1 treatment) of each session's shopper, assigning first-timers."""
        out = np.empty(len(users), dtype=np.int64)
        for j, (u, nw, hi) in enumerate(zip(users.tolist(), new.tolist(), high.tolist())):
            if u not in self.arm:
                st = f"{'new' if nw else 'returning'}/{'high' if hi else 'low'}"
                self.stratum[u] = st
                self.arm[u] = self._next(st)
            out[j] = self.arm[u]
        return out


# ------------------------------------------------------------------ training
def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def training_config(sim: SimulationFile, events_path: Path, work_dir: Path, last_day: pd.Timestamp,
                    overrides: dict | None) -> dict:
    """cartwise.yaml (as a dict) for training a bundle on the simulated history.

    Defaults suit a small world; `training:` in the simulation file and the
    arm's `train:` override them (deep merge, arm last).
    """
    base = {
        "data": {"adapter": "canonical", "paths": [str(events_path)], "work_dir": str(work_dir)},
        "objective": {"event_weights": {"purchase": 1.0, "add_to_cart": 0.3, "click": 0.05, "view": 0.0,
                                        "return": 0.0}},
        "model": {"embedding_size": 16, "epochs": 5, "batch_size": 512, "learning_rate": 0.1, "seed": 7},
        "validation": {"min_rows": 100},
        "evaluation": {"split_date": str(last_day.date()), "k": [10]},
    }
    return _merge(_merge(base, sim.training), overrides or {})


def train_bundle(raw_config: dict, log) -> Path:
    """Run the real pipeline on `raw_config` and return the exported bundle directory."""
    import importlib

    from cartwise.bundle import current_bundle
    from cartwise.config import parse_config

    cfg = parse_config(raw_config, source="abtest training config", base_dir=Path(raw_config["data"]["work_dir"]))
    for stage in TRAIN_STAGES:
        importlib.import_module(f"pipelines.{stage}").run(cfg, log=log)
    return current_bundle(cfg.work_dir / "bundles")


def bundle_refresher(raw_config: dict, ab_dir: Path, shop: Shop, log):
    """A refresh function for a trained bundle: new events -> ingest -> build_features -> export."""
    from cartwise.config import parse_config

    def refresh(events: pd.DataFrame, day: int) -> Path | None:
        ab_file = ab_dir / "ab_events.parquet"
        if not ab_file.is_file():
            return None
        cfg_raw = _merge(raw_config, {})
        cfg_raw["data"]["paths"] = [*raw_config["data"]["paths"], str(ab_file)]
        cfg = parse_config(cfg_raw, source="abtest refresh config", base_dir=Path(raw_config["data"]["work_dir"]))
        import importlib

        from cartwise.bundle import current_bundle
        for stage in ("ingest", "build_features"):
            importlib.import_module(f"pipelines.{stage}").run(cfg, log=log)
        try:
            importlib.import_module("pipelines.export").run(cfg, log=log)
        except RuntimeError as e:
            # export's gates (validation verdict, drift, index recall) may refuse the new bundle; the
            # old one keeps serving, and its online features were re-materialized just above
            log(f"[abtest] day {day}: export refused ({e}); the current bundle keeps serving with fresh features")
            return None
        return current_bundle(cfg.work_dir / "bundles")

    return refresh


# --------------------------------------------------------------------- run
def make_policy(spec: PolicyConfig, arm: str, shop: Shop, sim: SimulationFile, out: Path, history: Path,
                last_day: pd.Timestamp, log) -> Policy:
    """Build an arm's policy; a `train:` bundle is trained here on the history."""
    k = sim.abtest.k
    if spec.policy == "popular":
        return PopularPolicy(shop, k)
    if spec.policy == "random":
        return RandomPolicy(shop, k, stream_offset=ARMS.index(arm))
    if spec.policy == "repeat":
        return RepeatPolicy(shop, k)
    if spec.policy == "oracle":
        return OraclePolicy(shop, k)
    if spec.bundle is not None:
        return BundlePolicy(shop, k, sim.resolve(spec.bundle), spec.exclude_purchased)
    raw = training_config(sim, history, out / arm / "work", last_day, spec.train)
    (out / arm).mkdir(parents=True, exist_ok=True)
    (out / arm / "training_config.json").write_text(json.dumps(raw, indent=2, default=str))
    log(f"[abtest] training the {arm} bundle ({spec.label}) on the simulated history")
    bundle = train_bundle(raw, log)
    return BundlePolicy(shop, k, bundle, spec.exclude_purchased,
                        refresher=bundle_refresher(raw, out / "ab", shop, log))


def run(sim: SimulationFile, seed: int, out: Path, *, log=print, write_report: bool = True) -> dict:
    """Run the experiment of `sim` and write `out/abtest.json` (and `out/report.html`).

    Args:
        sim: the parsed simulation file (world, history_days, training, abtest).
        seed: the world's seed.
        out: output directory.
        log: progress output.
        write_report: also render the HTML report with the daily plot.

    Returns:
        The contents of abtest.json.
    """
    t0 = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ab: ABTestConfig = sim.abtest
    world = sim.world
    hist_days = sim.history_days or world.days
    needs_events = any(p.policy in ("bundle", "popular", "repeat") for p in (ab.control, ab.treatment))
    shop = Shop(world, seed)
    hist_dir = out / "history"
    hist_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    writer = pq.ParquetWriter(hist_dir / "events.parquet", EVENT_SCHEMA, compression="zstd") if needs_events else None
    for day in range(hist_days):
        sess = shop.sessions(day)
        o = shop.react(sess, shop.organic_lists(sess, day), day)
        if writer is not None:
            writer.write_table(o.events)
            tables.append(o.events)
    if writer is not None:
        writer.close()
        shop.catalog(hist_days - 1).to_parquet(hist_dir / "items.parquet", index=False)
    last_day = shop.start + pd.Timedelta(days=hist_days - 1)
    log(f"[abtest] history: {hist_days} days, {shop.sessions_so_far:,} sessions, {shop.n_shoppers:,} shoppers")

    policies = {arm: make_policy(spec, arm, shop, sim, out, hist_dir / "events.parquet", last_day, log)
                for arm, spec in zip(ARMS, (ab.control, ab.treatment))}

    def all_events() -> pd.DataFrame:
        return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=list(EVENT_SCHEMA.names))

    if needs_events:
        ev = all_events()
        for p in policies.values():
            if not isinstance(p, BundlePolicy):
                p.refresh(ev, hist_days)
    assigner = StratifiedAssigner(seed, ab.treatment_share)
    first_day = hist_days
    rows, shown = [], {a: set() for a in ARMS}
    ab_tables = []
    for d in range(ab.days):
        day = first_day + d
        if ab.refresh_days and d > 0 and d % ab.refresh_days == 0 and needs_events:
            (out / "ab").mkdir(exist_ok=True)
            pq.write_table(pa.concat_tables(ab_tables), out / "ab" / "ab_events.parquet", compression="zstd")
            shop.catalog(day - 1).to_parquet(out / "ab" / "items.parquet", index=False)
            ev = all_events()
            for arm, p in policies.items():
                log(f"[abtest] day {d}: refreshing {arm}")
                p.refresh(ev, day)
        sess = shop.sessions(day)
        if ab.sessions_per_day is not None and len(sess) > ab.sessions_per_day:
            keep = np.zeros(len(sess), dtype=bool)
            keep[rng_for(seed, "cap", day).choice(len(sess), ab.sessions_per_day, replace=False)] = True
            sess = sess.subset(keep)
        new = shop.shoppers["arrival"][sess.user] >= first_day
        arm_of = assigner.assign(sess.user, new, shop.shoppers["high"][sess.user])
        shown_lists = np.full((len(sess), ab.k), -1, dtype=np.int64)
        for a, arm in enumerate(ARMS):
            mask = arm_of == a
            if mask.any():
                shown_lists[mask] = policies[arm].lists(sess.subset(mask), day)
                shown[arm].update(shown_lists[mask][shown_lists[mask] >= 0].tolist())
        o = shop.react(sess, shown_lists, day)
        if needs_events:
            tables.append(o.events)
            ab_tables.append(o.events)
        rows.append(pd.DataFrame({
            "day": d, "user": sess.user, "arm": np.asarray(ARMS)[arm_of],
            "stratum": [assigner.stratum[u] for u in sess.user.tolist()],
            "impressions": o.impressions, "clicks": o.clicks, "carts": o.carts, "orders": o.orders,
            "quantity": o.quantity, "revenue": o.revenue}))
        day_s = rows[-1]
        log(f"[abtest] day {d + 1}/{ab.days}: " + ", ".join(
            f"{arm} {len(g):,} sessions rps {g['revenue'].mean():.2f} ctr {g['clicks'].sum() / max(g['impressions'].sum(), 1):.3f}"
            for arm, g in day_s.groupby("arm")))
    s = pd.concat(rows, ignore_index=True)
    catalog_size = int(shop.launched(first_day + ab.days - 1).sum())
    res = analyse(s, catalog_size, shown, ab.confidence)
    res["parameters"] = {"seed": int(seed), "history_days": hist_days, "abtest": ab.model_dump(mode="json"),
                         "world": world.model_dump(mode="json"), "training": sim.training}
    res["policies"] = {arm: {"spec": spec.model_dump(mode="json"), "label": spec.label,
                             "bundle": str(getattr(policies[arm], "bundle_dir", "")) or None,
                             "model_served_share": (policies[arm].served_by_model / policies[arm].requests
                                                    if isinstance(policies[arm], BundlePolicy)
                                                    and policies[arm].requests else None)}
                       for arm, spec in zip(ARMS, (ab.control, ab.treatment))}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "abtest.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    s.to_parquet(out / "sessions.parquet", index=False)
    if write_report:
        (out / "report.html").write_text(render_html(res))
    log(summary_text(res))
    return res


# -------------------------------------------------------------------- report
def summary_text(res: dict) -> str:
    """The figures the command prints (and the README quotes)."""
    lab = {a: res["policies"][a]["label"] for a in ARMS} if "policies" in res else {a: a for a in ARMS}
    lines = [f"{'metric':<24}{'control: ' + lab['control']:>28}{'treatment: ' + lab['treatment']:>30}"]
    for key, fmt in (("sessions", "{:,.0f}"), ("revenue_per_session", "{:.3f}"), ("conversion", "{:.4f}"),
                     ("ctr", "{:.4f}"), ("average_order_value", "{:.2f}"), ("items_per_order", "{:.3f}"),
                     ("catalog_coverage", "{:.3f}")):
        lines.append(f"{key:<24}" + "".join(f"{fmt.format(res['arms'][a].get(key, float('nan'))):>{w}}"
                                            for a, w in zip(ARMS, (28, 30))))
    lo, hi = res.get("lift_ci95", res.get("lift_ci"))
    lines.append(f"revenue_per_session_lift {res['revenue_per_session_lift']:+.2%} "
                 f"(95% CI {lo:+.2%} .. {hi:+.2%}, p = {res['p_value']:.3g})")
    return "\n".join(lines)


def plot_png(res: dict) -> bytes:
    """PNG of the daily series: CTR, conversion and revenue per session per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [r["day"] + 1 for r in res["daily"]]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for ax, key, title in zip(axes, ("ctr", "conversion", "revenue_per_session"),
                              ("CTR (clicks / impressions)", "conversion (sessions with a purchase)",
                               "revenue per session")):
        for arm, style in zip(ARMS, ("-o", "-s")):
            label = res["policies"][arm]["label"] if "policies" in res else arm
            ax.plot(days, [r[arm][key] for r in res["daily"]], style, ms=3, label=f"{arm}: {label}")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("experiment day")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def render_html(res: dict) -> str:
    """A self-contained report: summary table, strata, and the daily plot (PNG inlined as base64)."""
    png = base64.b64encode(plot_png(res)).decode()
    strata = "".join(
        f"<tr><td>{k}</td><td>{v['control']['sessions']:,}</td><td>{v['treatment']['sessions']:,}</td>"
        f"<td>{v['control']['revenue_per_session']:.3f}</td><td>{v['treatment']['revenue_per_session']:.3f}</td>"
        f"<td>{v['revenue_per_session_lift']:+.2%}</td></tr>" for k, v in res["strata"].items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>cartwise simulated A/B test</title>"
            f"<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:2px 8px;"
            f"text-align:right}}</style></head><body><h1>Simulated A/B test</h1><pre>{summary_text(res)}</pre>"
            f"<h2>Daily series</h2><img alt='daily series' src='data:image/png;base64,{png}'>"
            f"<h2>Strata</h2><table><tr><th>stratum</th><th>sessions C</th><th>sessions T</th><th>RPS C</th>"
            f"<th>RPS T</th><th>lift</th></tr>{strata}</table>"
            f"<h2>Parameters</h2><pre>{json.dumps(res.get('parameters', {}), indent=1, default=str)}</pre>"
            f"</body></html>")
