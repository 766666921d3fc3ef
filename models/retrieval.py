"""Two-tower retrieval model trained on weighted (purchase-labelled) events.

Where it sits: towers (`models/towers.py`) -> **RetrievalModel** (TFRS) ->
`pipelines/train_retrieval.py` fits it; the query tower and the candidate
embeddings are exported. The model only wires towers to
`tfrs.tasks.Retrieval`, which owns the in-batch softmax loss (STYLE.md 4).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs

from models.towers import CandidateTower, QueryTower


class RetrievalModel(tfrs.Model):
    """In-batch softmax over (query, positive item) pairs, weighted per example.

    In-batch negatives are the other positives of the batch, so an item shows
    up as a negative in proportion to its share of the training examples; with
    `sampling_probability` the task subtracts log(share) from each candidate's
    logit (the logQ correction of Yi et al., "Sampling-bias-corrected neural
    modeling for large corpus item recommendations", RecSys 2019), so popular
    items are not pushed down just for being sampled often.

    Args:
        query_tower: maps a batch of user features to [B, D].
        candidate_tower: maps a batch of item features to [B, D].
        weight: name of the sample-weight input (float [B]); absent -> 1.
        sampling_probability: name of the input holding each positive item's
            share of the training examples (float [B]); None: no correction.

    Inputs to `compute_loss`: the union of both towers' inputs plus the
    weight and sampling-probability inputs named above.
    """

    def __init__(self, query_tower: QueryTower, candidate_tower: CandidateTower, *, weight: str = "weight",
                 sampling_probability: str | None = None):
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.weight = weight
        self.sampling_probability = sampling_probability
        self.task = tfrs.tasks.Retrieval()

    def compute_loss(self, features, training=False):
        query = self.query_tower(features, training=training)
        candidate = self.candidate_tower(features, training=training)
        prob = features[self.sampling_probability] if self.sampling_probability else None
        return self.task(query, candidate, sample_weight=features.get(self.weight),
                         candidate_sampling_probability=prob, compute_metrics=False, compute_batch_metrics=False)


class EmbeddingModule(tf.Module):
    """A tower wrapped with a fixed input signature, for `tf.saved_model.save`.

    The saved function `embed` takes a dict of tensors: each string input
    string [B], each float input float32 [B], each vector input float32 [B, T]
    (T is free; the tower pads or truncates to its width); it returns float32 [B, D].

    Args:
        tower: the Keras tower.
        string_inputs: names of string inputs.
        float_inputs: names of float inputs.
        vector_inputs: names of dense vector inputs.
    """

    def __init__(self, tower: tf.keras.Model, string_inputs: Sequence[str], float_inputs: Sequence[str],
                 vector_inputs: Sequence[str] | Mapping[str, int] = ()):
        super().__init__()
        self.tower = tower
        spec = {k: tf.TensorSpec([None], tf.string, name=k) for k in string_inputs}
        spec.update({k: tf.TensorSpec([None], tf.float32, name=k) for k in float_inputs})
        spec.update({k: tf.TensorSpec([None, None], tf.float32, name=k) for k in vector_inputs})
        self.embed = tf.function(lambda inputs: self.tower(inputs, training=False), input_signature=[spec])
