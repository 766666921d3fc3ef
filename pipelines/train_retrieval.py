"""Train the two-tower retrieval model on the point-in-time training set.

Where it sits: validate_dataset (passing verdict) -> **train_retrieval** ->
`<work_dir>/model/`: the query tower and candidate tower as SavedModels
(signature `embed`), the vocabularies and the training history. Evaluation
and export embed items and users with these saved towers, exactly as
serving does.

The tower inputs are the module constants below; `run()` writes them to
`training_summary.json` (`query_inputs`, `candidate_inputs`), and every
consumer builds its input dict with :func:`tensors`.

* Query tower: user id (id path) + the user's purchase statistics + the
  session context (category of the item in view, device); a batch lookup
  has no session ("unknown").
* Candidate tower: item id (id path) + category, price band, price and the
  description embedding (content path, all a new item needs).
"""
from __future__ import annotations

import os
import random
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from cartwise.config import CartwiseConfig, ObjectiveConfig
from feature_repo import names as n
from models.retrieval import EmbeddingModule, RetrievalModel
from models.towers import CandidateTower, QueryTower
from pipelines.layout import Layout
from pipelines.manifest import read_json, write_json, write_manifest
from pipelines.progress import Log, default_log, step

STAGE = "train"
#: session context of the query tower (strings; "unknown" when there is no session)
QUERY_CONTEXT = [n.SESSION_CATEGORY, n.SESSION_DEVICE]
QUERY_STRINGS = [n.USER_ID, *QUERY_CONTEXT]
#: cumulative purchase statistics (the retrieval_query_v1 service). The 7/30/90-day windows
#: (user_purchase_windows) were tried: NDCG@10 on the Online Retail split 0.250 without them,
#: 0.242 with them (mean of 4 seeds), so they stay out.
QUERY_FLOATS = list(n.USER_FEATURES)
#: content path of the candidate tower: what an item without any sales has
CONTENT_STRINGS = [n.CATEGORY, n.PRICE_BAND]
CONTENT_FLOATS = [n.PRICE]
#: sales statistics in the id path: none. With the item's sales counts there (lines, buyers,
#: revenue), NDCG@10 on the Online Retail split fell from 0.234 to 0.197 (counts seen point in time in training
#: differ from the counts at the cut-off), and a new item has none anyway.
STATS_FLOATS: list[str] = []
CANDIDATE_STRINGS = [n.ITEM_ID, *CONTENT_STRINGS]
CANDIDATE_FLOATS = [*CONTENT_FLOATS, *STATS_FLOATS]
#: dense vector inputs, float32 [B, T] (the TF-IDF + SVD description embedding)
CANDIDATE_VECTORS = [n.TEXT_EMBEDDING]
#: training-only input: the positive item's share of the training examples (logQ correction)
SAMPLING_PROBABILITY = "sampling_probability"


def set_seeds(seed: int) -> None:
    """Make a training run repeatable on CPU for a given seed."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _stack(cells) -> np.ndarray:
    """A column of float lists as float32 [B, T], zero-padded to the longest row (T = 0 when all are empty)."""
    rows = [np.asarray(c if c is not None else [], dtype=np.float32).ravel() for c in cells]
    width = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), width), np.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def tensors(df: pd.DataFrame, strings, floats, vectors=None) -> dict[str, np.ndarray]:
    """Columns of `df` as the arrays the towers take.

    Args:
        df: a frame holding the columns.
        strings: columns passed as strings, object [B].
        floats: columns passed as float32 [B].
        vectors: columns of float lists passed as float32 [B, T]; None takes
            those of CANDIDATE_VECTORS present in `df` (so a candidate frame
            from `item_features_as_of` carries its description embedding and a
            query frame nothing; a tower ignores inputs it does not take).

    Returns:
        name -> array.
    """
    out = {c: df[c].astype(str).to_numpy(dtype=object) for c in strings}
    out.update({c: df[c].astype("float32").to_numpy() for c in floats})
    if vectors is None:
        vectors = [c for c in CANDIDATE_VECTORS if c in df.columns]
    out.update({c: _stack(df[c].tolist()) for c in vectors})
    return out


def training_examples(train: pd.DataFrame, objective: ObjectiveConfig) -> pd.DataFrame:
    """The rows retrieval learns from under `objective.label`, with their sample weights.

    `purchase`: every labelled row (sampled negatives dropped: retrieval's
    negatives are in-batch), weighted as build_dataset computed
    (event-type weight x recency x value). `click`: click rows only, each
    weighing its recency multiplier (the event-type weight divided out).

    Raises:
        ValueError: `label: click` and the training set has no click rows (a
            log without clicks, such as Online Retail, or event_weights.click = 0).
    """
    if n.LABEL in train.columns:
        train = train[train[n.LABEL] == 1]
    if objective.label == n.CLICK:
        train = train[train[n.EVENT_TYPE] == n.CLICK].copy()
        if train.empty:
            raise ValueError("objective.label is click but the training set has no click events: the event log "
                             "has none (Online Retail has purchases only) or event_weights.click is 0")
        train[n.WEIGHT] = train[n.WEIGHT] / objective.event_weights[n.CLICK]
    return train.reset_index(drop=True)


def sampling_probability(item_ids: pd.Series) -> np.ndarray:
    """Each row's item share of the rows, float32 [N] (how often it is an in-batch negative)."""
    counts = item_ids.map(item_ids.value_counts())
    return (counts / len(item_ids)).astype("float32").to_numpy()


