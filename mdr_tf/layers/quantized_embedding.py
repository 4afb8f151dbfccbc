"""Low-precision embedding tables: LPT and ALPT (Li et al., AAAI 2023, arXiv 2212.05735).

The table is stored as integers ``Ẽ ∈ [q_n, q_p]^{n×d}`` (``q_n = −2^{m−1}``,
``q_p = 2^{m−1} − 1`` for ``m`` bits) plus a step size ``Δ > 0`` (per row or one per
table); the embedding of row ``x`` is ``ê_x = Δ_x·Ẽ_x``. Training (low-precision
training, LPT) keeps no float copy of the table between steps. Per batch:

1. forward with ``ê``; ``g = ∂L/∂ê``;
2. the model's optimizer updates the float rows ``w = ê − opt(g)`` (and the dense layers);
3. ALPT only: a second forward/backward on the same batch with rows ``Δ·Q_D(w; Δ)``,
   whose LSQ gradient updates only ``Δ`` (own optimizer of the same type, rate ``η_Δ``);
4. re-quantise ``Ẽ_x ← Q(w_x; Δ_x)`` (stochastic rounding for LPT-SR and ALPT,
   deterministic for LPT-DR): by default every value whose float changed (mpe: the whole
   table, as the dense optimizer's momentum moves rows the batch did not read), or only
   the batch's rows (``rerounded="touched"``, Hetu).

``Q_R(w; Δ) = clip(R(w/Δ), q_n, q_p)`` with ``R_D(z) = ⌊z + ½⌋`` and
``R_S(z) = ⌊z + u⌋``, ``u ~ U[0, 1)`` (so ``E[R_S(z)] = z``).

Where the two available code bases disagree (the author's PyTorch baseline ``mpe`` and
Hetu's re-implementation; docs/models/alpt.md) the choice is an
argument: ``step`` (Δ per row, default, or per table), ``grad_scale`` (LSQ per row
``1/√(d·q_p)``, default; Hetu's ``1/√(B·d·q_p)``; mpe's ``1/√(2^{m−1}·n·d)``),
``delta_init`` (mpe's ``2·mean|E₀|/√(2^{m−1})``, default, or a constant), ``rerounded``
(the whole table, as mpe, default; or only the batch's rows, as Hetu), ``delta_lr`` (η_Δ,
mpe's 1e-6 default). ``delta_grad`` (ours) can replace the second pass by a closed form
from the first pass's gradient (not the default). See docs/models/alpt.md.

Implementation notes: ``MultiDomainModel.train_step`` runs steps 1-4 (``lpt_train_step``);
the float rows ``w`` live in a scratch variable that the model's optimizer updates but
that is not a model weight (it is never saved or exported: ``.keras`` files and
SavedModels hold ``codes`` — int8 for ≤ 8 bits, else int16 — and ``delta``). With
``rerounded="all"`` every step sets the scratch to ``Δ·Ẽ`` first and re-quantises every
changed value at its end (dense, elementwise); with ``"touched"`` only the rows a step
reads are synchronised and re-quantised, and the others' codes and Δ stay bit-identical.
Rows no batch has read stay bit-identical in both. Stochastic rounding draws ``u`` from a counter-based hash of
(row, column, step seed), so duplicate occurrences of a row in a batch round identically.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

PRECISIONS = ("fp", "lpt_dr", "lpt_sr", "alpt")
STEPS = ("row", "table")
GRAD_SCALES = ("lsq", "hetu", "mpe", "none")
DELTA_GRADS = ("second_pass", "first_pass")


def qrange(bits: int) -> tuple[int, int]:
    """``(q_n, q_p) = (−2^{m−1}, 2^{m−1} − 1)`` for ``m = bits``."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def storage_dtype(bits: int) -> str:
    """Integer dtype of the stored codes: int8 for ≤ 8 bits, int16 up to 16."""
    return "int8" if bits <= 8 else "int16"


def round_deterministic(z):
    """``R_D(z) = ⌊z + ½⌋`` (half away from −∞, as Hetu; mpe's ``torch.round`` is half-to-even)."""
    return ops.floor(z + 0.5)


def round_stochastic(z, u):
    """``R_S(z) = ⌊z + u⌋`` with ``u ∈ [0, 1)`` uniform: ``E[R_S(z)] = z``."""
    return ops.floor(z + u)


