"""Training benchmark: examples/s of the cartwise two-tower against a plain TFRS two-tower of ids only.

Not a test (timings never assert in the suite). Run:

    .venv/bin/python benchmarks/bench_training.py [--dataset build/dataset/train.parquet | --synthetic]
        [--rows 200000] [--epochs 3] [--config cartwise.yaml] [--out build/benchmarks/training.json]

Models, all trained in this process on the same examples with `model` of
cartwise.yaml (embedding size, batch size, learning rate, seed):

1. `cartwise`: `pipelines.train_retrieval` exactly as `cartwise train` runs
   it: the full feature set (user id, purchase statistics and session
   context; item id, category, price band, price and the description
   embedding), id dropout, logQ correction, sample weights, and its input
   pipeline (row indices shuffled, whole batches gathered).
2. `ids_only`: the plain TFRS two-tower (StringLookup + Embedding per side,
   `tfrs.tasks.Retrieval`), same input pipeline: the model's cost alone.
3. `ids_only_tutorial`: the same model fed as in the TFRS tutorials
   (`from_tensor_slices(...).shuffle(N).batch(B)`): what the input pipeline saves.

Data: the shipped training set (`<work_dir>/dataset/train.parquet`, labelled
rows, as `cartwise train` reads it) when it exists, else (or with
`--synthetic`) a synthetic set of the same shape (`--rows` examples, users and
items Zipf-distributed, 16-d description embeddings).

Timing: one untimed epoch per model first (tracing), then `--epochs` rounds
in which every model trains one epoch in turn, so all see the same machine
load; examples/s is rows / epoch seconds, median over rounds. Goal: the
cartwise model >= 20,000 examples/s on 2 cores. The machine is shared:
compare the columns of one run, not runs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from cartwise.config import CartwiseConfig, load_config  # noqa: E402
from feature_repo import names as n  # noqa: E402
from pipelines import train_retrieval as tr  # noqa: E402

GOAL = 20_000


class IdsOnlyModel(tfrs.Model):
    """The baseline: the TFRS tutorial two-tower, one id embedding per side.

    Args:
        users: user vocabulary.
        items: item vocabulary.
        embedding_size: D.
    """

    def __init__(self, users, items, embedding_size: int):
        super().__init__()
        self.query = tf.keras.Sequential([tf.keras.layers.StringLookup(vocabulary=users, mask_token=None),
                                          tf.keras.layers.Embedding(len(users) + 1, embedding_size)])
        self.candidate = tf.keras.Sequential([tf.keras.layers.StringLookup(vocabulary=items, mask_token=None),
                                              tf.keras.layers.Embedding(len(items) + 1, embedding_size)])
        self.task = tfrs.tasks.Retrieval()

    def compute_loss(self, features, training=False):
        return self.task(self.query(features[n.USER_ID]), self.candidate(features[n.ITEM_ID]),
                         compute_metrics=False, compute_batch_metrics=False)


def synthetic(rows: int, seed: int, users: int = 3000, items: int = 3500, text: int = 16) -> pd.DataFrame:
    """Training rows shaped like the Online Retail set: Zipf users and items, 13 categories, 5 price bands."""
    rng = np.random.default_rng(seed)

    def zipf(k: int, size: int) -> np.ndarray:
        p = 1.0 / np.arange(1, k + 1)
        return rng.choice(k, size=size, p=p / p.sum())

    u, i = zipf(users, rows), zipf(items, rows)
    item_cat = rng.integers(13, size=items)
    item_text = rng.normal(size=(items, text)).astype(np.float32)
    df = pd.DataFrame({n.USER_ID: np.char.add("U", u.astype(str)).astype(object),
                       n.ITEM_ID: np.char.add("I", i.astype(str)).astype(object),
                       n.CATEGORY: np.char.add("c", item_cat[i].astype(str)).astype(object),
                       n.PRICE_BAND: np.char.add("p", (i % 5).astype(str)).astype(object),
                       n.PRICE: rng.lognormal(1.0, 1.0, items)[i],
                       n.SESSION_CATEGORY: "unknown", n.SESSION_DEVICE: "unknown",
                       n.EVENT_TYPE: n.PURCHASE, n.LABEL: 1, n.WEIGHT: rng.uniform(1, 8, rows)})
    df[n.TEXT_EMBEDDING] = list(item_text[i])
    for f in n.USER_FEATURES:
        df[f] = rng.poisson(20, rows).astype(float)
    return df


def load_examples(args, config: CartwiseConfig) -> tuple[pd.DataFrame, str]:
    path = Path(args.dataset) if args.dataset else config.work_dir / "dataset" / "train.parquet"
    if not args.synthetic and path.is_file():
        df = tr.training_examples(pd.read_parquet(path), config.objective)
        return (df.head(args.rows) if args.rows else df), str(path)
    return synthetic(args.rows or 200_000, config.model.seed), "synthetic"


def models(train: pd.DataFrame, config: CartwiseConfig) -> dict[str, tuple[tf.keras.Model, tf.data.Dataset]]:
    """Each benchmarked model with its compiled optimizer and input pipeline."""
    m = config.model
    tr.set_seeds(m.seed)
    data = tr.tensors(train, tr.QUERY_STRINGS + tr.CANDIDATE_STRINGS, tr.QUERY_FLOATS + tr.CANDIDATE_FLOATS,
                      tr.CANDIDATE_VECTORS)
    data[n.WEIGHT] = train[n.WEIGHT].astype("float32").to_numpy()
    if m.logq_correction:
        data[tr.SAMPLING_PROBABILITY] = tr.sampling_probability(train[n.ITEM_ID].astype(str))
    full = tr.build_model(train, config)
    ids = {k: data[k] for k in (n.USER_ID, n.ITEM_ID)}
    users = sorted(set(ids[n.USER_ID]))
    items = sorted(set(ids[n.ITEM_ID]))
    plain, tutorial = IdsOnlyModel(users, items, m.embedding_size), IdsOnlyModel(users, items, m.embedding_size)
    tutorial_ds = (tf.data.Dataset.from_tensor_slices(ids).shuffle(len(train), seed=m.seed,
                                                                    reshuffle_each_iteration=True)
                   .batch(m.batch_size).prefetch(2))
    out = {"cartwise": (full, tr.training_dataset(data, m.batch_size, m.seed)),
           "ids_only": (plain, tr.training_dataset(ids, m.batch_size, m.seed)),
           "ids_only_tutorial": (tutorial, tutorial_ds)}
    for model, _ in out.values():
        model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=m.learning_rate))
    return out


def params(model: tf.keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def bench(train: pd.DataFrame, config: CartwiseConfig, epochs: int, log=print) -> list[dict]:
    runs = models(train, config)
    rows = len(train)
    for name, (model, ds) in runs.items():  # tracing and first-touch costs stay out of the timings
        t = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0)
        log(f"warm-up epoch {name}: {time.perf_counter() - t:.1f}s")
    times: dict[str, list[float]] = {k: [] for k in runs}
    losses: dict[str, float] = {}
    for r in range(epochs):
        for name, (model, ds) in runs.items():
            t = time.perf_counter()
            h = model.fit(ds, epochs=1, verbose=0)
            times[name].append(time.perf_counter() - t)
            losses[name] = float(h.history["loss"][-1])
        log(f"round {r + 1}/{epochs}: " + ", ".join(f"{k} {rows / v[-1]:,.0f}/s" for k, v in times.items()))
    base = rows / statistics.median(times["ids_only"])
    out = []
    for name, secs in times.items():
        rate = rows / statistics.median(secs)
        out.append({"model": name, "parameters": params(runs[name][0]), "examples_per_s": rate,
                    "examples_per_s_min": rows / max(secs), "examples_per_s_max": rows / min(secs),
                    "epoch_seconds": secs, "vs_ids_only": rate / base, "last_loss": losses[name]})
    return out


def table(results: list[dict]) -> str:
    lines = [f"{'model':<19} {'params':>10} {'examples/s':>11} {'min':>9} {'max':>9} {'vs ids_only':>11}"]
    for r in results:
        lines.append(f"{r['model']:<19} {r['parameters']:>10,} {r['examples_per_s']:>11,.0f} "
                     f"{r['examples_per_s_min']:>9,.0f} {r['examples_per_s_max']:>9,.0f} {r['vs_ids_only']:>10.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "cartwise.yaml"), help="`model` and `objective` from here")
    p.add_argument("--dataset", help="training set parquet (default: <work_dir>/dataset/train.parquet)")
    p.add_argument("--synthetic", action="store_true", help="use a synthetic set even if the dataset exists")
    p.add_argument("--rows", type=int, default=0, help="examples (synthetic default 200,000; 0: the whole dataset)")
    p.add_argument("--epochs", type=int, default=3, help="timed rounds (one epoch per model each)")
    p.add_argument("--out", default=str(ROOT / "build" / "benchmarks" / "training.json"))
    args = p.parse_args(argv)
    config = load_config(args.config)
    train, source = load_examples(args, config)
    m = config.model
    print(f"{len(train):,} examples from {source}; batch {m.batch_size}, embedding {m.embedding_size}, "
          f"logQ {m.logq_correction}; {os.cpu_count()} CPUs, TF {tf.__version__}, TFRS {tfrs.__version__}")
    results = bench(train, config, args.epochs)
    cw = next(r for r in results if r["model"] == "cartwise")
    print(table(results))
    verdict = "PASS" if cw["examples_per_s"] >= GOAL else "FAIL"
    print(f"cartwise two-tower: {cw['examples_per_s']:,.0f} examples/s (goal >= {GOAL:,}): {verdict}")
    report = {"created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "data": {"source": source, "examples": len(train), "users": int(train[n.USER_ID].nunique()),
                       "items": int(train[n.ITEM_ID].nunique())},
              "model": m.model_dump(mode="json"), "cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
              "libraries": {"tensorflow": tf.__version__, "tensorflow-recommenders": tfrs.__version__},
              "goal_examples_per_s": GOAL, "verdict": verdict, "results": results}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"written {out}")
    return report


if __name__ == "__main__":
    main()
