"""SavedModel export for serving.

Two signatures, both returning ``{"probability": float32 [B]}``:

- ``serving_default`` / ``serve``: raw feature tensors — one 1-D tensor per schema
  feature (int64 ids for categorical, float32 for dense) plus ``domain_id`` (int64).
- ``serve_examples``: a 1-D string tensor of serialized ``tf.Example`` protos, parsed
  with the same feature spec as the training TFRecords.

Datasets with behaviour sequences (``schema.sequences``) add, per sequence, ``<name>``
and ``<name>_mask`` as int64 ``[B, length]`` to the raw signature and as fixed-length
int64 lists to the tf.Example (``serialize_examples`` writes them).

Serving behaviour (documented, tested): a categorical id outside ``[0, vocab)`` (checked
in int64, so ids >= 2**31 too) is served as the out-of-vocabulary id 0; a ``domain_id``
outside ``[0, D)`` and a NaN/inf dense value are rejected with ``InvalidArgumentError``
(a model cannot guess which domain's parameters to use). The Keras model does the same
(``mdr_tf.layers.embedding.check_inputs``), so both paths agree.

Written into TF Serving's versioned layout ``<base_dir>/<version>/`` atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf

from mdr_tf.data import feature_spec, sequence_keys
from mdr_tf.schema import Schema


def mkdtemp_honouring_umask(prefix: str, dir: str) -> str:
    """``tempfile.mkdtemp`` whose directory gets the mode the umask gives (mkdtemp's is 0700).

    The temp directory is renamed into place as the final output, which other users
    (e.g. TF Serving running as another account) must be able to read.
    """
    tmp = tempfile.mkdtemp(prefix=prefix, dir=dir)
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    return tmp


def _input_signature(schema: Schema) -> dict[str, tf.TensorSpec]:
    sig = {f.name: tf.TensorSpec([None], tf.int64 if f.kind == "categorical" else tf.float32, name=f.name)
           for f in schema.features}
    sig[schema.domain_key] = tf.TensorSpec([None], tf.int64, name=schema.domain_key)
    # Behaviour sequences: ids and masks as [B, length] int64 (the flattened schema shape).
    sig.update({k: tf.TensorSpec([None, n], tf.int64, name=k) for k, n in sequence_keys(schema).items()})
    return sig


def export_saved_model(model: keras.Model, base_dir: str, version: int | None = None) -> str:
    """Exports ``model`` to ``<base_dir>/<version>/`` and returns that path.

    Args:
      model: a built ``MultiDomainModel``.
      base_dir: model base directory (TF Serving's ``--model_base_path``).
      version: integer version; default: current Unix time.
    """
    schema: Schema = model.schema
    version = int(time.time()) if version is None else int(version)
    final = os.path.join(base_dir, str(version))
    os.makedirs(base_dir, exist_ok=True)
    num_domains = schema.num_domains
    spec = feature_spec(schema, with_labels=False)

    def _checked(features):
        d = features[schema.domain_key]
        with tf.control_dependencies([
            tf.debugging.assert_non_negative(d, message="domain_id must be >= 0"),
            tf.debugging.assert_less(d, tf.constant(num_domains, tf.int64),
                                     message=f"domain_id must be < {num_domains}"),
        ]):
            probs = model(dict(features), training=False)
        return {"probability": tf.reshape(probs, [-1])}

    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[_input_signature(schema)])
    def serve(features):
        return _checked(features)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        return _checked(tf.io.parse_example(examples, spec))

    archive.add_endpoint("serve", serve)
    archive.add_endpoint("serve_examples", serve_examples)
    archive.add_endpoint("serving_default", serve)
    tmp = mkdtemp_honouring_umask(f".{version}.tmp-", base_dir)
    try:
        archive.write_out(tmp, verbose=False)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def serialize_examples(schema: Schema, features: dict) -> list[bytes]:
    """Serializes a dict of 1-D arrays into ``tf.Example`` bytes (for ``serve_examples``)."""
    n = len(features[schema.domain_key])
    out = []
    for i in range(n):
        f = {}
        for feat in schema.features:
            v = features[feat.name][i]
            f[feat.name] = (tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
                            if feat.kind == "categorical" else
                            tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)])))
        f[schema.domain_key] = tf.train.Feature(int64_list=tf.train.Int64List(
            value=[int(features[schema.domain_key][i])]))
        for k in sequence_keys(schema):
            f[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in features[k][i]]))
        out.append(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())
    return out