def hash_uniform(rows, dim: int, seed) -> tf.Tensor:
    """Uniform ``[0, 1)`` values ``[N, dim]`` from a counter-based hash of (row, column, seed).

    Equal rows give equal values within one step (so every occurrence of a row in a
    batch rounds the same way); a new ``seed`` gives independent values. murmur3's 32-bit
    finaliser over ``row·dim + column`` xor a per-step key.
    """
    rows = tf.cast(tf.reshape(rows, [-1, 1]), tf.int64)
    idx = rows * dim + tf.range(dim, dtype=tf.int64)[None, :]
    x = tf.cast(tf.bitwise.bitwise_and(idx, 0xFFFFFFFF), tf.uint32)
    seed = tf.cast(tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), 0xFFFFFFFF), tf.uint32)
    key = tf.bitwise.bitwise_xor(seed[0] * tf.constant(0x9E3779B9, tf.uint32),
                                 seed[1] * tf.constant(0x85EBCA6B, tf.uint32) + tf.constant(0x27D4EB2F, tf.uint32))
    x = tf.bitwise.bitwise_xor(x, key)
    for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(shift, tf.uint32)))
        x = x * tf.constant(mult, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    return tf.cast(tf.bitwise.right_shift(x, tf.constant(8, tf.uint32)), tf.float32) * (2.0 ** -24)


def quantize(w, delta, bits: int, stochastic: bool = False, u=None):
    """``Q_R(w; Δ) = clip(R(w/Δ), q_n, q_p)`` as integer-valued floats.

    Args:
      w: float values.
      delta: step size(s), broadcastable to ``w``.
      bits: bit width ``m``.
      stochastic: stochastic rounding (needs ``u``, uniform ``[0, 1)`` like ``w``).
      u: the uniforms of stochastic rounding.
    """
    qn, qp = qrange(bits)
    z = w / delta
    r = round_stochastic(z, u) if stochastic else round_deterministic(z)
    return ops.clip(r, float(qn), float(qp))


def lsq_fake_quant(w, delta, bits: int, scale: float):
    """``Δ·Q_D(w; Δ)`` with the LSQ gradients (straight-through on rounding).

    With ``z = w/Δ``: ``∂/∂w = 1`` inside ``(q_n, q_p)``, 0 outside;
    ``∂/∂Δ = R_D(z) − z`` inside, ``q_n`` at or below, ``q_p`` at or above, summed over
    the broadcast axes of ``delta`` and multiplied by the gradient scale ``scale``.
    """
    qn, qp = (float(v) for v in qrange(bits))

    @tf.custom_gradient
    def fq(w, delta):
        z = w / delta
        q = tf.clip_by_value(tf.floor(z + 0.5), qn, qp)

        def grad(g):
            inside = tf.logical_and(z > qn, z < qp)
            gw = g * tf.cast(inside, g.dtype)
            dd = tf.where(inside, q - z, tf.where(z <= qn, qn, qp))
            gd = g * dd * scale
            # Δ was broadcast over the axes where its static size is 1: sum them
            axes = [i for i, s in enumerate(delta.shape) if s == 1]
            gd = tf.reduce_sum(gd, axis=axes, keepdims=True) if axes else gd
            return gw, tf.reshape(gd, tf.shape(delta))

        return delta * q, grad

    return fq(w, delta)


class _Scratch:
    """Holds training-only state out of Keras' weight tracking (never saved or exported)."""

    def __init__(self):
        self.work = None
        self.delta_optimizer = None


@keras.saving.register_keras_serializable(package="mdr_tf")
class QuantizedEmbedding(keras.layers.Layer):
    """An embedding table stored as ``bits``-bit integers plus step size Δ (LPT / ALPT).

    ``lookup(rows)`` returns ``Δ_rows·Ẽ_rows`` (float32). In a training step
    (``training_pass``) lookups also record the rows read (the rows whose Δ ALPT updates,
    and the rows re-quantised with ``rerounded="touched"``). Paper: Li et al., "Adaptive Low-Precision Training
    for Embeddings in Click-Through Rate Prediction", AAAI 2023.

    Args:
      input_dim: rows ``n``.
      output_dim: embedding size ``d``.
      precision: "lpt_dr" (LPT, deterministic rounding), "lpt_sr" (LPT, stochastic),
        "alpt" (learned Δ, stochastic by default).
      bits: bit width ``m``, 2-16.
      step: "row" (one Δ per row, default) or "table" (one Δ, as mpe).
      grad_scale: Δ gradient scale: "lsq" ``1/√(d·q_p)`` (default), "hetu"
        ``1/√(B·d·q_p)`` (B = rows read in the batch), "mpe" ``1/√(2^{m−1}·n·d)``, "none".
      delta_init: "mpe" (``2·mean|E₀|/√(2^{m−1})`` over the initial float table) or a
        positive number.
      delta_lr: ALPT's learning rate η_Δ for Δ (mpe: 1e-6).
      rounding: re-quantisation rounding, "stochastic" or "deterministic"; default by
        precision (LPT-DR deterministic, LPT-SR and ALPT stochastic). Also used at build.
      min_delta: lower bound kept on Δ after each ALPT update.
      rerounded: which float rows are re-quantised after each step. "all" (default; mpe,
        the author's code): every value of the table whose float value changed (rows the
        batch did not read move too, by the optimizer's momentum, exactly as in float
        training with Keras' dense Adam; a value whose float equals its stored value keeps
        its integer). "touched" (Hetu): only the rows the batch read; their float rows are
        reset from the integers when next read, so the momentum part of the dense
        optimizer's update on unread rows is discarded (Hetu pairs it with a sparse
        optimizer; with Keras' Adam it lost ≈ 0.007 AUC at 8 and 16 bits on ML-100k, but
        rounds less often and measured better at 2-4 bits; docs/models/alpt.md).
      delta_grad: how ALPT's step 3 gets Δ's gradient. "second_pass" (default; both code
        bases): a second forward/backward on the same batch after the float update, with
        rows ``Δ·Q_D(w; Δ)`` and the updated dense weights; only the gradient towards Δ is
        taken (no weight gradients are formed). "first_pass" (ours, not in the sources):
        the closed form ``s·Σ_d G_{x,d}·∂(Δ·Q_D(w_x; Δ_x))/∂Δ_x`` with ``G = ∂L/∂ê`` of the
        first pass summed per row, i.e. the second pass's gradient with the pre-update
        dense weights and rows; no second pass (LPT's speed). ``grad_scale="hetu"`` then
        uses B = all rows read by the batch.
      init_stddev: the float table ``E₀`` quantised at build is N(0, init_stddev²)
        (mpe: 0.003); None uses ``embeddings_initializer`` instead (mdr_tf's float
        default N(0, 1e-4²) would give Δ₀ ≈ 1e-5 at 8 bits, a range of ±0.002, far below
        the ≈0.02-0.15 magnitudes a float table reaches on ML-100k).
      embeddings_initializer: initializer of ``E₀`` when ``init_stddev`` is None.
      seed: seed of stochastic rounding.
    """

    def __init__(self, input_dim: int, output_dim: int, precision: str = "alpt", bits: int = 8,
                 step: str = "row", grad_scale: str = "lsq", delta_init: Any = "mpe", delta_lr: float = 1e-6,
                 rounding: str | None = None, min_delta: float = 1e-10, init_stddev: float | None = 0.003,
                 rerounded: str = "all", delta_grad: str = "second_pass",
                 embeddings_initializer: Any = "random_normal", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if precision not in PRECISIONS or precision == "fp":
            raise ValueError(f"QuantizedEmbedding: precision must be one of lpt_dr, lpt_sr, alpt; got {precision!r}")
        if not 2 <= int(bits) <= 16:
            raise ValueError(f"QuantizedEmbedding: bits must be in 2..16, got {bits}")
        if step not in STEPS:
            raise ValueError(f"QuantizedEmbedding: step must be one of {STEPS}, got {step!r}")
        if grad_scale not in GRAD_SCALES:
            raise ValueError(f"QuantizedEmbedding: grad_scale must be one of {GRAD_SCALES}, got {grad_scale!r}")
        if not (delta_init == "mpe" or (isinstance(delta_init, (int, float)) and delta_init > 0)):
            raise ValueError(f"QuantizedEmbedding: delta_init must be 'mpe' or a positive number, got {delta_init!r}")
        rounding = rounding or ("deterministic" if precision == "lpt_dr" else "stochastic")
        if rounding not in ("stochastic", "deterministic"):
            raise ValueError(f"QuantizedEmbedding: rounding must be stochastic or deterministic, got {rounding!r}")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.precision, self.bits, self.step = precision, int(bits), step
        self.grad_scale, self.delta_init, self.delta_lr = grad_scale, delta_init, float(delta_lr)
        self.rounding, self.min_delta = rounding, float(min_delta)
        if rerounded not in ("touched", "all"):
            raise ValueError(f"QuantizedEmbedding: rerounded must be touched or all, got {rerounded!r}")
        self.rerounded = rerounded
        if delta_grad not in DELTA_GRADS:
            raise ValueError(f"QuantizedEmbedding: delta_grad must be one of {DELTA_GRADS}, got {delta_grad!r}")
        self.delta_grad = delta_grad
        self.init_stddev = None if init_stddev is None else float(init_stddev)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._scratch = _Scratch()
        self._source = "stored"  # "stored" | "work" | "lsq" (set by training_pass)
        self._touched: list | None = None

    @property
    def stochastic(self) -> bool:
        return self.rounding == "stochastic"

    def build(self, input_shape=None):
        n, d = self.input_dim, self.output_dim
        init = (self.embeddings_initializer if self.init_stddev is None
                else keras.initializers.RandomNormal(0.0, self.init_stddev, seed=self.seed))
        e0 = np.asarray(keras.ops.convert_to_numpy(init((n, d), "float32")), np.float32)
        if self.delta_init == "mpe":
            d0 = 2.0 * float(np.mean(np.abs(e0))) / math.sqrt(2 ** (self.bits - 1))
            d0 = d0 if d0 > 0 else 1e-4
        else:
            d0 = float(self.delta_init)
        rows_delta = n if self.step == "row" else 1
        delta0 = np.full((rows_delta, 1), d0, np.float32)
        u = (keras.ops.convert_to_numpy(hash_uniform(tf.range(n), d, self.seed_generator.next()))
             if self.stochastic else None)
        codes0 = keras.ops.convert_to_numpy(quantize(e0, d0, self.bits, self.stochastic, u))
        self.codes = self.add_weight(name="codes", shape=(n, d), dtype=storage_dtype(self.bits), trainable=False,
                                     initializer=keras.initializers.Constant(codes0.astype(storage_dtype(self.bits))))
        self.delta = self.add_weight(name="delta", shape=(rows_delta, 1), trainable=False,
                                     initializer=keras.initializers.Constant(delta0))
        self._scratch.work = keras.Variable(codes0.astype(np.float32) * delta0 if self.step == "row"
                                            else codes0.astype(np.float32) * d0,
                                            trainable=True, name=f"{self.name}_float_rows")
        self.built = True

    @property
    def work(self) -> keras.Variable:
        """The float rows ``w`` updated by the optimizer (training scratch, not a weight)."""
        return self._scratch.work

    # --- lookups -----------------------------------------------------------------------
    def _delta_of(self, rows):
        if self.step == "row":
            return ops.take(self.delta, rows, axis=0)  # [..., 1]
        return ops.reshape(self.delta, [1] * (len(rows.shape) + 1))

    def dequantize(self, rows):
        """``Δ_rows·Ẽ_rows`` from the stored integers."""
        return ops.cast(ops.take(self.codes, rows, axis=0), "float32") * self._delta_of(rows)

    def lookup(self, rows):
        """Embeddings of ``rows`` (any integer shape) → ``rows.shape + [d]``."""
        rows = ops.convert_to_tensor(rows, "int32")
        if self._source == "stored":
            return self.dequantize(rows)
        self._touched.append(ops.reshape(rows, [-1]))
        if self._source == "work":
            if self.rerounded == "touched":  # "all": the step synchronised every float row first
                flat = tf.reshape(rows, [-1])
                self.work.value.scatter_update(tf.IndexedSlices(self.dequantize(flat), flat))
            return ops.take(self.work, rows, axis=0)
        # "lsq": ALPT's second pass, Δ·Q_D(w; Δ) with the LSQ gradient towards Δ.
        w = ops.take(self.work, rows, axis=0)
        return lsq_fake_quant(w, self._delta_of(rows), self.bits, self._grad_scale(tf.size(rows)))

    def call(self, rows):
        return self.lookup(rows)

    def _grad_scale(self, n_read=None):
        qp = qrange(self.bits)[1]
        d = self.output_dim
        if self.grad_scale == "lsq":
            return 1.0 / math.sqrt(d * qp)
        if self.grad_scale == "hetu":
            return tf.math.rsqrt(tf.cast(n_read if n_read is not None else 1, tf.float32) * float(d * qp))
        if self.grad_scale == "mpe":
            return 1.0 / math.sqrt(2 ** (self.bits - 1) * self.input_dim * d)
        return 1.0

    # --- the training step's pieces ------------------------------------------------------
    @contextlib.contextmanager
    def training_pass(self, source: str):
        """Within: lookups read ``source`` ("work" or "lsq") and record their rows."""
        prev, prev_t = self._source, self._touched
        self._source, self._touched = source, []
        try:
            yield self._touched
        finally:
            self._source, self._touched = prev, prev_t

    def update_delta(self, grad, rows) -> None:
        """ALPT step 3: Δ ← opt_Δ(Δ, grad) on the rows read; other rows keep their Δ; Δ ≥ min_delta."""
        opt = self._scratch.delta_optimizer
        # A lazy optimizer (mdr_tf.optimizers.LazyAdam) gets Δ's gradient rows as they are,
        # so the Δ slots of rows not read stay too; others get it dense.
        lazy = getattr(opt, "updates_rows_lazily", False) and self.step == "row"
        if not (lazy and isinstance(grad, tf.IndexedSlices)):
            grad = tf.convert_to_tensor(grad)
        old = tf.identity(self.delta.value)
        opt.apply([grad], [self.delta])
        new = self.delta.value
        if self.step == "row":
            touched = tf.scatter_nd(tf.reshape(rows, [-1, 1]), tf.ones_like(rows, tf.float32), [self.input_dim])
            new = tf.where(tf.reshape(touched, [-1, 1]) > 0, new, old)
        self.delta.assign(tf.maximum(new, self.min_delta))

    def requantize(self, rows) -> None:
        """Step 4: ``Ẽ_rows ← Q(w_rows; Δ_rows)`` (duplicates in ``rows`` round identically)."""
        rows = tf.reshape(rows, [-1])
        w = ops.take(self.work, rows, axis=0)
        u = hash_uniform(rows, self.output_dim, self.seed_generator.next()) if self.stochastic else None
        q = quantize(w, self._delta_of(rows), self.bits, self.stochastic, u)
        self.codes.value.scatter_update(tf.IndexedSlices(tf.cast(q, self.codes.dtype), rows))

    def delta_gradient_from_rows(self, g_work, n_read=None):
        """Δ's LSQ gradient in closed form from ``G = ∂L/∂w`` (``[n, d]``, summed per row).

        ``∂/∂Δ_x = s·Σ_d G_{x,d}·dd(w_{x,d}/Δ_x)`` with ``dd = R_D(z) − z`` inside the range,
        ``q_n`` / ``q_p`` at or beyond it (the gradient ``lsq_fake_quant`` passes back), summed
        over the whole table for a per-table Δ. Rows with ``G = 0`` contribute nothing.
        """
        qn, qp = (float(v) for v in qrange(self.bits))
        z = self.work.value / self.delta.value
        inside = tf.logical_and(z > qn, z < qp)
        dd = tf.where(inside, tf.clip_by_value(tf.floor(z + 0.5), qn, qp) - z, tf.where(z <= qn, qn, qp))
        gd = g_work * dd * self._grad_scale(n_read)
        if self.step == "row":
            return tf.reduce_sum(gd, axis=1, keepdims=True)
        return tf.reshape(tf.reduce_sum(gd), [1, 1])

    def requantize_changed(self) -> None:
        """Step 4 with ``rerounded="all"``: re-quantise every value whose float value changed.

        ``Ẽ ← Q(w; Δ)`` where ``w ≠ Δ·Ẽ`` (with the current Δ), else ``Ẽ`` is kept; then the
        float rows are set to the stored values again. Dense and elementwise over the table
        (no gather/scatter): O(n·d) per step, like the dense optimizer update before it.
        Keeping unchanged values matters for stochastic rounding: ``(Δ·c)/Δ`` may fall an
        ulp below the integer ``c`` and ``⌊z + u⌋`` would then flip it with probability ≈ ulp.
        """
        w = self.work.value
        codes = ops.cast(self.codes.value, "float32")
        delta = self.delta.value  # [n, 1] or [1, 1]: broadcasts over the table
        u = (hash_uniform(tf.range(self.input_dim), self.output_dim, self.seed_generator.next())
             if self.stochastic else None)
        q = tf.where(tf.equal(w, codes * delta), codes, quantize(w, delta, self.bits, self.stochastic, u))
        self.codes.assign(tf.cast(q, self.codes.dtype))
        self.work.assign(q * delta)

    def make_delta_optimizer(self, optimizer: keras.optimizers.Optimizer) -> None:
        """ALPT's Δ optimizer: the model optimizer's class and settings with rate ``delta_lr``."""
        cfg = dict(optimizer.get_config())
        cfg.update(learning_rate=self.delta_lr, name="delta_optimizer")
        for k in ("weight_decay", "use_ema", "clipnorm", "global_clipnorm", "clipvalue", "loss_scale_factor",
                  "gradient_accumulation_steps"):
            cfg.pop(k, None)
        opt = type(optimizer).from_config(cfg)
        opt.build([self.delta])
        self._scratch.delta_optimizer = opt

    @property
    def delta_optimizer(self):
        return self._scratch.delta_optimizer

    # --- storage --------------------------------------------------------------------------
    def table_bytes(self, packed: bool = False) -> int:
        """Bytes of the stored table: integers (int8/int16, or ``bits`` each if ``packed``) + float32 Δ."""
        n, d = self.input_dim, self.output_dim
        per = self.bits / 8 if packed else (1 if self.bits <= 8 else 2)
        return int(math.ceil(n * d * per)) + 4 * int(np.prod(self.delta.shape) if self.built else
                                                      (n if self.step == "row" else 1))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "input_dim": self.input_dim, "output_dim": self.output_dim, "precision": self.precision,
            "bits": self.bits, "step": self.step, "grad_scale": self.grad_scale, "delta_init": self.delta_init,
            "delta_lr": self.delta_lr, "rounding": self.rounding, "min_delta": self.min_delta,
            "init_stddev": self.init_stddev, "rerounded": self.rerounded, "delta_grad": self.delta_grad,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer), "seed": self.seed,
        })
        return config

    def load_own_variables(self, store) -> None:
        super().load_own_variables(store)
        self.sync_work()

    def sync_work(self) -> None:
        """Sets every float row to its stored value ``Δ·Ẽ`` (after loading weights; and at the
        start of every step with ``rerounded="all"``)."""
        if self.work is not None:
            self.work.assign(ops.cast(self.codes.value, "float32") * self.delta.value)


