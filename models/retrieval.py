"""Two-tower retrieval model trained on weighted (purchase-labelled) events.

Where it sits: towers (`models/towers.py`) -> **RetrievalModel** (TFRS) ->
`pipelines/train_retrieval.py` fits it; the query tower and the candidate
embeddings are exported. The model only wires towers to
`tfrs.tasks.Retrieval`, which owns the in-batch softmax loss (STYLE.md 4).
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from models.towers import CandidateTower, QueryTower


class RetrievalModel(tfrs.Model):
    """In-batch softmax over (query, purchased item) pairs, weighted per example.

    Args:
        query_tower: maps a batch of user features to [B, D].
        candidate_tower: maps a batch of item features to [B, D].

    Inputs to `compute_loss`: the union of both towers' inputs plus
    "weight": float [B] (sample weight from the objective).
    """

    def __init__(self, query_tower: QueryTower, candidate_tower: CandidateTower):
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.task = tfrs.tasks.Retrieval()

    def compute_loss(self, features, training=False):
        query = self.query_tower(features)
        candidate = self.candidate_tower(features)
        return self.task(query, candidate, sample_weight=features.get("weight"), compute_metrics=False)


class EmbeddingModule(tf.Module):
    """A tower wrapped with a fixed input signature, for `tf.saved_model.save`.

    Args:
        tower: the Keras tower.
        string_inputs: names of string inputs.
        float_inputs: names of float inputs.
    """

    def __init__(self, tower: tf.keras.Model, string_inputs, float_inputs):
        super().__init__()
        self.tower = tower
        spec = {k: tf.TensorSpec([None], tf.string, name=k) for k in string_inputs}
        spec.update({k: tf.TensorSpec([None], tf.float32, name=k) for k in float_inputs})
        self.embed = tf.function(lambda inputs: self.tower(inputs), input_signature=[spec])
