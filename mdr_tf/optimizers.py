"""Optimizers by name, and lazy (sparse) Adam for embedding tables.

Keras 3's ``Adam`` updates its moment slots densely: ``m ← m + (g − m)(1 − β₁)`` with a
``tf.IndexedSlices`` gradient ``g`` (the rows of the fused embedding table a batch read)
first makes ``g`` dense, so every step reads and writes the whole table and both slots
(docs/operations.md, "What breaks first"). ``LazyAdam`` updates only the rows a batch read
(the "lazy Adam" of TF1's ``LazyAdamOptimizer`` / TF-Addons, written here from the
equations). For a table ``W`` with gradient rows ``{(i, g_i)}`` at step ``t``:

1. aggregate duplicate ids: ``G_r = Σ_{i: idx_i = r} g_i`` for every distinct row ``r``;
2. ``m_r ← m_r + (G_r − m_r)(1 − β₁)``, ``v_r ← v_r + (G_r² − v_r)(1 − β₂)``;
3. ``W_r ← W_r − α_t·m_r / (√v_r + ε)`` with the global bias correction
   ``α_t = lr·√(1 − β₂ᵗ) / (1 − β₁ᵗ)`` (``t`` = the optimizer's step, as Keras' Adam).

Rows the batch did not read keep ``W``, ``m`` and ``v`` bit-identical (dense Adam moves them
while their momentum is non-zero). With every row in every batch this is Adam. Every
variable whose gradient is dense (all dense layers) gets exactly ``keras.optimizers.Adam``'s
update. Not the papers' optimizer (they use torch's dense Adam, the default
``TrainConfig.optimizer="adam"``); for large tables (docs/operations.md) and for ALPT's
``rerounded="touched"`` (docs/models/alpt.md).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

OPTIMIZERS = ("adam", "lazy_adam")


def aggregate_rows(indices, values) -> tuple[tf.Tensor, tf.Tensor]:
    """Distinct rows of a sparse gradient and their summed values.

    Args:
      indices: ``[N]`` row ids (duplicates allowed).
      values: ``[N, ...]`` gradient rows.

    Returns:
      ``(rows [U], sums [U, ...])``: each distinct id once (order of first occurrence) and
      the sum of its values. Works under XLA (bounded dynamic shape ``U ≤ N``).
    """
    rows, pos = tf.unique(indices)
    return rows, tf.math.unsorted_segment_sum(values, pos, tf.shape(rows)[0])


def sum_duplicate_rows(gradients: list, optimizer: keras.optimizers.Optimizer | None = None) -> list:
    """The gradients with every ``tf.IndexedSlices`` one's duplicate ids summed.

    A gather of a variable (an embedding table, or per-domain parameters taken per sample)
    gives an ``IndexedSlices`` gradient with one row per lookup. Keras 3's optimizers apply
    their element-wise maths to those rows before summing them (Adam's ``v`` then grows by
    ``Σ g_i²`` instead of ``(Σ g_i)²``; ``tests/test_optimizers.py``), unlike torch's dense
    gradients and TF1's ``_apply_sparse_duplicate_indices``, which sum first. Summing here,
    before ``optimizer.apply``, gives every optimizer the references' semantics; dense
    gradients and ``None`` pass through unchanged.

    How: inside XLA the gradient is made dense (the sum per row of the whole variable, what
    a dense optimizer computes anyway; XLA's ``Unique`` took ~0.8 s for the 393k ids of a
    16,384 x 24 batch on this CPU, docs/benchmarks.md), and so it is under a strategy with
    several replicas (their all-reduce would concatenate the rows again); otherwise
    ``tf.unique`` + segment sum keeps it sparse. For ``optimizer``
    a ``LazyAdam`` (also inside a ``LossScaleOptimizer``) the gradients pass unchanged: it
    sums duplicates itself and must get the rows, not a dense gradient.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if getattr(inner, "updates_rows_lazily", False):
        return list(gradients)
    # With several replicas the all-reduce of an IndexedSlices concatenates the replicas'
    # rows, so a row read on two replicas would reach the optimizer twice again: make the
    # gradient dense, as torch's DDP all-reduces dense gradients (LazyAdam, above, sums
    # after the all-reduce itself).
    dense = _in_xla() or (tf.distribute.has_strategy()
                          and tf.distribute.get_strategy().num_replicas_in_sync > 1)
    out = []
    for g in gradients:
        if isinstance(g, tf.IndexedSlices):
            if dense:
                g = tf.convert_to_tensor(g)
            else:
                rows, sums = aggregate_rows(g.indices, g.values)
                g = tf.IndexedSlices(sums, rows, g.dense_shape)
        out.append(g)
    return out


def _gather(variable, rows):
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return tf.gather(variable, rows)


