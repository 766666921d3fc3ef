"""Ranking: purchase probability of a (user, candidate item) pair, DCN-v2 over point-in-time features.

Where it sits: `pipelines/build_ranking_dataset.py` makes the rows (candidates
at cut-offs, features from Feast, purchase labels) -> `pipelines/train_ranking.py`
fits :class:`RankingModel` -> the tower is saved as a SavedModel with a
`score` function -> evaluation and serving score candidate rows with it.

The tower is a plain Keras model (STYLE.md 4); `RankingModel` only wires it
to `tfrs.tasks.Ranking`, which owns the loss (binary cross-entropy on the
logit) and the metrics.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from models.numpy_pass import checked

#: input key of the pre-stacked feature matrix [B, F]
STACKED = "features"


def signed_log1p(x: tf.Tensor) -> tf.Tensor:
    """sign(x) * log(1 + |x|): counts, revenues and day gaps spread over orders of magnitude."""
    return tf.sign(x) * tf.math.log1p(tf.abs(x))


class RankingTower(tf.keras.Model):
    """Float features -> purchase logit: signed log1p, standardisation, DCN-v2 cross layers, an MLP.

    Args:
        feature_names: names of the float inputs, in a fixed order.
        cross_layers: number of `tfrs.layers.dcn.Cross` layers (0: MLP only).
        hidden: MLP widths.

    Call:
        inputs: {name: float [B]} for every feature name -> float [B] logits.
    """

    def __init__(self, feature_names: Sequence[str], cross_layers: int = 2, hidden: Sequence[int] = (128, 64), **kw):
        super().__init__(**kw)
        self.feature_names = list(feature_names)
        self.norm = tf.keras.layers.Normalization(axis=-1)
        self.crosses = [tfrs.layers.dcn.Cross() for _ in range(cross_layers)]
        self.mlp = [tf.keras.layers.Dense(h, activation="relu") for h in hidden]
        self.out = tf.keras.layers.Dense(1)

    def stack(self, inputs) -> tf.Tensor:
        """The inputs as one float [B, F] matrix, signed-log compressed.

        `inputs` is {name: [B]} per feature, or {STACKED: [B, F]} with the
        columns in `feature_names` order (training feeds one matrix: slicing
        42 columns per batch costs more than the model itself).
        """
        if STACKED in inputs:
            x = tf.cast(inputs[STACKED], tf.float32)
        else:
            x = tf.stack([tf.cast(inputs[f], tf.float32) for f in self.feature_names], axis=1)
        return signed_log1p(x)

    def adapt(self, inputs: dict[str, np.ndarray]) -> None:
        """Learn the standardisation from training rows (before fitting)."""
        self.norm.adapt(self.stack(inputs))

    def call(self, inputs):
        x0 = self.norm(self.stack(inputs))
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        for dense in self.mlp:
            x = dense(x)
        return tf.squeeze(self.out(x), axis=1)


class RankingModel(tfrs.Model):
    """Weighted binary cross-entropy of the purchase label on the tower's logit.

    Inputs to `compute_loss`: the tower's features plus "label" (float [B],
    1 = bought in the label window) and "weight" (float [B]).
    """

    def __init__(self, tower: RankingTower):
        super().__init__()
        self.tower = tower
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=[tf.keras.metrics.AUC(name="auc", from_logits=True)],
        )

    def compute_loss(self, features, training=False):
        # Keras losses reduce the last axis: labels and logits as [B, 1] so each row keeps its own weight
        logits = self.tower(features, training=training)[:, None]
        labels = tf.cast(features["label"], tf.float32)[:, None]
        return self.task(labels=labels, predictions=logits, sample_weight=features.get("weight"))


class ScoringModule(tf.Module):
    """The ranking tower with fixed signatures, for `tf.saved_model.save`.

    `score({name: [B]}) -> logits [B]` takes the features by name (evaluation
    scores a frame); `score_stacked(features [B, F]) -> logits [B]` takes them
    as one matrix with the columns in `feature_names` order (serving: one
    tensor per request instead of one per feature).
    """

    def __init__(self, tower: RankingTower):
        super().__init__()
        self.tower = tower
        spec = {f: tf.TensorSpec([None], tf.float32, name=f) for f in tower.feature_names}
        self.score = tf.function(lambda inputs: self.tower(inputs), input_signature=[spec])
        width = len(tower.feature_names)
        self.score_stacked = tf.function(lambda x: self.tower({STACKED: x}),
                                         input_signature=[tf.TensorSpec([None, width], tf.float32, name=STACKED)])


class NumpyRankingTower:
    """The saved :class:`RankingTower`'s forward pass in NumPy float32, from the SavedModel's own variables.

    Serving scores one request's few hundred candidates at a time, where TensorFlow's per-call dispatch
    costs more than the arithmetic: a [500, 47] batch took p50 0.87 ms through `score_stacked` inside the
    serving pipeline, 0.36 ms in NumPy with one BLAS thread (`serving.server.SERVING_BLAS_THREADS`;
    100k-item synthetic catalog of benchmarks/bench_serving.py, this 2-core machine, 2026-11-27). The
    layers are read structurally (normalization mean / variance, each cross layer's kernel and bias,
    the MLP's kernels and biases); what the SavedModel does not store (activations, a cross layer's
    `diag_scale`) is assumed as :class:`RankingTower` builds it, so :func:`load_stacked_scorer` only uses
    this after checking it against the SavedModel's `score_stacked` on a probe batch.

    Raises:
        ValueError: the module's tower does not have the expected parts.
    """

    def __init__(self, module):
        tower = module.tower
        try:
            self.mean = tower.norm.mean.numpy().astype(np.float32).ravel()
            variance = tower.norm.variance.numpy().astype(np.float32).ravel()
            self.crosses = [self._cross(c) for c in tower.crosses]
            self.mlp = [self._dense(d) for d in tower.mlp]
            self.out = self._dense(tower.out)
        except AttributeError as e:
            raise ValueError(f"ranking tower without the expected layers: {e}") from None
        self.scale = np.maximum(np.sqrt(variance), np.float32(tf.keras.backend.epsilon())).astype(np.float32)

    @classmethod
    def _dense(cls, layer) -> tuple[np.ndarray, np.ndarray]:
        kernels = [v.numpy() for v in layer.variables if v.name.split("/")[-1].startswith("kernel")]
        biases = [v.numpy() for v in layer.variables if v.name.split("/")[-1].startswith("bias")]
        if len(kernels) != 1 or len(biases) != 1:
            raise ValueError(f"dense layer with {len(kernels)} kernels and {len(biases)} biases")
        return kernels[0].astype(np.float32), biases[0].astype(np.float32)

    @classmethod
    def _cross(cls, layer) -> tuple[np.ndarray, np.ndarray]:
        """A full-rank cross layer's kernel and bias (a low-rank one has two kernels: ValueError)."""
        try:
            return cls._dense(layer)
        except ValueError as e:
            raise ValueError(f"cross layer: {e}") from None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float32 [B, F] -> logits float32 [B]."""
        x = np.asarray(x, dtype=np.float32)
        x0 = (np.sign(x) * np.log1p(np.abs(x)) - self.mean) / self.scale
        h = x0
        for kernel, bias in self.crosses:
            h = x0 * (h @ kernel + bias) + h
        for kernel, bias in self.mlp:
            h = np.maximum(h @ kernel + bias, 0.0)
        kernel, bias = self.out
        return (h @ kernel + bias)[:, 0].astype(np.float32)


def load_stacked_scorer(path: str, n_features: int, probe: np.ndarray | None = None
                        ) -> Callable[[np.ndarray], np.ndarray]:
    """A saved :class:`ScoringModule` as a function of the stacked matrix: float32 [B, F] -> logits float32 [B].

    The function runs the tower in NumPy (:class:`NumpyRankingTower`) when that gives the SavedModel's
    own logits on `probe` (:func:`models.numpy_pass.checked`: within 1e-4 relative / 1e-4 absolute, logits
    of ordinary size), else through the SavedModel's `score_stacked`; `score.engine` says which
    ("numpy" / "tensorflow") and `score.engine_reason` why TensorFlow was kept. The probe must look like
    what will be scored (serving passes catalog items' feature rows): inputs far outside the training
    range blow the standardisation of near-constant features up and make any comparison pass.

    Args:
        path: the SavedModel directory.
        n_features: F, the number of feature columns (checked against the model).
        probe: float32 [B, F] realistic rows; None keeps TensorFlow (nothing to check the NumPy pass on).

    Raises:
        ValueError: the model has no `score_stacked` signature (saved before it existed) or another width.
    """
    module = tf.saved_model.load(str(path))
    fn = getattr(module, "score_stacked", None)
    if fn is None:
        raise ValueError(f"{path}: ranking model without a score_stacked signature (saved by an older cartwise); "
                         "retrain it with `cartwise train-ranking`")
    width = fn.concrete_functions[0].structured_input_signature[0][0].shape[-1] if fn.concrete_functions else None
    if width is not None and width != n_features:
        raise ValueError(f"{path}: ranking model takes {width} features, its summary names {n_features}")

    def tf_score(x: np.ndarray) -> np.ndarray:
        return fn(tf.constant(np.asarray(x, dtype=np.float32).reshape(-1, n_features))).numpy()

    def numpy_pass() -> Callable[[np.ndarray], np.ndarray]:
        tower = NumpyRankingTower(module)
        return lambda x: tower(np.asarray(x, dtype=np.float32).reshape(-1, n_features))

    if probe is not None:
        probe = np.asarray(probe, dtype=np.float32).reshape(-1, n_features)
    score = checked(tf_score, numpy_pass, probe if probe is not None and len(probe) else None)
    score.module = module  # the function's variables live as long as the module
    return score
