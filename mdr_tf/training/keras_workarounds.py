"""Workarounds for Keras 3.15 defects under ``tf.distribute`` (all of this file can go when fixed).

Everything here touches private Keras APIs (``Model._maybe_symbolic_build``,
``Model._symbolic_build``, ``_compile_loss``, ``_compile_metrics``,
``_flatten_layers``); ``mdr_tf.training.fit`` and ``compile_model`` call it only under a
strategy with two or more replicas or workers. Each defect, how to tell it is fixed,
and what to delete then:

1. **Multi-step loop under a strategy** (``steps_per_execution``). With two or more
   replicas, in one process or several, Keras' multi-step train function (a ``tf.cond``
   inside a ``tf.while_loop`` around the replicated step) fails with "You must feed a
   value for placeholder tensor 'while/cond/Placeholder_...'". Upstream: looks like
   keras-team/keras#19246 ("INVALID_ARGUMENT: You must feed a value for placeholder
   tensor", open). Workaround: ``steps_per_execution`` returns 1 under a strategy.
   Fixed when ``tests/test_distributed.py`` passes with it returning the requested value.
2. **Shape probe of a distributed batch** (``prepare_distributed_fit``, part 1). A
   model created under a strategy scope runs ``_maybe_symbolic_build(iterator=...)`` at
   the start of every ``fit``: it takes the first batch of the *distributed* dataset and,
   to learn the input shapes, calls ``strategy.reduce("MEAN", batch)`` on the whole
   structure of ``PerReplica`` features. With one worker that reduce returns its input;
   with two or more MultiWorkerMirroredStrategy workers it is a cross-worker all-reduce
   of a dict of features, which fails ("Attempt to convert a value ({...: PerReplica...})
   ... to a Tensor"). The closest upstream report is keras-team/keras#20329
   ("Tensorflow MultiWorkerMirroredStrategy and input dictionaries", open); we did not
   find an issue with this exact trace. Workaround: build every piece of state from one
   ordinary local batch and make the model's ``_maybe_symbolic_build`` skip the probe.
3. **Scalar logs reduced over ``axis=0``** (``prepare_distributed_fit``, part 2). Under
   multi-worker collectives Keras reduces the step's logs with
   ``strategy.reduce("MEAN", v, axis=0)``, which rejects a scalar loss ("Invalid
   reduction dimension 0 for input with 0 dimensions"). Upstream:
   tensorflow/tensorflow#72388 ("tf.distribute and keras 3 incompatibility", closed
   there as a Keras 3 problem; legacy Keras 2 works). Workaround: ``train_step`` returns
   every scalar log as a 1-element vector; the ``axis=0`` mean over replicas turns it
   back into the same scalar. Training itself (loss scaling by ``1 / replicas``, gradient
   all-reduce) is Keras' unchanged.

Items 2 and 3 are exercised by the two-worker tests of ``tests/test_distributed.py``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mdr_tf.data import make_dataset
from mdr_tf.schema import Schema
from mdr_tf.training.strategy import in_multi_worker_mode, is_distributed


def steps_per_execution(requested: int) -> int:
    """The ``steps_per_execution`` to compile with: ``requested``, or 1 under a strategy (item 1)."""
    return 1 if is_distributed() else requested


def fully_built(model: keras.Model) -> bool:
    """Whether the model's layers, compiled loss / metrics and optimizer all have their state."""
    return (all(layer.built for layer in model._flatten_layers())
            and (model._compile_loss is None or model._compile_loss.built)
            and (model._compile_metrics is None or model._compile_metrics.built)
            and (model.optimizer is None or model.optimizer.built))


def prepare_distributed_fit(model: keras.Model, schema: Schema, strategy: tf.distribute.Strategy) -> None:
    """Makes ``model.fit`` work on a multi-worker distributed dataset (items 2 and 3 above)."""
    if not fully_built(model):
        with strategy.scope():
            model._symbolic_build(data_batch=next(iter(make_dataset(schema, "train", 8, shuffle=False,
                                                                     in_memory=False))))
    if "_maybe_symbolic_build" not in vars(model):
        keras_build = model._maybe_symbolic_build

        def maybe_symbolic_build(iterator=None, data_batch=None):
            if not fully_built(model):
                keras_build(iterator=iterator, data_batch=data_batch)

        model._maybe_symbolic_build = maybe_symbolic_build
    if in_multi_worker_mode(strategy) and "train_step" not in vars(model):
        keras_step = model.train_step

        def train_step(data):
            logs = keras_step(data)
            return keras.tree.map_structure(
                lambda v: tf.reshape(v, [1]) if isinstance(v, tf.Tensor) and v.shape.rank == 0 else v, logs)

        model.train_step = train_step