@keras.saving.register_keras_serializable(package="mdr_tf")
class LazyAdam(keras.optimizers.Adam):
    """Adam that updates only the rows a sparse (``tf.IndexedSlices``) gradient names.

    Same arguments and, for dense gradients, the same update as ``keras.optimizers.Adam``
    (Kingma & Ba, ICLR 2015). A ``tf.IndexedSlices`` gradient (an embedding table read with
    a gather) updates the table's rows in the batch and their ``m``, ``v`` (and AMSGrad's
    ``v̂``) rows only, after summing duplicate ids; see the module docstring for the
    equations. ``weight_decay`` and ``gradient_accumulation_steps`` are refused: Keras
    applies both to the whole variable (decay moves every row; accumulation makes the
    gradient dense), which would undo the point of the lazy update. ``get_config`` is
    Adam's (every argument; LazyAdam adds none); registered as ``mdr_tf>LazyAdam``.
    """

    #: Read by ``QuantizedEmbedding`` (ALPT): its Δ optimizer may then get sparse gradients.
    updates_rows_lazily = True

    def __init__(self, learning_rate: Any = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, amsgrad: bool = False, name: str = "lazy_adam", **kwargs: Any):
        for arg in ("weight_decay", "gradient_accumulation_steps"):
            if kwargs.get(arg):
                raise ValueError(f"LazyAdam: {arg}={kwargs[arg]!r} is not supported (Keras applies it to the whole "
                                 "variable, so rows a batch did not read would change); use "
                                 "keras.optimizers.Adam(W) or leave it unset")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         amsgrad=amsgrad, name=name, **kwargs)

    #: How a sparse gradient is applied (all three give the same update; tests pin each):
    #: ``None`` = by sizes, below; "masked_dense": elementwise over the table, rows not read
    #: kept by a mask (cheapest when the table has at most ``DENSE_FORM_MAX_ROWS_PER_ID``
    #: rows per id of the batch); "rows_unique": ``tf.unique`` + segment sum, then the distinct
    #: rows (outside XLA: TF's hash-based unique); "rows_summed": duplicates summed into a
    #: transient ``[rows, d]`` buffer, every occurrence updates its row with the same values
    #: (inside XLA, whose ``Unique`` and sort are several times slower than this; measured in
    #: docs/benchmarks.md).
    sparse_form: str | None = None

    def update_step(self, gradient, variable, learning_rate):
        """Keras Adam's update for a dense gradient; the lazy row update for ``tf.IndexedSlices``."""
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        values = ops.cast(gradient.values, dtype)
        # The same expressions, in the same order, as keras.optimizers.Adam.update_step.
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        i = self._get_variable_index(variable)
        slots = [self._momentums[i], self._velocities[i]] + ([self._velocity_hats[i]] if self.amsgrad else [])
        form = self.sparse_form or _auto_form(int(variable.shape[0]), gradient.indices.shape[0])
        if form == "masked_dense":
            n, shape = int(variable.shape[0]), [int(k) for k in variable.shape]
            # one segment sum gives the summed rows and, in an extra column, how often each was read
            flat = tf.reshape(values, [-1, int(np.prod(shape[1:], dtype=np.int64))])
            both = tf.math.unsorted_segment_sum(tf.concat([flat, tf.ones_like(flat[:, :1])], 1), gradient.indices, n)
            g = tf.reshape(both[:, :-1], shape)
            mask = tf.reshape(both[:, -1] > 0, [-1] + [1] * (len(shape) - 1))
            olds = [ops.convert_to_tensor(s) for s in slots] + [tf.convert_to_tensor(variable)]
            news = self._adam_rows(g, olds[:-1], olds[-1], alpha)
            for target, old, new in zip(slots + [variable], olds, news):
                self.assign(target, tf.where(mask, new, old))
            return
        if form == "rows_unique":
            rows, g = aggregate_rows(gradient.indices, values)
        elif form == "rows_summed":
            rows = gradient.indices
            g = tf.gather(tf.math.unsorted_segment_sum(values, rows, int(variable.shape[0])), rows)
        else:
            raise ValueError(f"LazyAdam.sparse_form must be None, masked_dense, rows_unique or rows_summed; "
                             f"got {form!r}")
        news = self._adam_rows(g, [_gather(s, rows) for s in slots], _gather(variable, rows), alpha)
        for target, new in zip(slots + [variable], news):  # duplicate rows write equal values
            self.assign(target, tf.IndexedSlices(new, rows))

    def _adam_rows(self, g, slots, w, alpha):
        """Adam on rows: ``(m, v[, v̂], w)`` after one step with gradient ``g`` (Keras' expressions)."""
        m, v = slots[0], slots[1]
        m = ops.add(m, ops.multiply(ops.subtract(g, m), 1 - self.beta_1))
        v = ops.add(v, ops.multiply(ops.subtract(ops.square(g), v), 1 - self.beta_2))
        out = [m, v]
        if self.amsgrad:
            v = ops.maximum(slots[2], v)
            out.append(v)
        step = ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon))
        return out + [ops.subtract(w, step)]


#: The elementwise form is used while the table has at most this many rows per id in the
#: batch (measured break-even under XLA on this CPU: a row read by gather/scatter costs
#: about 4-5 times a row streamed elementwise; docs/benchmarks.md).
DENSE_FORM_MAX_ROWS_PER_ID = 4


def _auto_form(rows: int, ids: int | None) -> str:
    if ids is not None and rows <= DENSE_FORM_MAX_ROWS_PER_ID * ids:
        return "masked_dense"
    return "rows_summed" if _in_xla() else "rows_unique"


def _in_xla() -> bool:
    """Whether the op being built is inside an XLA-compiled function (TF's private helper)."""
    try:
        from tensorflow.python.ops import control_flow_util

        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:  # noqa: BLE001 - a moved private helper: take the non-XLA form
        return False


def make_optimizer(name: str, learning_rate: Any, epsilon: float) -> keras.optimizers.Optimizer:
    """The optimizer of ``TrainConfig.optimizer``: "adam" (Keras' dense Adam) or "lazy_adam"."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, epsilon=epsilon)
    if name == "lazy_adam":
        return LazyAdam(learning_rate, epsilon=epsilon)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