def vector_sizes(df: pd.DataFrame) -> dict[str, int]:
    """Width of each CANDIDATE_VECTORS column (its longest row)."""
    return {c: max((len(v) for v in df[c] if v is not None), default=0) for c in CANDIDATE_VECTORS}


def build_model(train: pd.DataFrame, config: CartwiseConfig) -> RetrievalModel:
    """Towers with vocabularies from `train`, wired to the retrieval task.

    Raises:
        ValueError: `train` lacks tower inputs (a training set built before the
            feature layer of issue 4: rebuild it with `cartwise build-dataset`).
    """
    m = config.model
    missing = [c for c in [*QUERY_STRINGS, *QUERY_FLOATS, *CANDIDATE_STRINGS, *CANDIDATE_FLOATS, *CANDIDATE_VECTORS,
                           n.WEIGHT] if c not in train.columns]
    if missing:
        raise ValueError(f"the training set has no column(s) {missing}; rebuild it with `cartwise build-dataset`")
    vocab = {c: sorted(train[c].astype(str).unique()) for c in [*QUERY_STRINGS, *CANDIDATE_STRINGS]}
    query = QueryTower(vocab[n.USER_ID], QUERY_FLOATS, m.embedding_size,
                       context_vocabs={c: vocab[c] for c in QUERY_CONTEXT}, id_dropout=m.user_id_dropout,
                       id_key=n.USER_ID, seed=m.seed)
    candidate = CandidateTower(vocab[n.ITEM_ID], {c: vocab[c] for c in CONTENT_STRINGS}, CONTENT_FLOATS,
                               vector_sizes(train), m.embedding_size, stats_floats=STATS_FLOATS,
                               id_dropout=m.item_id_dropout, id_key=n.ITEM_ID, seed=m.seed + 1)
    return RetrievalModel(query, candidate, weight=n.WEIGHT,
                          sampling_probability=SAMPLING_PROBABILITY if m.logq_correction else None)


