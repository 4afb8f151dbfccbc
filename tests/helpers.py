"""Assertions shared by model tests: save/load and export round trips, random inputs."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from mdr_tf.schema import Schema


def random_inputs(schema: Schema, batch: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid random inputs covering every domain."""
    rng = np.random.default_rng(seed)
    x = {}
    for f in schema.features:
        x[f.name] = (rng.integers(0, f.vocab_size, batch).astype(np.int64) if f.kind == "categorical"
                     else rng.random(batch).astype(np.float32))
    x[schema.domain_key] = (np.arange(batch) % schema.num_domains).astype(np.int64)
    return x


def assert_config_json(layer_or_model) -> None:
    """``get_config`` is JSON-serialisable and ``from_config`` rebuilds an equal config."""
    cfg = layer_or_model.get_config()
    json.dumps(cfg)
    clone = type(layer_or_model).from_config(cfg)
    assert json.dumps(clone.get_config(), sort_keys=True, default=str) == json.dumps(cfg, sort_keys=True, default=str)


def assert_roundtrips(model: keras.Model, tmp_dir: str, x: dict | None = None, atol: float = 1e-6) -> None:
    """``.keras`` save/load and SavedModel export (both signatures) reproduce predictions."""
    from mdr_tf.export import export_saved_model, serialize_examples

    schema = model.schema
    x = x if x is not None else random_inputs(schema)
    ref = model.predict(x, verbose=0).reshape(-1)
    path = os.path.join(tmp_dir, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0).reshape(-1), ref, atol=atol, rtol=0)
    export_dir = export_saved_model(model, os.path.join(tmp_dir, "export"), version=1)
    sm = tf.saved_model.load(export_dir)
    out = sm.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})["probability"].numpy()
    np.testing.assert_allclose(out, ref, atol=atol, rtol=0)
    out2 = sm.serve_examples(tf.constant(serialize_examples(schema, x)))["probability"].numpy()
    np.testing.assert_allclose(out2, ref, atol=atol, rtol=0)


def read_back_rows(out: str) -> dict:
    """{(domain, split): sorted row tuples} of a prepared dataset, decoded through ``vocab/*.txt``.

    Each row is (categorical values as their raw strings..., dense values..., label), read
    with mdr_tf's own reader, so a preprocessor test compares what training will see with
    what the raw fixture says.
    """
    from mdr_tf.data import load_arrays

    schema = Schema.load(out)
    vocab = {}
    for f in schema.categorical:
        with open(os.path.join(out, "vocab", f"{f.name}.txt")) as fh:
            vocab[f.name] = [x.rstrip("\n") for x in fh]
    got: dict = {}
    for split in ("train", "valid", "test"):
        x, y = load_arrays(schema, split)
        for i in range(len(y)):
            row = tuple(vocab[f.name][x[f.name][i]] for f in schema.categorical)
            row += tuple(float(x[f.name][i]) for f in schema.dense) + (int(y[i]),)
            got.setdefault((int(x["domain_id"][i]), split), []).append(row)
    return {k: sorted(v) for k, v in got.items()}
