"""Ranker variants on the evaluation split: NDCG@10 of each, scored like `cartwise evaluate` scores the ranker.

Not a test. Where the ranker's settings were tried (README, "Read honestly"). Run, with a config whose
`data.work_dir` is a scratch dir and whose `evaluation` is the split (cartwise.yaml's, with work_dir changed):

    cartwise ingest --config C && cartwise build-features --config C && cartwise build-ranking-dataset --config C
    .venv/bin/python benchmarks/ranking_variants.py --config C [--seeds 42,1,2,3,4] [--epochs 2,3]
        [--learning-rates 0.001] [--out FILE]

(`make demo`'s own work dir does not do: its last stages rebuild `ranking_dataset/` on all the data.)

1. The evaluation's candidates at the cut-off (`pipelines.evaluate.ranked_lists`'s rows: the user's items,
   item-kNN, EASE, popularity) with their point-in-time features, built once.
2. For every (epochs, learning rate, seed): `pipelines.train_ranking.fit` on `ranking_dataset/train.parquet`
   with those settings, then the candidates scored and ranked as `ranked_lists` ranks them (popularity fills
   short lists), NDCG@10 for all items and new to user with the evaluation's protocol, users and metric code.
3. Per (epochs, learning rate): the mean over seeds, and the ensemble (mean of the seeds' logits).

The seed-42 row at the shipped settings is `cartwise evaluate`'s `model` row (0.4255 / 0.1434 on Online Retail).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cartwise.config import load_config  # noqa: E402
from feature_repo import names as n  # noqa: E402
from pipelines import baselines, evaluate  # noqa: E402
from pipelines.build_dataset import train_cutoff  # noqa: E402
from pipelines.build_features import open_store  # noqa: E402
from pipelines.build_ranking_dataset import ranking_rows  # noqa: E402
from pipelines.manifest import read_json  # noqa: E402
from pipelines.train_ranking import fit  # noqa: E402

K = 10


def quiet(*_):
    pass


class Split:
    """The evaluation's users, relevant items and candidate rows at the cut-off (built once)."""

    def __init__(self, config):
        work = config.work_dir
        events = pd.read_parquet(work / "ingest" / "events.parquet")
        items = pd.read_parquet(work / "ingest" / "items.parquet")
        self.cutoff = train_cutoff(config)
        ev = config.evaluation
        test_end = pd.Timestamp(ev.test_end, tz="UTC") + pd.Timedelta(days=1) if ev.test_end else None
        train_p, test_p = evaluate.split_purchases(events, self.cutoff, test_end)
        history = evaluate.purchase_history(train_p)
        self.users, self.relevant, self.bought = evaluate.test_targets(history, test_p)
        self.catalog = set(train_p[n.ITEM_ID].astype(str))
        self.length = max(ev.k) + max((len(s) for s in self.bought.values()), default=0)
        self.popular = baselines.popularity(train_p, self.cutoff, ev.popularity_days)
        store = open_store(work / "feature_store")
        self.rows, _ = ranking_rows(config, store, events[events[n.EVENT_TYPE] == n.PURCHASE], items, self.cutoff,
                                    self.users)

    def ndcg(self, scores: np.ndarray) -> tuple[float, float]:
        """NDCG@10 (all items, new to user) of the candidates ranked by `scores`, as `cartwise evaluate` ranks."""
        lists, _ = evaluate.lists_by_score(self.rows[[n.USER_ID, n.ITEM_ID]].assign(score=scores), self.users,
                                           self.popular, self.length)
        m = evaluate.score_lists({"model": lists}, self.relevant, self.bought, [K], self.catalog)
        return m["all_items"]["model"][f"ndcg@{K}"], m["new_to_user"]["model"][f"ndcg@{K}"]

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="cartwise.yaml with a scratch work_dir (see above)")
    ap.add_argument("--seeds", default="42,1,2,3,4")
    ap.add_argument("--epochs", default=None, help="comma-separated (default: ranking.epochs)")
    ap.add_argument("--learning-rates", default=None, help="comma-separated (default: ranking.learning_rate)")
    ap.add_argument("--out", default=None, help="JSON of every row (default: <work_dir>/ranking_variants.json)")
    args = ap.parse_args(argv)
    config = load_config(args.config)
    src = config.work_dir / "ranking_dataset"
    if not (src / "train.parquet").is_file():
        raise SystemExit(f"{src}/train.parquet not found: run `cartwise build-ranking-dataset --config {args.config}`")
    summary = read_json(src / "summary.json")
    if pd.Timestamp(summary["training_end"]) != train_cutoff(config):
        raise SystemExit(f"{src} was built for training end {summary['training_end']}, the split's cut-off is "
                         f"{train_cutoff(config).isoformat()}: run `cartwise build-ranking-dataset --config "
                         f"{args.config}` again")
    r = config.ranking
    seeds = [int(s) for s in args.seeds.split(",")]
    epochs = [int(e) for e in args.epochs.split(",")] if args.epochs else [r.epochs]
    rates = [float(x) for x in args.learning_rates.split(",")] if args.learning_rates else [r.learning_rate]
    t = time.perf_counter()
    split = Split(config)
    train = pd.read_parquet(src / "train.parquet")
    features = list(summary["features"])
    x = split.rows[features].to_numpy(np.float32)
    print(f"{len(split.users):,} test users, {len(split.rows):,} candidate rows, {len(train):,} training rows "
          f"({time.perf_counter() - t:.0f}s)", flush=True)
    out = []
    print(f"| epochs | learning rate | seed | NDCG@{K} all items | NDCG@{K} new to user |\n|---:|---:|---|---:|---:|")
    for ep in epochs:
        for lr in rates:
            logits, rows = [], []
            for seed in seeds:
                cfg = config.model_copy(update={"ranking": r.model_copy(update={"seed": seed, "epochs": ep,
                                                                               "learning_rate": lr})})
                tower, _ = fit(train, features, cfg, log=quiet)
                s = tower({"features": x}).numpy()
                logits.append(s)
                a, b = split.ndcg(s)
                rows.append((a, b))
                out.append({"epochs": ep, "learning_rate": lr, "seed": seed, "ndcg_all": a, "ndcg_new": b})
                print(f"| {ep} | {lr:g} | {seed} | {a:.4f} | {b:.4f} |", flush=True)
            mean = np.mean(rows, axis=0)
            ens = split.ndcg(np.mean(logits, axis=0))
            out.append({"epochs": ep, "learning_rate": lr, "seed": "mean", "ndcg_all": float(mean[0]),
                        "ndcg_new": float(mean[1])})
            out.append({"epochs": ep, "learning_rate": lr, "seed": "ensemble", "ndcg_all": ens[0], "ndcg_new": ens[1]})
            print(f"| {ep} | {lr:g} | mean of {len(seeds)} | {mean[0]:.4f} | {mean[1]:.4f} |")
            print(f"| {ep} | {lr:g} | ensemble of {len(seeds)} (mean logit) | {ens[0]:.4f} | {ens[1]:.4f} |",
                  flush=True)
    path = Path(args.out) if args.out else config.work_dir / "ranking_variants.json"
    path.write_text(json.dumps({"config": str(args.config), "cutoff": split.cutoff.isoformat(), "rows": out},
                               indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
