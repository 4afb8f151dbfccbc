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

Speed (issue 18): the model's forward pass of both signatures is one XLA program
(``jit_compile``, default "auto": when the model supports XLA and compiles), with the
input checks above run as graph ``Assert`` ops *outside* it (XLA drops ``Assert``). XLA
compiles once per input shape, so the batch is zero-padded to a bounded set of sizes
(``serving_batch_size``: powers of two up to 8, then four sizes per octave, at most 25 %
padding) and the padding rows are dropped from the result. A third raw signature,
``serve_portable``, is the same computation without XLA (no padding): for servers
built without XLA JIT (TF Serving needs ``--xla_cpu_compilation_enabled=true`` for the
XLA signatures), and the path whose predictions are bit-identical across
``mdr_tf.onboarding.add_domain`` (docs/onboarding.md). Thread counts are the serving
process's (``tf.config.threading``, TF Serving's ``--tensorflow_intra_op_parallelism``);
docs/benchmarks.md has the measured settings.

Written into TF Serving's versioned layout ``<base_dir>/<version>/`` atomically.
"""

from __future__ import annotations

import bisect
import functools
import os
import shutil
import time
import warnings

import keras
import tensorflow as tf

from mdr_base.atomic import mkdtemp_honouring_umask
from mdr_tf.data import feature_spec, sequence_keys
from mdr_tf.layers.embedding import check_inputs
from mdr_tf.schema import Schema


def _input_signature(schema: Schema) -> dict[str, tf.TensorSpec]:
    sig = {f.name: tf.TensorSpec([None], tf.int64 if f.kind == "categorical" else tf.float32, name=f.name)
           for f in schema.features}
    sig[schema.domain_key] = tf.TensorSpec([None], tf.int64, name=schema.domain_key)
    # Behaviour sequences: ids and masks as [B, length] int64 (the flattened schema shape).
    sig.update({k: tf.TensorSpec([None, n], tf.int64, name=k) for k, n in sequence_keys(schema).items()})
    return sig


# Padded batch sizes of the XLA signatures: 1, 2, 4, 8, then 4 per octave (10, 12, 14,
# 16, 20, 24, 28, 32, 40, ...) up to 2**22; larger batches run unpadded (one compile each).
_MAX_PADDED = 2 ** 22


@functools.lru_cache(maxsize=1)
def _batch_grid() -> tuple[int, ...]:
    grid = [1, 2, 4, 8]
    while grid[-1] < _MAX_PADDED:
        step = grid[-1] // 4
        grid += [grid[-1] + step * i for i in range(1, 5)]
    return tuple(grid)


def serving_batch_size(batch: int) -> int:
    """The padded batch size the XLA signatures compute a batch of ``batch`` rows at.

    The smallest grid size >= ``batch`` (powers of two up to 8, then four sizes per
    octave: at most 25 % padding); ``batch`` itself beyond 2**22.
    """
    grid = _batch_grid()
    i = bisect.bisect_left(grid, batch)
    return grid[i] if i < len(grid) else int(batch)


def _pad_rows(features: dict[str, tf.Tensor], schema: Schema) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Zero-pads every input to ``serving_batch_size(B)`` rows (graph ops); returns (padded, B).

    Padding rows are valid inputs (ids 0, domain 0, dense 0.0) whose outputs are dropped.
    """
    b = tf.shape(features[schema.domain_key], out_type=tf.int64)[0]
    grid = tf.constant(_batch_grid(), tf.int64)
    size = tf.reduce_min(tf.where(grid >= b, grid, tf.maximum(b, grid[-1])))
    rows = tf.stack([tf.constant(0, tf.int64), size - b])[None]  # [[0, pad]]
    paddings = {}  # one paddings tensor per input rank (few graph ops per call)
    out = {}
    for k, v in features.items():
        rank = v.shape.rank
        if rank not in paddings:
            paddings[rank] = rows if rank == 1 else tf.concat([rows, tf.zeros([rank - 1, 2], tf.int64)], axis=0)
        out[k] = tf.pad(v, paddings[rank])
    return out, b


