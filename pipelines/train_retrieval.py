"""Train the two-tower retrieval model on the point-in-time training set.

Where it sits: validate_dataset (passing verdict) -> **train_retrieval** ->
`<work_dir>/model/`: the query tower and candidate tower as SavedModels
(signature `embed`), the vocabularies and the training history. Evaluation
and export embed items and users with these saved towers, exactly as
serving does.
"""
from __future__ import annotations

import os
import random
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from cartwise.config import CartwiseConfig
from feature_repo import names as n
from models.retrieval import EmbeddingModule, RetrievalModel
from models.towers import CandidateTower, QueryTower
from pipelines.layout import Layout
from pipelines.manifest import read_json, write_json, write_manifest
from pipelines.progress import Log, default_log, step

STAGE = "train"
QUERY_FLOATS = list(n.USER_FEATURES)
CANDIDATE_FLOATS = [n.PRICE, *n.ITEM_FEATURES]
QUERY_STRINGS = [n.USER_ID]
CANDIDATE_STRINGS = [n.ITEM_ID, n.CATEGORY]


def set_seeds(seed: int) -> None:
    """Make a training run repeatable on CPU for a given seed."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    tf.config.experimental.enable_op_determinism()


def tensors(df: pd.DataFrame, strings, floats) -> dict[str, np.ndarray]:
    """Columns of `df` as the arrays the towers take (strings as bytes, floats as float32)."""
    out = {c: df[c].astype(str).to_numpy(dtype=object) for c in strings}
    out.update({c: df[c].astype("float32").to_numpy() for c in floats})
    return out


class _EpochLog(tf.keras.callbacks.Callback):
    def __init__(self, log: Log, epochs: int, examples: int):
        super().__init__()
        self.log, self.epochs, self.examples = log, epochs, examples
        self.history: list[dict] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        dt = time.perf_counter() - self.t0
        loss = float((logs or {}).get("loss", float("nan")))
        self.history.append({"epoch": epoch + 1, "loss": loss, "seconds": dt, "examples_per_s": self.examples / dt})
        self.log(f"[{STAGE}] epoch {epoch + 1}/{self.epochs}: loss {loss:.4f}, {dt:.1f}s, "
                 f"{self.examples / dt:,.0f} examples/s")


def fit(train: pd.DataFrame, config: CartwiseConfig, log: Log = default_log) -> tuple[RetrievalModel, list[dict]]:
    """Fit a RetrievalModel on a training frame (columns of the point-in-time set).

    Returns:
        The fitted model and the per-epoch history.
    """
    m = config.model
    set_seeds(m.seed)
    users = sorted(train[n.USER_ID].astype(str).unique())
    items = sorted(train[n.ITEM_ID].astype(str).unique())
    categories = sorted(train[n.CATEGORY].astype(str).unique())
    model = RetrievalModel(QueryTower(users, QUERY_FLOATS, m.embedding_size),
                           CandidateTower(items, categories, CANDIDATE_FLOATS, m.embedding_size))
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=m.learning_rate))
    data = tensors(train, QUERY_STRINGS + CANDIDATE_STRINGS, QUERY_FLOATS + CANDIDATE_FLOATS)
    data[n.WEIGHT] = train[n.WEIGHT].astype("float32").to_numpy()
    ds = (tf.data.Dataset.from_tensor_slices(data)
          .shuffle(len(train), seed=m.seed, reshuffle_each_iteration=True)
          .batch(m.batch_size).prefetch(2))
    cb = _EpochLog(log, m.epochs, len(train))
    model.fit(ds, epochs=m.epochs, verbose=0, callbacks=[cb])
    return model, cb.history


def save_towers(model: RetrievalModel, out_dir) -> None:
    """Save both towers as SavedModels with an `embed` function (no pickle, no Keras deserialization)."""
    tf.saved_model.save(EmbeddingModule(model.query_tower, QUERY_STRINGS, QUERY_FLOATS), str(out_dir / "query_tower"))
    tf.saved_model.save(EmbeddingModule(model.candidate_tower, CANDIDATE_STRINGS, CANDIDATE_FLOATS),
                        str(out_dir / "candidate_tower"))


def run(config: CartwiseConfig, *, log: Log = default_log) -> dict:
    """Train on `<work_dir>/dataset/train.parquet` and write `<work_dir>/model/`.

    Raises:
        RuntimeError: the dataset has no passing validation verdict.
    """
    layout = Layout(config.work_dir)
    verdict = read_json(layout.dataset / "validation.json")
    if not verdict.get("success"):
        raise RuntimeError(f"{layout.dataset / 'validation.json'}: the training set did not pass validation")
    train = pd.read_parquet(layout.dataset / "train.parquet")
    if n.LABEL in train.columns:  # retrieval learns from labelled rows; its negatives are in-batch
        train = train[train[n.LABEL] == 1].reset_index(drop=True)
    with step(STAGE, f"two-tower retrieval on {len(train):,} weighted examples, {config.model.epochs} epochs", log):
        model, history = fit(train, config, log)
    layout.model.mkdir(parents=True, exist_ok=True)
    with step(STAGE, "save towers", log):
        save_towers(model, layout.model)
    summary = {
        "examples": len(train),
        "users": int(train[n.USER_ID].nunique()),
        "items": int(train[n.ITEM_ID].nunique()),
        "history": history,
        "query_inputs": {"strings": QUERY_STRINGS, "floats": QUERY_FLOATS},
        "candidate_inputs": {"strings": CANDIDATE_STRINGS, "floats": CANDIDATE_FLOATS},
        "cutoff": read_json(layout.dataset / "dataset_summary.json")["cutoff"],
    }
    write_json(layout.model / "training_summary.json", summary)
    write_manifest(layout.model, STAGE, {"dataset": str(layout.dataset / "train.parquet")},
                   config.model, summary)
    return summary
