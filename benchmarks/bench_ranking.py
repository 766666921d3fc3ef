"""Training benchmark of the ranking model: examples/s of the DCN-v2 ranker with the full feature set.

Not a test (timings never assert in the suite). Run:

    .venv/bin/python benchmarks/bench_ranking.py [--dataset build/ranking_dataset/train.parquet]
        [--rows 0] [--epochs 3] [--config cartwise.yaml] [--out build/benchmarks/ranking.json]

Models, trained in this process on the same rows with `ranking` of cartwise.yaml:

1. `cartwise`: `models.ranking.RankingModel` fed as `pipelines/train_ranking.py`
   feeds it: one float matrix [B, F] per batch (every feature of the
   ranking_v1 service plus the candidate source scores, 48 on Online Retail).
2. `per_feature_dict`: the same model fed the TFRS-tutorial way, one tensor
   per feature (`from_tensor_slices(dict)`), stacked inside the tower: what
   the matrix input saves.

Timing: one untimed epoch each first (tracing), then `--epochs` rounds in
which each model trains one epoch in turn (same machine load); examples/s is
rows / epoch seconds, median over rounds. Reference from the issue: DCN
ranking 35,000-60,000 examples/s on this machine. The machine is shared:
compare the columns of one run, not runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from cartwise.config import load_config  # noqa: E402
from feature_repo import names as n  # noqa: E402
from models.ranking import STACKED, RankingModel, RankingTower  # noqa: E402
from pipelines.train_retrieval import set_seeds  # noqa: E402


def _model(train: pd.DataFrame, feats: list[str], r) -> RankingModel:
    tower = RankingTower(feats, r.cross_layers, r.hidden)
    tower.adapt({STACKED: train[feats].to_numpy(np.float32)})
    model = RankingModel(tower)
    model.compile(optimizer=tf.keras.optimizers.Adam(r.learning_rate))
    return model


def datasets(train: pd.DataFrame, feats: list[str], r) -> dict[str, tf.data.Dataset]:
    """The two input pipelines over the same rows."""
    label = train[n.LABEL].to_numpy(np.float32)
    weight = train[n.WEIGHT].to_numpy(np.float32)
    stacked = {STACKED: train[feats].to_numpy(np.float32), "label": label, "weight": weight}
    per_feature = {f: train[f].to_numpy(np.float32) for f in feats}
    per_feature.update(label=label, weight=weight)
    return {name: tf.data.Dataset.from_tensor_slices(d).shuffle(len(train), seed=r.seed).batch(r.batch_size).prefetch(2)
            for name, d in (("cartwise", stacked), ("per_feature_dict", per_feature))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "cartwise.yaml"))
    p.add_argument("--dataset", help="ranking rows (default: <work_dir>/ranking_dataset/train.parquet)")
    p.add_argument("--rows", type=int, default=0, help="use the first N rows (0: all)")
    p.add_argument("--epochs", type=int, default=3, help="timed rounds")
    p.add_argument("--out", default=str(ROOT / "build" / "benchmarks" / "ranking.json"))
    args = p.parse_args(argv)
    config = load_config(args.config)
    path = Path(args.dataset) if args.dataset else config.work_dir / "ranking_dataset" / "train.parquet"
    if not path.is_file():
        raise SystemExit(f"{path}: no ranking rows; run `cartwise build-ranking-dataset` first")
    feats = json.loads((path.parent / "summary.json").read_text())["features"]
    train = pd.read_parquet(path)
    if args.rows:
        train = train.iloc[: args.rows]
    r = config.ranking
    set_seeds(r.seed)
    ds = datasets(train, feats, r)
    models = {name: _model(train, feats, r) for name in ds}
    for name, m in models.items():  # untimed: tracing
        m.fit(ds[name], epochs=1, verbose=0)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.epochs):
        for name, m in models.items():
            t0 = time.perf_counter()
            m.fit(ds[name], epochs=1, verbose=0)
            times[name].append(time.perf_counter() - t0)
    rows = []
    base = len(train) / statistics.median(times["per_feature_dict"])
    for name, ts in times.items():
        eps = len(train) / statistics.median(ts)
        rows.append({"model": name, "examples_per_s": round(eps), "min": round(len(train) / max(ts)),
                     "max": round(len(train) / min(ts)), "vs_per_feature_dict": round(eps / base, 2)})
    print(f"{len(train):,} rows x {len(feats)} features, batch {r.batch_size}, {args.epochs} rounds")
    print(f"{'model':<18} {'examples/s':>11} {'min':>9} {'max':>9} {'vs dict':>8}")
    for row in rows:
        print(f"{row['model']:<18} {row['examples_per_s']:>11,} {row['min']:>9,} {row['max']:>9,} "
              f"{row['vs_per_feature_dict']:>7.2f}x")
    out = {"rows": len(train), "features": len(feats), "batch_size": r.batch_size, "results": rows,
           "load_average": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
