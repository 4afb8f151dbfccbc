"""Fused multi-step training: K train steps in one XLA program.

Keras' ``steps_per_execution`` runs K steps per call, but each step is still a separate
compiled program inside a ``tf.while_loop`` that pulls one batch at a time from the
iterator (an ``Optional``, a ``tf.cond`` and an executable launch per step). For the
small models of this field that per-step overhead is a large share of a step: on the
2-core CPU of docs/benchmarks.md the DNN (MLP 128-64-32, batch 512) spends ~25% of its
step there.

Here the input pipeline stacks K consecutive batches into one element ``[K, B, ...]``
(``stack_batches``) and the train function (``install_fused_train_function``) runs the
model's own ``train_step`` K times over it inside one XLA-compiled loop. The sequence of
batches, the optimizer updates, the loss tracker and the metrics are those of Keras'
``fit`` with ``steps_per_execution=1`` on the unstacked batches (tested to 1e-6); only the
callbacks' batch hooks fire once per K steps.

Used by ``mdr_tf.training.fit`` when ``TrainConfig.fused_steps > 1`` (on one device, XLA
on, full batches); user code can do the same with a model compiled with
``steps_per_execution=1``::

    model.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=True)
    install_fused_train_function(model, example_batch)
    model.fit(stack_batches(ds.batch(512, drop_remainder=True), 16))
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mdr_tf.tfdata import without_autotune


def stack_batches(batches: tf.data.Dataset, steps: int) -> tf.data.Dataset:
    """Groups ``steps`` consecutive equal-size batches into one ``[steps, B, ...]`` element.

    The last element holds the remaining ``n_batches % steps`` batches (a second, smaller
    program is compiled for it once). Every batch must have the same static size (batch
    with ``drop_remainder=True``).
    """
    spec = batches.element_spec
    for s in tf.nest.flatten(spec):
        if s.shape.rank is None or s.shape.rank == 0 or s.shape[0] is None:
            raise ValueError(f"stack_batches needs batches of a static size (drop_remainder=True); got {spec}")
    return without_autotune(batches.batch(steps).prefetch(tf.data.AUTOTUNE))


def install_fused_train_function(model: keras.Model, example_batch: Any, jit_compile: bool = True,
                                 columns: tuple[dict[str, Any], Any] | None = None) -> None:
    """Replaces ``model.train_function`` by one that runs a stacked block of batches per call.

    Call after ``model.compile(..., steps_per_execution=1)`` (compile resets the train
    function) and before ``fit`` on a ``stack_batches`` dataset. The optimizer, the
    compiled loss and the metrics are built first from ``example_batch`` (one ordinary
    ``(x, y)`` batch), because no variable may be created inside the compiled loop.

    Args:
      model: a compiled Keras model (TensorFlow backend, no distribution strategy).
      example_batch: one unstacked ``(x, y)`` batch.
      jit_compile: XLA-compile the K-step loop.
      columns: ``(features, labels)`` arrays of the whole split. Then the dataset yields
        row-index blocks ``[K, B]`` (``mdr_tf.data.in_memory_index_batches`` batched by K)
        and each step gathers its rows inside the compiled loop, so the input pipeline
        does no per-batch work (on a 2-core CPU it otherwise competes with the step).
        The columns are held in non-trainable variables outside the model (not saved).
    """
    if tf.distribute.has_strategy():
        raise ValueError("fused steps run on one device; use steps_per_execution under tf.distribute")
    if getattr(model, "steps_per_execution", 1) != 1:
        raise ValueError("compile the model with steps_per_execution=1 before installing fused steps "
                         "(each call already runs a whole stacked block)")
    model._symbolic_build(data_batch=example_batch)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    if columns is not None:
        feats, labels = columns
        with tf.init_scope():
            col_vars = {k: tf.Variable(v, trainable=False, name=f"fused_{k}") for k, v in feats.items()}
            lab_var = tf.Variable(labels, trainable=False, name="fused_labels")
        model._fused_columns = (col_vars, lab_var)  # refilled by install_streamed

    def k_steps(data):
        if columns is None:
            def batch(i):
                return tf.nest.map_structure(lambda t: t[i], data)
        else:
            def batch(i):
                idx = data[i]
                return {k: tf.gather(v, idx) for k, v in col_vars.items()}, tf.gather(lab_var, idx)

        logs = model.train_step(batch(0))
        for i in tf.range(1, tf.shape(tf.nest.flatten(data)[0])[0]):
            logs = model.train_step(batch(i))
        return logs

    compiled = tf.function(k_steps, jit_compile=bool(jit_compile), reduce_retracing=True)

    def train_function(iterator):
        # Keras' epoch loop passes the iterator; StopIteration ends the epoch as usual.
        return compiled(next(iterator))

    model.train_function = train_function


def install_on_columns(model: keras.Model, features: dict[str, Any], labels: Any, batch_size: int,
                       jit_compile: bool = True) -> None:
    """``install_fused_train_function`` for index-block datasets over in-memory columns.

    The example batch is the first ``batch_size`` rows of the columns.
    """
    example = ({k: v[:batch_size] for k, v in features.items()}, labels[:batch_size])
    install_fused_train_function(model, example, jit_compile=jit_compile, columns=(features, labels))


def install_streamed(model: keras.Model, stream, jit_compile: bool = True) -> None:
    """The fused K-step trainer over a window of rows streamed from disk (``mdr_tf.outofcore``).

    The compiled loop gathers its batches from non-trainable column variables of the
    stream's buffer capacity, as ``install_on_columns`` does for a whole split; the
    dataset (``stream.dataset(seed)``) yields ``(tag, index_block)`` and, when the tag
    changes, the train function copies buffer ``tag`` into the variables before the
    block runs (rows past the buffer's end are stale and never indexed).

    Args:
      model: a compiled Keras model (``steps_per_execution=1``, no distribution strategy).
      stream: an ``mdr_tf.outofcore.FusedStream``.
      jit_compile: XLA-compile the K-step loop.
    """
    install_fused_train_function(model, stream.first_batch(), jit_compile=jit_compile,
                                 columns=stream.example_columns())
    col_vars, lab_var = model._fused_columns
    fused_blocks = model.train_function
    state = {"tag": None}

    def train_function(iterator):
        tag, block = next(iterator)
        t = int(tag)
        if t != state["tag"]:
            cols = stream.take(t)
            n = len(cols[stream.label_key])
            for k, v in col_vars.items():
                v[:n].assign(cols[k])
            lab_var[:n].assign(np.asarray(cols[stream.label_key], np.float32).reshape(-1, 1))
            state["tag"] = t
        return fused_blocks(iter([block]))

    model.train_function = train_function
