"""Prediction and exact evaluation of a model on a split (in-memory, one traced function)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from mdr_tf import metrics as M
from mdr_tf.data import _cached_arrays, sequence_keys
from mdr_tf.schema import Schema


def predict_arrays(model: keras.Model, feats: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Probabilities for in-memory features, batch by batch with one traced function.

    Works the same with or without a ``tf.distribute`` strategy (every worker predicts the
    whole array with its replica of the weights), unlike ``Model.predict``, which would
    auto-shard the input across workers.
    """
    fn = getattr(model, "_mdr_predict_fn", None)
    if fn is None:
        schema = model.schema
        sig = {f.name: tf.TensorSpec([None], tf.int64 if f.kind == "categorical" else tf.float32)
               for f in schema.features}
        sig[schema.domain_key] = tf.TensorSpec([None], tf.int64)
        sig.update({k: tf.TensorSpec([None, n], tf.int64) for k, n in sequence_keys(schema).items()})
        fn = tf.function(lambda x: model(x, training=False), input_signature=[sig], reduce_retracing=True)
        model._mdr_predict_fn = fn
    n = len(next(iter(feats.values())))
    out = [fn({k: tf.constant(v[i:i + batch_size]) for k, v in feats.items()}).numpy().reshape(-1)
           for i in range(0, n, batch_size)]
    return np.concatenate(out) if out else np.zeros([0], np.float32)


def predict_split(model: keras.Model, schema: Schema, split: str, batch_size: int = 4096,
                  label_key: str | None = None,
                  domains: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions of a whole split (of ``domains`` only, if given): (labels, probabilities, domains)."""
    feats, labels = _cached_arrays(schema, split, label_key or schema.label_keys[0],
                                   list(range(schema.num_domains)) if domains is None else list(domains))
    return labels, predict_arrays(model, feats, batch_size), feats[schema.domain_key]


def evaluate_split(model: keras.Model, schema: Schema, split: str, batch_size: int = 4096,
                   domains: list[int] | None = None) -> dict[str, float]:
    y, p, d = predict_split(model, schema, split, batch_size, domains=domains)
    return M.evaluate(y, p, d, schema.num_domains)
