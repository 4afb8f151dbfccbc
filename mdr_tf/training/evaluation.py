"""Prediction and exact evaluation of a model on a split, in memory or from columnar shards.

A split that fits in memory (``mdr_tf.data.IN_MEMORY_MAX_VALUES``) is read once into
arrays (cached) and predicted batch by batch. A larger split with columnar shards
(``mdr_tf.columnar``) is predicted chunk by chunk straight from the memory-mapped
column files: host memory holds one chunk of features plus the labels, domain ids and
predictions of the whole split (12 bytes per row), and AUC / LogLoss stay exact over the
whole split (docs/operations.md "Data larger than memory").
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from mdr_tf import data as _data
from mdr_tf import metrics as M
from mdr_tf.data import _cached_arrays, sequence_keys
from mdr_tf.schema import Schema

EVAL_CHUNK_ROWS = 1 << 18  # rows copied out of the memory map at a time (~70 MB for Ali-CCP's 34 columns)


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


def eval_source(schema: Schema, split: str, domains: list[int] | None = None) -> str:
    """Where ``predict_split(source="auto")`` reads ``split`` from: "memory" or "columnar".

    "columnar" when the split's columnar shards exist and mirror its TFRecords, and
    either the split has more than ``IN_MEMORY_MAX_VALUES`` values or its TFRecords were
    not written (a generator run with columnar-only valid/test splits).
    """
    if not schema.raw or schema.directory is None:
        return "memory"
    from mdr_tf import columnar

    doms = list(range(schema.num_domains)) if domains is None else list(domains)
    rows = sum(schema.counts(split)[d] for d in doms)
    too_big = rows * schema.values_per_example > _data.IN_MEMORY_MAX_VALUES
    no_records = not all(os.path.exists(f) for f in schema.files(split, doms))
    if (too_big or no_records) and columnar.available(schema, split, doms, check_source=True):
        return "columnar"
    return "memory"


def predict_columnar(model: keras.Model, schema: Schema, split: str, batch_size: int = 65_536,
                     label_key: str | None = None, domains: list[int] | None = None,
                     chunk_rows: int = EVAL_CHUNK_ROWS, stats: dict | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probabilities, domain ids) of a split predicted from its columnar shards.

    Shards are read domain by domain in file order, ``chunk_rows`` rows at a time (ids
    widened to int64), and each chunk is predicted in batches of ``batch_size``. Only the
    labels, domain ids and predictions of the whole split are kept (float32, int32,
    float32). ``stats``, if given, receives ``rows``, ``chunks`` and ``peak_chunk_bytes``
    (the largest chunk of features copied out of the memory map).

    Raises:
      FileNotFoundError / ValueError: a shard is missing, truncated (the column file is
        named) or holds other row counts than schema.json.
    """
    from mdr_tf import columnar

    label_key = label_key or schema.label_keys[0]
    keys = list(schema.input_names)
    shards = columnar.open_split(schema, split, domains, keys + [label_key])
    n = sum(r for _, r, _ in shards)
    labels = np.empty(n, np.float32)
    probs = np.empty(n, np.float32)
    doms = np.empty(n, np.int32)
    chunk_rows = max(int(chunk_rows), 1)
    st = {"rows": n, "chunks": 0, "peak_chunk_bytes": 0}
    pos = 0
    for _, rows, cols in shards:
        for a in range(0, rows, chunk_rows):
            b = min(a + chunk_rows, rows)
            feats = {k: columnar.read_rows(cols[k], a, b) for k in keys}
            st["chunks"] += 1
            st["peak_chunk_bytes"] = max(st["peak_chunk_bytes"], sum(v.nbytes for v in feats.values()))
            probs[pos:pos + b - a] = predict_arrays(model, feats, batch_size)
            labels[pos:pos + b - a] = columnar.read_rows(cols[label_key], a, b).reshape(-1)
            doms[pos:pos + b - a] = feats[schema.domain_key]
            pos += b - a
            del feats
    if stats is not None:
        stats.update(st)
    return labels, probs, doms


def predict_split(model: keras.Model, schema: Schema, split: str, batch_size: int = 4096,
                  label_key: str | None = None, domains: list[int] | None = None,
                  source: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions of a whole split (of ``domains`` only, if given): (labels, probabilities, domains).

    ``source``: "memory" (read the split into arrays, cached), "columnar"
    (``predict_columnar``: bounded memory) or "auto" (``eval_source``).
    """
    if source not in ("auto", "memory", "columnar"):
        raise ValueError(f"source must be 'auto', 'memory' or 'columnar', got {source!r}")
    if source == "auto":
        source = eval_source(schema, split, domains)
    if source == "columnar":
        return predict_columnar(model, schema, split, batch_size, label_key, domains)
    feats, labels = _cached_arrays(schema, split, label_key or schema.label_keys[0],
                                   list(range(schema.num_domains)) if domains is None else list(domains))
    return labels, predict_arrays(model, feats, batch_size), feats[schema.domain_key]


def evaluate_split(model: keras.Model, schema: Schema, split: str, batch_size: int = 4096,
                   domains: list[int] | None = None, source: str = "auto") -> dict[str, float]:
    """Exact metrics (``mdr_tf.metrics.evaluate``) of a whole split; ``source`` as ``predict_split``."""
    y, p, d = predict_split(model, schema, split, batch_size, domains=domains, source=source)
    return M.evaluate(y, p, d, schema.num_domains)
