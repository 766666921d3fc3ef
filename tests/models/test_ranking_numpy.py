"""The ranker's NumPy forward pass (models/ranking.NumpyRankingTower) against the SavedModel it is read from.

Serving scores candidates with `load_stacked_scorer`, which runs the tower in NumPy only when that gives the
SavedModel's own logits; a tower the NumPy pass does not reproduce keeps TensorFlow. Real saved towers here
(small, random weights after adapting the standardisation).
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from models.ranking import STACKED, RankingTower, ScoringModule, load_stacked_scorer

pytestmark = pytest.mark.integration

F = 9
NAMES = [f"f{i}" for i in range(F)]


def rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, (n, F)).astype(np.float32) * rng.lognormal(0.0, 2.0, (n, F)).astype(np.float32)
    x[:, 0] = -x[:, 0]  # a signed column (e.g. a price relative to the average order value, minus one)
    return x


def saved(tmp_path, tower: RankingTower) -> str:
    tower.adapt({STACKED: rows(500, 1)})
    tower({STACKED: rows(4, 2)})  # build
    path = str(tmp_path / "tower")
    tf.saved_model.save(ScoringModule(tower), path)
    return path


def test_numpy_pass_gives_the_saved_models_logits(tmp_path):
    path = saved(tmp_path, RankingTower(NAMES, cross_layers=2, hidden=(16, 8)))
    score = load_stacked_scorer(path, F, probe=rows(200, 9))
    assert score.engine == "numpy" and score.engine_reason is None
    module = tf.saved_model.load(path)
    x = rows(300, 3)
    expected = module.score_stacked(tf.constant(x)).numpy()
    np.testing.assert_allclose(score(x), expected, rtol=1e-5, atol=1e-5)
    assert np.std(expected) > 0  # not a constant model


def test_mlp_only_tower_runs_in_numpy_too(tmp_path):
    path = saved(tmp_path, RankingTower(NAMES, cross_layers=0, hidden=(8,)))
    score = load_stacked_scorer(path, F, probe=rows(200, 9))
    assert score.engine == "numpy"
    x = rows(50, 4)
    module = tf.saved_model.load(path)  # held: its functions reference its variables
    np.testing.assert_allclose(score(x), module.score_stacked(tf.constant(x)).numpy(), rtol=1e-5, atol=1e-5)


class TanhTower(RankingTower):
    """A tower whose MLP is not what NumpyRankingTower assumes (activations are not in a SavedModel)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.mlp = [tf.keras.layers.Dense(8, activation="tanh")]


class LowRankTower(RankingTower):
    """Cross layers with a low-rank kernel pair (two kernels: not read by the NumPy pass)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.crosses = [tfrs.layers.dcn.Cross(projection_dim=3)]


@pytest.mark.parametrize("cls, reason", [(TanhTower, "differ"), (LowRankTower, "cross layer")])
def test_a_tower_the_numpy_pass_does_not_reproduce_keeps_tensorflow(tmp_path, cls, reason):
    path = saved(tmp_path, cls(NAMES, cross_layers=1, hidden=(8,)))
    score = load_stacked_scorer(path, F, probe=rows(200, 9))
    assert score.engine == "tensorflow" and reason in score.engine_reason
    x = rows(40, 5)
    module = tf.saved_model.load(path)
    np.testing.assert_array_equal(score(x), module.score_stacked(tf.constant(x)).numpy())


def test_without_a_probe_or_with_an_uninformative_one_tensorflow_is_kept(tmp_path):
    """Inputs far outside the training range blow near-constant standardised features up; such a probe (or
    none) cannot vouch for the NumPy pass."""
    tower = RankingTower(NAMES, cross_layers=1, hidden=(8,))
    train = rows(500, 1)
    train[:, 2] = 0.0  # a feature constant in training (Online Retail has no views: zero variance)
    tower.adapt({STACKED: train})
    tower({STACKED: rows(4, 2)})
    path = str(tmp_path / "tower")
    tf.saved_model.save(ScoringModule(tower), path)
    assert load_stacked_scorer(path, F).engine == "tensorflow"
    wild = rows(50, 6)  # column 2 nonzero: standardised by 1 / epsilon
    score = load_stacked_scorer(path, F, probe=wild)
    assert score.engine == "tensorflow" and "not a probe" in score.engine_reason