def check_single_replica() -> None:
    """Raises a clear error under a ``tf.distribute`` strategy with more than one replica."""
    if tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        raise ValueError("low-precision embeddings (LPT/ALPT) train on one replica only: each replica reads and "
                         "re-quantises its own batch's rows, and those scatter updates are not synchronised "
                         "across replicas; use strategy='default' or embedding_precision='fp'")


def lpt_train_step(model: keras.Model, q: QuantizedEmbedding, data) -> dict[str, Any]:
    """One LPT / ALPT training step of ``model`` whose embedding table is ``q`` (steps 1-4 above).

    Keras' ``train_step`` plus: the optimizer also updates the float rows; ALPT's second
    pass (or its closed form, ``delta_grad="first_pass"``) updates Δ of the rows read; the
    changed values (``rerounded="all"``) or the rows read (``"touched"``) are re-quantised.
    """
    from keras.src import tree
    from keras.src.trainers.data_adapters import data_adapter_utils

    from mdr_tf.optimizers import sum_duplicate_rows

    check_single_replica()
    x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
    batch = tf.shape(next(i for i in tree.flatten(x) if i is not None))[0]
    if q.rerounded == "all":
        # every step starts from the stored table (also after weights were set between steps,
        # e.g. early stopping's restore); the batch's lookups then read the float rows directly
        q.sync_work()
    with q.training_pass("work") as touched:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            model._loss_tracker.update_state(loss, sample_weight=batch)
            loss = model.optimizer.scale_loss(loss)
    variables = list(model.trainable_variables) + [q.work]
    grads = sum_duplicate_rows(tape.gradient(loss, variables), model.optimizer)
    model.optimizer.apply(grads, variables)
    rows = tf.concat(touched, axis=0)
    if q.precision == "alpt" and q.delta_grad == "first_pass":
        g_work = tf.convert_to_tensor(grads[-1])  # IndexedSlices → dense, summed per row
        factor = getattr(model.optimizer, "loss_scale_factor", None)
        g_work = g_work / factor if factor else g_work
        q.update_delta(q.delta_gradient_from_rows(g_work, tf.size(rows)), rows)
    elif q.precision == "alpt":
        with q.training_pass("lsq"):
            # only Δ is watched: the backward pass forms activation gradients down to the
            # lookups and Δ's LSQ term, no dense-weight or float-row gradients
            with tf.GradientTape(watch_accessed_variables=False) as tape2:
                tape2.watch(q.delta.value)
                y2 = model(x, training=True)
                loss2 = model._compute_loss(x=x, y=y, y_pred=y2, sample_weight=sample_weight, training=True)
        q.update_delta(tape2.gradient(loss2, q.delta.value), rows)
    if q.rerounded == "all":
        q.requantize_changed()  # and the float rows are the stored values again
    else:
        q.requantize(rows)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