def _xla_compiles(forward, model: keras.Model) -> bool:
    """Whether the XLA forward compiles and runs on the model's dummy inputs."""
    try:
        forward({k: tf.constant(v) for k, v in model.dummy_inputs(max(2, model.schema.num_domains)).items()})
        return True
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError) as e:
        warnings.warn(f"export_saved_model: {type(model).__name__} does not compile with XLA "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); exporting without XLA", stacklevel=3)
        return False


def export_saved_model(model: keras.Model, base_dir: str, version: int | None = None,
                       jit_compile: bool | str = "auto", fold: bool | str = "auto",
                       fold_max_bytes: int = 64 << 20) -> str:
    """Exports ``model`` to ``<base_dir>/<version>/`` and returns that path.

    Args:
      model: a built ``MultiDomainModel``.
      base_dir: model base directory (TF Serving's ``--model_base_path``).
      version: integer version; default: current Unix time.
      jit_compile: compile the forward pass of ``serving_default`` / ``serve`` /
        ``serve_examples`` with XLA (padded batch sizes, see the module docstring).
        "auto" (default): when ``model.supports_jit`` (default True) and a trial call
        compiles; True: always; False: never (all signatures as ``serve_portable``).
      fold: fold the first dense layer into the embedding table in those signatures
        (``mdr_tf.folding``: DNN, STAR and MMoE; per-domain weights formed at export;
        equal outputs up to float rounding, checked at export). "auto" (default): when
        the model folds and the folded tables take at most ``fold_max_bytes``; True: the
        same, but a model that does not fold raises ``ValueError``; False: never. ``serve_portable`` never folds.
      fold_max_bytes: size limit of the folded tables (default 64 MiB).
    """
    if jit_compile not in (True, False, "auto"):
        raise ValueError(f"export_saved_model: jit_compile must be True, False or 'auto', got {jit_compile!r}")
    if fold not in (True, False, "auto"):
        raise ValueError(f"export_saved_model: fold must be True, False or 'auto', got {fold!r}")
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

    folded = None
    if fold is not False:
        from mdr_tf.folding import fold_first_layer

        folded = fold_first_layer(model, max_bytes=fold_max_bytes)
        if folded is None and fold is True:
            raise ValueError(f"export_saved_model(fold=True): {type(model).__name__} does not fold (see "
                             f"mdr_tf.folding) or its folded tables exceed {fold_max_bytes} bytes")

    def forward(features):
        if folded is not None:
            return folded(dict(features))
        return tf.reshape(model(dict(features), training=False), [-1])

    xla_forward = tf.function(forward, jit_compile=True, reduce_retracing=True)
    use_xla = jit_compile is True or (jit_compile == "auto" and getattr(model, "supports_jit", True)
                                      and _xla_compiles(xla_forward, model))

    def _checked_fast(features):
        # The input checks stay outside the XLA program (XLA drops Assert ops); the
        # domain id is checked in int64, as by ``_checked``.
        features = dict(features)
        check_inputs(features, schema)
        if not use_xla:
            return {"probability": forward(features)}
        padded, b = _pad_rows(features, schema)
        return {"probability": xla_forward(padded)[:b]}

    checked = _checked_fast if (use_xla or folded is not None) else _checked
    archive = keras.export.ExportArchive()
    archive.track(model)
    if folded is not None:
        archive.track(folded)

    @tf.function(input_signature=[_input_signature(schema)])
    def serve(features):
        return checked(features)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        return checked(tf.io.parse_example(examples, spec))

    @tf.function(input_signature=[_input_signature(schema)])
    def serve_portable(features):
        return _checked(features)

    archive.add_endpoint("serve", serve)
    archive.add_endpoint("serve_examples", serve_examples)
    archive.add_endpoint("serve_portable", serve_portable)
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
