"""M2M (Zhang et al., "Leaving No One Behind: A Multi-Scenario Multi-Task Meta Learning
Approach for Advertiser Modeling", WSDM 2022): meta units, meta attention, field encoder.

Equations (``s``: the sample's scenario representation, ``t``: its task representation):

- meta unit (``MetaDense``): ``W(s) = reshape(s G + C, [n, u])``, ``c(s) = s H + c``,
  ``y = x W(s) + c(s)``: a dense layer whose weights are generated per sample;
- meta attention (``MetaAttention``): ``α_i = softmax_i(vᵀ MetaUnit_s([E_i ; t]))``,
  ``R = Σ_i α_i E_i`` over the K experts ``E_i`` of one sample;
- meta tower (assembled in ``mdr_tf.models.m2m``): ``R ← LeakyReLU(R W_l(s) + b_l(s) + R)``;
- field encoder (``FieldTransformer``): a transformer encoder over one sample's field
  embeddings, ``H ← LN(H + MHA(H, H))``, ``H ← LN(H + FFN(H))``.

The model (encoder → experts → meta attention → meta tower → output MLP) is assembled in
``mdr_tf.models.m2m``; see ``docs/models/`` for the fidelity notes.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mdr_tf")
class MetaDense(keras.layers.Layer):
    """M2M's meta unit: a dense layer whose weights are generated from a condition.

    ``W_b = reshape(s_b G + C, [n, u])``, ``c_b = s_b H + c``, ``y_b = x_b W_b + c_b``
    (``s_b``: the scenario representation). ``C, c`` are the static part (initialised
    like an ordinary dense layer); ``G, H`` the generator. ``x`` may be [B, n] or
    [B, N, n] (the same generated weights for the N rows of a sample, e.g. experts).

    Args:
      units: u.
      condition_dim: width k of the condition ``s``.
      generator_initializer: initializer of ``G`` and ``H``.
      kernel_initializer: initializer of the static kernel ``C``.

    Example:
      >>> layer = MetaDense(8, condition_dim=4)
      >>> y = layer(np.ones((2, 3, 5), "float32"), np.ones((2, 4), "float32"))  # [2, 3, 8]

    References:
      Zhang et al., WSDM 2022, §3.3 (meta unit).
    """

    def __init__(self, units: int, condition_dim: int, generator_initializer: Any = "glorot_uniform",
                 kernel_initializer: Any = "glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.condition_dim = int(condition_dim)
        self.generator_initializer = keras.initializers.get(generator_initializer)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        n, u, k = int(input_shape[-1]), self.units, self.condition_dim
        self.input_dim = n
        self.gen_kernel = self.add_weight(name="gen_kernel", shape=(k, n * u), initializer=self.generator_initializer)
        self.gen_bias = self.add_weight(name="gen_bias", shape=(k, u), initializer=self.generator_initializer)
        self.kernel = self.add_weight(name="kernel", shape=(n, u), initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(u,), initializer="zeros")
        self.built = True

    def generate(self, s):
        """Per-sample weights: (W [B, n, u], c [B, u])."""
        w = ops.reshape(ops.matmul(s, self.gen_kernel), (-1, self.input_dim, self.units)) + self.kernel
        return w, ops.matmul(s, self.gen_bias) + self.bias

    def call(self, x, s):
        # Materialise W_b once per sample and apply it with a batched matmul: measured the
        # fastest on CPU/XLA (docs/benchmarks.md, "M2M: where the time goes") against the
        # outer-product GEMM (x ⊗ s) G, x G' contracted with s, and a broadcast-reduce.
        w, c = self.generate(s)
        if len(x.shape) == 2:
            return ops.matmul(x[:, None, :], w)[:, 0, :] + c
        return ops.matmul(x, w) + c[:, None, :]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def generated_parameters_per_sample(self) -> int:
        return self.input_dim * self.units + self.units

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"units": self.units, "condition_dim": self.condition_dim,
                       "generator_initializer": keras.initializers.serialize(self.generator_initializer),
                       "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)})
        return config


def _project(h, dense):
    """An ``EinsumDense("abc,cde->abde")`` of Keras' MultiHeadAttention as one 2-D GEMM:
    h [B, F, d] → [B, F, heads, width]."""
    kernel = dense.kernel  # [d, heads, width]
    d, heads, width = kernel.shape
    y = ops.matmul(ops.reshape(h, (-1, d)), ops.reshape(kernel, (d, heads * width)))
    y = ops.reshape(y, (-1, h.shape[-2], heads, width))
    return y + dense.bias if dense.bias is not None else y


def within_sample_attention(mha: keras.layers.MultiHeadAttention, h):
    """``MHA(H, H)`` of one sample's F rows with ``mha``'s own weights, no dropout.

    ``softmax(Q Kᵀ / √d_k) V`` per head, then the output projection: the same function
    as ``mha(h, h)`` (equal to float rounding), computed as 2-D GEMMs for the projections
    and broadcast-multiply-reduce for the F×F scores and the weighted sum. For F ≈ 8 rows
    this is ~2× faster on CPU/XLA (forward + backward) than Keras' batched
    ``einsum("aecd,abcd->acbe")`` over B·heads tiny matrices (docs/benchmarks.md).
    """
    q = _project(h, mha.query_dense)
    k = _project(h, mha.key_dense)
    v = _project(h, mha.value_dense)
    q = q * ops.cast(1.0 / math.sqrt(float(q.shape[-1])), q.dtype)
    scores = ops.sum(q[:, :, None] * k[:, None], axis=-1)  # [B, F_q, F_k, heads]
    p = ops.softmax(scores, axis=2)
    o = ops.sum(p[..., None] * v[:, None], axis=2)  # [B, F_q, heads, width]
    out = mha.output_dense
    heads, width, d = out.kernel.shape
    y = ops.matmul(ops.reshape(o, (-1, heads * width)), ops.reshape(out.kernel, (heads * width, d)))
    y = ops.reshape(y, (-1, h.shape[-2], d))
    return y + out.bias if out.bias is not None else y


@keras.saving.register_keras_serializable(package="mdr_tf")
class FieldTransformer(keras.layers.Layer):
    """Transformer encoder over one sample's field embeddings (attention within a sample).

    ``[B, F, d]``: per layer ``H ← LN(H + MHA(H, H))``, ``H ← LN(H + FFN(H))``,
    ``FFN(H) = ReLU(H W_1 + b_1) W_2 + b_2``; softmax attention runs over the F fields
    of each sample, never across the batch (the Scenario-Wise-Rec M2M feeds a 2-D
    [B, n0] tensor to torch's Transformer, which then attends across the batch). With
    ``dropout == 0`` (default) the attention is ``within_sample_attention`` on the Keras
    MHA layer's weights (same function, faster); with dropout, Keras' MHA itself.

    Args:
      num_layers: encoder layers.
      num_heads: attention heads (key width d / heads).
      ff_units: feed-forward width.
      dropout: attention dropout.

    Example:
      >>> enc = FieldTransformer(num_layers=1, num_heads=2, ff_units=32)
      >>> h = enc(np.zeros((4, 7, 16), "float32"))  # [4, 7, 16]

    References:
      Zhang et al., WSDM 2022, §3.2 (transformer encoder); Vaswani et al., NeurIPS 2017.
    """

    def __init__(self, num_layers: int = 1, num_heads: int = 2, ff_units: int = 32, dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.ff_units = int(ff_units)
        self.dropout = float(dropout)
        self.attn, self.ln1, self.ff1, self.ff2, self.ln2 = [], [], [], [], []

    def build(self, input_shape):
        f, d = int(input_shape[-2]), int(input_shape[-1])
        key_dim = max(1, d // self.num_heads)
        policy = self.dtype_policy
        for i in range(self.num_layers):
            mha = keras.layers.MultiHeadAttention(self.num_heads, key_dim, dropout=self.dropout, name=f"mha_{i}",
                                                  dtype=policy)
            mha.build((None, f, d), (None, f, d))
            ln1 = keras.layers.LayerNormalization(name=f"ln1_{i}", dtype=policy)
            ln1.build((None, f, d))
            ff1 = keras.layers.Dense(self.ff_units, activation="relu", name=f"ff1_{i}", dtype=policy)
            ff1.build((None, f, d))
            ff2 = keras.layers.Dense(d, name=f"ff2_{i}", dtype=policy)
            ff2.build((None, f, self.ff_units))
            ln2 = keras.layers.LayerNormalization(name=f"ln2_{i}", dtype=policy)
            ln2.build((None, f, d))
            for lst, layer in zip((self.attn, self.ln1, self.ff1, self.ff2, self.ln2), (mha, ln1, ff1, ff2, ln2)):
                lst.append(layer)
        self.built = True

    def call(self, h, training: bool | None = None):
        for mha, ln1, ff1, ff2, ln2 in zip(self.attn, self.ln1, self.ff1, self.ff2, self.ln2):
            a = within_sample_attention(mha, h) if self.dropout == 0.0 else mha(h, h, training=training)
            h = ln1(h + a)
            h = ln2(h + ff2(ff1(h)))
        return h

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_layers": self.num_layers, "num_heads": self.num_heads, "ff_units": self.ff_units,
                       "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class MetaAttention(keras.layers.Layer):
    """M2M's meta attention over experts.

    ``α_i = softmax_i( vᵀ MetaUnit_s([E_i ; t]) )``, ``R = Σ_i α_i E_i``, where the meta
    unit is ``meta_layers`` generated dense layers ``z ← LeakyReLU(z W_j(s) + b_j(s))``
    (``MetaDense``, weights generated from the scenario representation ``s``), ``t`` the
    task representation and ``v`` learned. The softmax runs over one sample's experts.

    Args:
      units: attention width a (every meta-unit layer).
      condition_dim: width of ``s``.
      task_dim: width of ``t`` (0: no task input).
      leaky_alpha: LeakyReLU negative slope.
      learned_task: True: ``t`` is a learned constant vector of this layer; False
        (M2M's default): ``t`` [B, task_dim] is passed to ``call`` (computed from the
        scenario embedding by the model).
      meta_layers: depth of the meta unit (Scenario-Wise-Rec: 1).

    Example:
      >>> att = MetaAttention(units=16, condition_dim=16, task_dim=16, learned_task=False)
      >>> r = att(experts, s, t)  # experts [B, K, h], s [B, 16], t [B, 16] → [B, h]

    References:
      Zhang et al., WSDM 2022, §3.3 (meta attention module).
    """

    def __init__(self, units: int = 16, condition_dim: int = 16, task_dim: int = 16, leaky_alpha: float = 0.1,
                 learned_task: bool = True, meta_layers: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.condition_dim = int(condition_dim)
        self.task_dim = int(task_dim)
        self.leaky_alpha = float(leaky_alpha)
        self.learned_task = bool(learned_task)
        self.meta_layers = int(meta_layers)
        if self.meta_layers < 1:
            raise ValueError(f"MetaAttention needs meta_layers >= 1, got {meta_layers}")
        self.meta_units = [MetaDense(self.units, self.condition_dim, name="meta" if j == 0 else f"meta_{j}",
                                     dtype=self.dtype_policy)
                           for j in range(self.meta_layers)]

    @property
    def meta(self) -> MetaDense:
        """The first meta-unit layer."""
        return self.meta_units[0]

    def build(self, input_shape):
        # input_shape: experts [B, K, h]
        width = int(input_shape[-1]) + self.task_dim
        for unit in self.meta_units:
            unit.build(tuple(input_shape[:-1]) + (width,))
            width = self.units
        self.task = self.add_weight(name="task_embedding", shape=(self.task_dim,), initializer="random_normal") \
            if self.task_dim and self.learned_task else None
        self.v = self.add_weight(name="v", shape=(self.units, 1), initializer="glorot_uniform")
        self.built = True

    def weights_over_experts(self, experts, s, t=None):
        """α [B, K] from experts [B, K, h], s [B, k] and (``learned_task=False``) t [B, task_dim]."""
        x = experts
        if self.task_dim:
            if self.task is not None:
                t = ops.zeros_like(x[..., :1]) + ops.cast(self.task, x.dtype)  # [B, K, task_dim]
            elif t is None:
                raise ValueError(f"{self.name}: learned_task=False needs the task representation t")
            else:
                t = ops.zeros_like(x[..., :1]) + ops.expand_dims(ops.cast(t, x.dtype), 1)
            x = ops.concatenate([x, t], axis=-1)
        for unit in self.meta_units:
            x = ops.leaky_relu(unit(x, s), self.leaky_alpha)
        return ops.softmax(ops.squeeze(ops.matmul(x, self.v), -1), axis=-1)

    def call(self, experts, s, t=None):
        """R [B, h] = Σ_i α_i E_i with experts [B, K, h]."""
        return ops.einsum("bk,bkh->bh", self.weights_over_experts(experts, s, t), experts)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"units": self.units, "condition_dim": self.condition_dim, "task_dim": self.task_dim,
                       "leaky_alpha": self.leaky_alpha, "learned_task": self.learned_task,
                       "meta_layers": self.meta_layers})
        return config
