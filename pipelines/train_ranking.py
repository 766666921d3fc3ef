"""Train the ranking model on the point-in-time ranking set.

Where it sits: build_ranking_dataset -> **train_ranking** ->
`<work_dir>/ranking_model/`: the ranking tower as a SavedModel (signature
`score`, float inputs named in `training_summary.json`) and the training
history. Evaluation and export score candidates with the saved tower,
exactly as serving does.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import tensorflow as tf

from cartwise.config import CartwiseConfig
from feature_repo import names as n
from models.ranking import STACKED, RankingModel, RankingTower, ScoringModule
from pipelines.layout import Layout
from pipelines.manifest import read_json, write_json, write_manifest
from pipelines.progress import Log, default_log, step
from pipelines.train_retrieval import EpochLog, set_seeds

STAGE = "train_ranking"
MODEL_DIR = "ranking_model"
SAVED_MODEL = "ranking_tower"


def feature_arrays(frame: pd.DataFrame, names) -> dict[str, np.ndarray]:
    """The named float columns of `frame` as float32 arrays (the tower's inputs)."""
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise KeyError(f"ranking rows lack feature columns: {', '.join(missing)}")
    return {c: frame[c].to_numpy(dtype=np.float32) for c in names}


def fit(train: pd.DataFrame, features, config: CartwiseConfig, log: Log = default_log) -> tuple[RankingTower, list[dict]]:
    """Fit the ranking tower on labelled rows (columns: features, label, weight).

    Returns:
        The fitted tower and the per-epoch history.
    """
    r = config.ranking
    set_seeds(r.seed)
    tower = RankingTower(features, r.cross_layers, r.hidden)
    missing = [c for c in features if c not in train.columns]
    if missing:
        raise KeyError(f"ranking rows lack feature columns: {', '.join(missing)}")
    data = {STACKED: train[list(features)].to_numpy(dtype=np.float32)}
    tower.adapt(data)
    model = RankingModel(tower)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=r.learning_rate))
    data["label"] = train[n.LABEL].to_numpy(dtype=np.float32)
    data["weight"] = train[n.WEIGHT].to_numpy(dtype=np.float32)
    ds = (tf.data.Dataset.from_tensor_slices(data)
          .shuffle(len(train), seed=r.seed, reshuffle_each_iteration=True)
          .batch(r.batch_size).prefetch(2))
    cb = EpochLog(log, r.epochs, len(train), stage=STAGE, metrics=("auc",))
    model.fit(ds, epochs=r.epochs, verbose=0, callbacks=[cb])
    return tower, cb.history


def run(config: CartwiseConfig, *, log: Log = default_log) -> dict:
    """Train on `<work_dir>/ranking_dataset/train.parquet` and write `<work_dir>/ranking_model/`."""
    layout = Layout(config.work_dir)
    src = layout.root / "ranking_dataset"
    if not (src / "train.parquet").is_file():
        raise FileNotFoundError(f"{src / 'train.parquet'}: not found; run `cartwise build-ranking-dataset` first")
    summary_in = read_json(src / "summary.json")
    features = list(summary_in["features"])
    train = pd.read_parquet(src / "train.parquet")
    out = layout.root / MODEL_DIR
    with step(STAGE, f"DCN ranking on {len(train):,} rows x {len(features)} features, {config.ranking.epochs} epochs",
              log):
        tower, history = fit(train, features, config, log)
    out.mkdir(parents=True, exist_ok=True)
    with step(STAGE, "save the ranking tower", log):
        tf.saved_model.save(ScoringModule(tower), str(out / SAVED_MODEL))
    summary = {"rows": len(train), "positives": int(train[n.LABEL].sum()), "features": features,
               "history": history, "training_end": summary_in["training_end"]}
    write_json(out / "training_summary.json", summary)
    write_manifest(out, STAGE, {"dataset": str(src / "train.parquet")}, config.ranking, summary)
    return summary


def load_scorer(model_dir):
    """A callable scoring a feature frame with the saved ranking tower: frame -> logits float32 [N].

    Args:
        model_dir: `<work_dir>/ranking_model` or a bundle's copy of it.
    """
    from pathlib import Path

    model_dir = Path(model_dir)
    features = read_json(model_dir / "training_summary.json")["features"]
    module = tf.saved_model.load(str(model_dir / SAVED_MODEL))

    def score(frame: pd.DataFrame, batch_size: int = 65536) -> np.ndarray:
        parts = []
        for start in range(0, len(frame), batch_size):
            chunk = feature_arrays(frame.iloc[start:start + batch_size], features)
            parts.append(module.score({k: tf.constant(v) for k, v in chunk.items()}).numpy())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    score.features = features
    return score