def training_dataset(data: dict[str, np.ndarray], batch_size: int, seed: int) -> tf.data.Dataset:
    """Shuffled batches (a new order each epoch, the same orders for the same seed).

    Shuffles row indices and gathers whole batches, rather than shuffling one
    example at a time: the same result, several times faster on CPU.
    """
    rows = len(next(iter(data.values())))
    cols = {k: tf.constant(v) for k, v in data.items()}
    return (tf.data.Dataset.range(rows)
            .shuffle(rows, seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .map(lambda idx: {k: tf.gather(v, idx) for k, v in cols.items()})
            .prefetch(2))


class EpochLog(tf.keras.callbacks.Callback):
    """Per-epoch history (loss, any extra Keras metrics, seconds, examples/s) and a progress line.

    Used by both trainers (train_retrieval, train_ranking).

    Args:
        log: where progress lines go.
        epochs: planned epochs (for the "k/N" in the line).
        examples: training rows per epoch (for examples/s).
        stage: the stage name in the line.
        metrics: extra Keras metric names to record (e.g. "auc").
    """

    def __init__(self, log: Log, epochs: int, examples: int, stage: str = STAGE, metrics: tuple[str, ...] = ()):
        super().__init__()
        self.log, self.epochs, self.examples, self.stage, self.metrics = log, epochs, examples, stage, metrics
        self.history: list[dict] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        dt = time.perf_counter() - self.t0
        logs = logs or {}
        row = {"epoch": epoch + 1, "loss": float(logs.get("loss", float("nan")))}
        row.update({m: float(logs.get(m, float("nan"))) for m in self.metrics})
        row.update(seconds=dt, examples_per_s=self.examples / dt)
        self.history.append(row)
        extra = "".join(f", {m} {row[m]:.3f}" for m in self.metrics)
        self.log(f"[{self.stage}] epoch {epoch + 1}/{self.epochs}: loss {row['loss']:.4f}{extra}, {dt:.1f}s, "
                 f"{row['examples_per_s']:,.0f} examples/s")


def fit(train: pd.DataFrame, config: CartwiseConfig, log: Log = default_log) -> tuple[RetrievalModel, list[dict]]:
    """Fit a RetrievalModel on training examples (rows of :func:`training_examples`).

    Args:
        train: one row per (user, item, time) example with the tower inputs and `weight`.
        config: `model` is read.

    Returns:
        The fitted model and the per-epoch history.
    """
    m = config.model
    set_seeds(m.seed)
    model = build_model(train, config)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=m.learning_rate))
    data = tensors(train, QUERY_STRINGS + CANDIDATE_STRINGS, QUERY_FLOATS + CANDIDATE_FLOATS, CANDIDATE_VECTORS)
    data[n.WEIGHT] = train[n.WEIGHT].astype("float32").to_numpy()
    if m.logq_correction:
        data[SAMPLING_PROBABILITY] = sampling_probability(train[n.ITEM_ID].astype(str))
    cb = EpochLog(log, m.epochs, len(train))
    model.fit(training_dataset(data, m.batch_size, m.seed), epochs=m.epochs, verbose=0, callbacks=[cb])
    return model, cb.history


def input_contract(model: RetrievalModel) -> dict:
    """What each saved tower's `embed` takes: names by kind, and each vector's width."""
    return {
        "query_inputs": {"strings": list(QUERY_STRINGS), "floats": list(QUERY_FLOATS)},
        "candidate_inputs": {"strings": list(CANDIDATE_STRINGS), "floats": list(CANDIDATE_FLOATS),
                             "vectors": list(CANDIDATE_VECTORS),
                             "vector_sizes": dict(model.candidate_tower.vector_sizes)},
    }


def save_towers(model: RetrievalModel, out_dir) -> None:
    """Save both towers as SavedModels with an `embed` function (no pickle, no Keras deserialization)."""
    tf.saved_model.save(EmbeddingModule(model.query_tower, QUERY_STRINGS, QUERY_FLOATS), str(out_dir / "query_tower"))
    tf.saved_model.save(EmbeddingModule(model.candidate_tower, CANDIDATE_STRINGS, CANDIDATE_FLOATS, CANDIDATE_VECTORS),
                        str(out_dir / "candidate_tower"))


def run(config: CartwiseConfig, *, log: Log = default_log) -> dict:
    """Train on `<work_dir>/dataset/train.parquet` and write `<work_dir>/model/`.

    Raises:
        RuntimeError: the dataset has no passing validation verdict.
        ValueError: no examples for `objective.label` (see :func:`training_examples`).
    """
    layout = Layout(config.work_dir)
    verdict = read_json(layout.dataset / "validation.json")
    if not verdict.get("success"):
        raise RuntimeError(f"{layout.dataset / 'validation.json'}: the training set did not pass validation")
    train = training_examples(pd.read_parquet(layout.dataset / "train.parquet"), config.objective)
    m = config.model
    with step(STAGE, f"two-tower retrieval on {len(train):,} weighted {config.objective.label} examples, "
              f"{m.epochs} epochs (logQ {'on' if m.logq_correction else 'off'}, id dropout item "
              f"{m.item_id_dropout:g} / user {m.user_id_dropout:g})", log):
        model, history = fit(train, config, log)
    layout.model.mkdir(parents=True, exist_ok=True)
    with step(STAGE, "save towers", log):
        save_towers(model, layout.model)
    summary = {
        "examples": len(train),
        "label": config.objective.label,
        "users": int(train[n.USER_ID].nunique()),
        "items": int(train[n.ITEM_ID].nunique()),
        "history": history,
        **input_contract(model),
        "cutoff": read_json(layout.dataset / "dataset_summary.json")["cutoff"],
    }
    write_json(layout.model / "training_summary.json", summary)
    write_manifest(layout.model, STAGE, {"dataset": str(layout.dataset / "train.parquet")},
                   config.model, summary)
    return summary
