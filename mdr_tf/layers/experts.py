"""Experts, gates and towers with stacked weights; PLE's CGC level; M2M's meta layers.

All multi-branch parts (MMoE/PLE experts, per-domain gates, per-domain towers) are one
``StackedMLP``: K parallel MLPs whose kernels are stacked ``[K, n, u]`` so that all
branches run as one batched einsum. Per-domain towers and gates are routed per sample
(default "bucket": rows grouped into per-domain tiles, ``mdr_tf.layers.routing.domain_buckets``
— the fastest measured on CPU, see ``experiments/bench_routing.py`` and
``docs/models/baselines_a.md``; with BatchNorm, "stacked": compute all D branches on the
whole batch and select, the PyTorch references' compute-all-then-select, BN statistics
included).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.routing import (
    bucket_dense,
    domain_buckets,
    from_buckets,
    gather_domain_params,
    select_by_domain,
    select_by_domain_masked,
    to_buckets,
)
from mdr_tf.layers.stacked import StackedDense, stacked_initializer  # noqa: F401 (stacked_initializer: old import path)


@keras.saving.register_keras_serializable(package="mdr_tf")
class StackedMLP(keras.layers.Layer):
    """K parallel MLPs ``[Linear → (BN) → act → (dropout)] × L (→ Linear(output_units))``.

    ``call(x)`` returns every branch ``[K, B, u]`` (x is [B, n], shared by all branches,
    or [K, B, n], one input per branch). ``call(x, index)`` returns each sample's own
    branch ``index[b]`` ``[B, u]`` (per-domain towers / gates: ``index`` = domain id),
    routed by ``routing``:

    - "bucket": rows grouped into per-branch tiles once, every layer one batched matmul
      with each tile's branch kernels, rows gathered back at the end (no BatchNorm);
    - "stacked": all branches on the whole batch, ``select_by_domain`` at the end;
    - "masked": the same, one-hot masked sum at the end;
    - "gather": per-sample gather of each layer's kernels (no BatchNorm).

    With ``batch_norm`` each branch's BN sees the whole batch (the PyTorch references'
    compute-all-then-select, R1). Each layer is a ``StackedDense`` (``mdr_tf.layers.stacked``,
    the package's one stacked per-branch dense; ``kernels`` / ``biases`` list their weights).

    Args:
      num_branches: K.
      units: hidden widths (each followed by BN / activation / dropout).
      output_units: width of a final plain linear layer (e.g. 1 for a tower's logit);
        None: none.
      activation: hidden activation (a Keras name; "leaky_relu" uses ``negative_slope``).
      negative_slope: LeakyReLU slope when ``activation == "leaky_relu"``.
      batch_norm: BatchNormalization after each hidden linear layer.
      bn_momentum, bn_epsilon: BN settings (torch's defaults: 0.9, 1e-5).
      dropout: dropout after each hidden activation.
      routing: "auto" (default: "bucket", or "stacked" with ``batch_norm``), "bucket",
        "stacked", "masked" or "gather".
      per_domain: mark the weights as per-domain parameters (K = D towers / gates).
      kernel_initializer: per-branch kernel initializer.
    """

    def __init__(
        self,
        num_branches: int,
        units: Sequence[int],
        output_units: int | None = None,
        activation: str = "relu",
        negative_slope: float = 0.2,
        batch_norm: bool = False,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        dropout: float = 0.0,
        routing: str = "auto",
        per_domain: bool = False,
        kernel_initializer: Any = "glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if routing not in ("auto", "bucket", "stacked", "masked", "gather"):
            raise ValueError(f"unknown routing {routing!r}; available: auto, bucket, stacked, masked, gather")
        if batch_norm and routing in ("gather", "bucket"):
            raise ValueError("batch_norm needs routing='stacked' or 'masked' (BN sees every branch's whole batch)")
        self.num_branches = int(num_branches)
        self.units = [int(u) for u in units]
        self.output_units = None if output_units is None else int(output_units)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.batch_norm = bool(batch_norm)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.dropout = float(dropout)
        self.routing = routing
        self.per_domain = bool(per_domain)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.act = (lambda h: ops.leaky_relu(h, self.negative_slope)) if activation == "leaky_relu" \
            else keras.activations.get(activation)
        self.norms, self.denses, self.drop = [], [], None

    @property
    def widths(self) -> list[int]:
        return self.units + ([self.output_units] if self.output_units is not None else [])

    @property
    def output_dim(self) -> int:
        return self.widths[-1]

    def build(self, input_shape):
        n = int(input_shape[-1])
        k = self.num_branches
        policy = self.dtype_policy
        self.norms = [keras.layers.BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                                      name=f"bn_{i}", dtype=policy)
                      for i in range(len(self.units))] if self.batch_norm else []
        self.drop = keras.layers.Dropout(self.dropout, name="dropout", dtype=policy) if self.dropout > 0 else None
        self.denses = []
        for i, u in enumerate(self.widths):
            dense = StackedDense(u, k, layout="branch_major", implementation="einsum", per_domain=self.per_domain,
                                 kernel_initializer=self.kernel_initializer, name=f"dense_{i}",
                                 dtype=self.dtype_policy)
            dense.build((None, n))
            self.denses.append(dense)
            if i < len(self.units) and self.batch_norm:
                self.norms[i].build((None, k * u))
            n = u
        self.built = True

    @property
    def kernels(self) -> list:
        """The stacked kernels ``[K, n, u]`` of every layer."""
        return [d.kernel for d in self.denses]

    @property
    def biases(self) -> list:
        """The stacked biases ``[K, u]`` of every layer."""
        return [d.bias for d in self.denses]

    def _post(self, i: int, h, training):
        """BN → activation → dropout after hidden layer i; h is [K, B, u] or [B, u]."""
        if i >= len(self.units):
            return h
        if self.batch_norm:  # one BN over [B, K·u]: each branch normalised over the whole batch
            k, u = h.shape[0], h.shape[-1]
            flat = ops.reshape(ops.transpose(h, (1, 0, 2)), (-1, k * u))
            h = ops.transpose(ops.reshape(self.norms[i](flat, training=training), (-1, k, u)), (1, 0, 2))
        h = self.act(h)
        if self.drop is not None:
            h = self.drop(h, training=training)
        return h

    @property
    def effective_routing(self) -> str:
        if self.routing == "auto":
            return "stacked" if self.batch_norm else "bucket"
        return self.routing

    def call(self, x, index=None, training: bool | None = None):
        routing = self.effective_routing
        if index is not None and routing in ("gather", "bucket") and len(x.shape) != 2:
            raise ValueError("routed StackedMLP needs a shared [B, n] input")
        if index is not None and routing == "bucket":
            pos, tile_domain, n_tiles = domain_buckets(index, self.num_branches)
            h = to_buckets(x, pos, n_tiles)
            for i, (w, b) in enumerate(zip(self.kernels, self.biases)):
                h = self._post(i, bucket_dense(h, tile_domain, w, b), training)
            return from_buckets(h, pos)
        if index is not None and routing == "gather":
            h = x
            for i, (w, b) in enumerate(zip(self.kernels, self.biases)):
                h = ops.einsum("bn,bnu->bu", h, gather_domain_params(w, index)) + gather_domain_params(b, index)
                h = self._post(i, h, training)
            return h
        h = x
        for i, dense in enumerate(self.denses):
            h = self._post(i, dense(h), training)
        if index is None:
            return h
        return select_by_domain(h, index) if routing == "stacked" else select_by_domain_masked(h, index)

    def compute_output_shape(self, input_shape):
        return (self.num_branches, input_shape[-2], self.output_dim)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "num_branches": self.num_branches, "units": self.units, "output_units": self.output_units,
            "activation": self.activation, "negative_slope": self.negative_slope,
            "batch_norm": self.batch_norm, "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon, "dropout": self.dropout, "routing": self.routing,
            "per_domain": self.per_domain,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config


def mix_experts(gates, experts):
    """``h_b = Σ_i g_{b,i} E_i(x_b)``: gates [B, E] (rows sum to 1), experts [E, B, u] → [B, u]."""
    return ops.einsum("be,ebu->bu", gates, experts)


@keras.saving.register_keras_serializable(package="mdr_tf")
class CGCLevel(keras.layers.Layer):
    """One Customized Gate Control level of PLE (Tang et al., RecSys 2020), domains as tasks.

    Domain d has ``num_specific`` experts of its own; ``num_shared`` experts are shared.
    Domain d's gate mixes only its own specific experts and the shared ones:
    ``h_d = Σ_i g_{d,i}(x_d) E_i(x_d)``, ``g_d = softmax(Linear_d(x_d) (→ BN))`` over
    ``[E_{d,1..ns}, E_{shared,1..nsh}]``. A level that feeds another level also outputs
    the shared branch ``h_s = Σ_j g_{s,j}(x_s) E_j`` whose gate spans all experts.

    Input: [B, n] (first level: one input for every branch) or [D+1, B, n] (the D domain
    branches and the shared branch of the previous level). Output: [D, B, u] (last
    level) or [D+1, B, u].

    Args:
      num_domains: D.
      num_specific: specific experts per domain (Scenario-Wise-Rec: 2).
      num_shared: shared experts (Scenario-Wise-Rec: 1).
      expert_units: expert MLP widths.
      last: whether this is the last level (no shared-branch output).
      activation, batch_norm, dropout: expert MLP options.
      gate_batch_norm: BN between the gate's linear layer and its softmax (the
        references' Linear → BN → Softmax).
      bn_momentum, bn_epsilon: BN settings.
    """

    def __init__(
        self,
        num_domains: int,
        num_specific: int = 2,
        num_shared: int = 1,
        expert_units: Sequence[int] = (64,),
        last: bool = True,
        activation: str = "relu",
        batch_norm: bool = False,
        gate_batch_norm: bool = False,
        dropout: float = 0.0,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_domains = int(num_domains)
        self.num_specific = int(num_specific)
        self.num_shared = int(num_shared)
        self.expert_units = [int(u) for u in expert_units]
        self.last = bool(last)
        self.activation = activation
        self.batch_norm = bool(batch_norm)
        self.gate_batch_norm = bool(gate_batch_norm)
        self.dropout = float(dropout)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        d, ns, nsh = self.num_domains, self.num_specific, self.num_shared
        mlp = dict(activation=activation, batch_norm=self.batch_norm, dropout=self.dropout,
                   bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
        gate = dict(activation="linear", batch_norm=self.gate_batch_norm, bn_momentum=self.bn_momentum,
                    bn_epsilon=self.bn_epsilon)
        self.specific = StackedMLP(d * ns, self.expert_units, per_domain=True, name="specific_experts", **mlp) \
            if ns else None
        self.shared = StackedMLP(nsh, self.expert_units, name="shared_experts", **mlp) if nsh else None
        self.gates = StackedMLP(d, [ns + nsh], per_domain=True, name="domain_gates", **gate)
        self.shared_gate = None if self.last else StackedMLP(1, [d * ns + nsh], name="shared_gate", **gate)

    def build(self, input_shape):
        shape = (None, int(input_shape[-1]))
        for layer in (self.specific, self.shared, self.gates, self.shared_gate):
            if layer is not None:
                layer.build(shape)
        self.built = True

    @property
    def output_dim(self) -> int:
        return self.expert_units[-1]

    def domain_gate_weights(self, x, training: bool | None = None):
        """Softmax gate weights of every domain [D, B, ns + nsh] (own specific, then shared)."""
        x_dom = x if len(x.shape) == 2 else x[: self.num_domains]
        return ops.softmax(self.gates(x_dom, training=training), axis=-1)

    def call(self, x, domain=None, training: bool | None = None):
        """[D(+1), B, u]; or, for the last level given ``domain`` [B], each sample's own
        domain's output [B, u] (only its own gate is mixed)."""
        d, ns, nsh = self.num_domains, self.num_specific, self.num_shared
        shared_in = len(x.shape) == 2
        x_dom = x if shared_in else x[:d]
        x_sh = x if shared_in else x[d]
        spec = self.specific(x if shared_in else ops.repeat(x_dom, ns, axis=0), training=training) \
            if ns else None  # [D·ns, B, u]; branch d·ns + j reads x_d
        sh = self.shared(x_sh, training=training) if nsh else None  # [nsh, B, u]
        if self.last and domain is not None:
            domain = ops.cast(domain, "int32")
            logits = self.gates(x, domain, training=training) if shared_in \
                else select_by_domain(self.gates(x_dom, training=training), domain)
            g = ops.softmax(logits, axis=-1)  # [B, ns + nsh]
            h = 0.0
            if ns:  # own specific experts: the gate spread over all D·ns with zeros elsewhere
                w = ops.one_hot(domain, d, dtype=g.dtype)[:, :, None] * g[:, None, :ns]
                h = mix_experts(ops.reshape(w, (-1, d * ns)), spec)
            return h + mix_experts(g[:, ns:], sh) if nsh else h
        g = self.domain_gate_weights(x, training=training)  # [D, B, ns + nsh]
        h = 0.0
        if ns:
            eye = ops.eye(d, dtype=g.dtype)[:, None, :, None]  # [D, 1, D, 1]
            w = ops.reshape(eye * g[:, :, None, :ns], (d, -1, d * ns))  # [D, B, D·ns]
            h = ops.einsum("dbe,ebu->dbu", w, spec)
        if nsh:
            h = h + ops.einsum("dbj,jbu->dbu", g[:, :, ns:], sh)
        if self.last:
            return h
        every = ops.concatenate(([spec] if ns else []) + ([sh] if nsh else []), axis=0)  # [D·ns + nsh, B, u]
        g_s = ops.softmax(self.shared_gate(x_sh, training=training)[0], axis=-1)
        h_s = mix_experts(g_s, every)
        return ops.concatenate([h, h_s[None]], axis=0)

    def compute_output_shape(self, input_shape):
        return (self.num_domains + (0 if self.last else 1), input_shape[-2], self.output_dim)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "num_domains": self.num_domains, "num_specific": self.num_specific, "num_shared": self.num_shared,
            "expert_units": self.expert_units, "last": self.last, "activation": self.activation,
            "batch_norm": self.batch_norm, "gate_batch_norm": self.gate_batch_norm, "dropout": self.dropout,
            "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon,
        })
        return config


# --- M2M (Zhang et al., WSDM 2022): meta units -------------------------------------------------


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
        # fastest on CPU/XLA for the meta attention's K expert rows (vs. the outer-product
        # GEMM x ⊗ s or a broadcast-reduce).
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


@keras.saving.register_keras_serializable(package="mdr_tf")
class FieldTransformer(keras.layers.Layer):
    """Transformer encoder over one sample's field embeddings (attention within a sample).

    ``[B, F, d]``: per layer ``H ← LN(H + MHA(H, H))``, ``H ← LN(H + FFN(H))``; softmax
    attention runs over the F fields of each sample, never across the batch (the
    Scenario-Wise-Rec M2M feeds a 2-D [B, n0] tensor to torch's Transformer, which then
    attends across the batch).

    Args:
      num_layers: encoder layers.
      num_heads: attention heads (key width d / heads).
      ff_units: feed-forward width.
      dropout: attention dropout.
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
        for i in range(self.num_layers):
            mha = keras.layers.MultiHeadAttention(self.num_heads, key_dim, dropout=self.dropout, name=f"mha_{i}")
            mha.build((None, f, d), (None, f, d))
            ln1 = keras.layers.LayerNormalization(name=f"ln1_{i}")
            ln1.build((None, f, d))
            ff1 = keras.layers.Dense(self.ff_units, activation="relu", name=f"ff1_{i}")
            ff1.build((None, f, d))
            ff2 = keras.layers.Dense(d, name=f"ff2_{i}")
            ff2.build((None, f, self.ff_units))
            ln2 = keras.layers.LayerNormalization(name=f"ln2_{i}")
            ln2.build((None, f, d))
            for lst, layer in zip((self.attn, self.ln1, self.ff1, self.ff2, self.ln2), (mha, ln1, ff1, ff2, ln2)):
                lst.append(layer)
        self.built = True

    def call(self, h, training: bool | None = None):
        for mha, ln1, ff1, ff2, ln2 in zip(self.attn, self.ln1, self.ff1, self.ff2, self.ln2):
            h = ln1(h + mha(h, h, training=training))
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
    """M2M's meta attention over experts (Zhang et al., WSDM 2022).

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
        self.meta_units = [MetaDense(self.units, self.condition_dim, name="meta" if j == 0 else f"meta_{j}")
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
