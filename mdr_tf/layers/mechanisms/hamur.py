"""HAMUR: instance-wise hyper adapters (Li et al., CIKM 2023, arXiv 2309.06217).

A domain-shared hyper-network ``g`` maps the instance embedding ``e`` (``ctx["all"]``)
to a core ``H_b = reshape(g(e_b), [k, k])`` (its last layer is Linear → BN → ReLU, so
``H_b ≥ 0``). An adapter cell after a hidden layer ``h_b ∈ R^m`` is::

    a_b = σ( h_b (U1 H_b V1) + c1 )              U1: m×k, V1: k×p   (p = bottleneck, official 32)
    o_b = a_b (U2 H_b V2) + c2                   U2: p×k, V2: k×m
    h_b ← h_b + DN(o_b)                          DN = domain norm over the batch

computed re-associated as ``((h U1) H_b) V1`` so no [B, m, p] tensor is built.

Layers here: ``HyperNetwork`` (g), ``DomainNorm`` (DN), ``HyperAdapter`` (the hook
``"hamur"``), ``HamurCoreContext`` (computes the shared core once per batch for a
``BackboneModel``) and ``PerDomainDense`` / ``PerDomainBatchNorm`` (HAMUR-MLP's stacked
per-domain towers).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.blocks import DomainHook, register_hook
from mdr_tf.layers.stacked import StackedDense
from mdr_tf.params import mark_per_domain

NORM_MODES = ("moving", "batch")
CORE_KEY = "hamur_core"


@keras.saving.register_keras_serializable(package="mdr_tf")
class HyperNetwork(keras.layers.Layer):
    """HAMUR's domain-shared hyper-network: ``e [B, n0] → H [B, k, k]``.

    ``(Linear → BN → ReLU → Dropout) × (len(hidden_units) + 1)``, the last layer of
    width ``k²`` included (official: the generated core is non-negative).

    Args:
      k: core size (official MovieLens MLP: 35; DCN 30; W&D 45).
      hidden_units: widths before the ``k²`` layer (official ``hyper_dims``: [64]).
      bn_momentum: BN momentum (torch's 0.1 is Keras 0.9).
      bn_epsilon: BN epsilon (torch 1e-5).
      dropout: dropout rate after every ReLU (official 0).
      kernel_initializer: initializer of the Linear kernels.
    """

    def __init__(self, k: int = 35, hidden_units: Sequence[int] = (64,), bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, dropout: float = 0.0, kernel_initializer: Any = "glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.k = int(k)
        self.hidden_units = [int(u) for u in hidden_units]
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.dropout = float(dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        widths = self.hidden_units + [self.k * self.k]
        policy = self.dtype_policy
        self.denses = [keras.layers.Dense(w, kernel_initializer=self.kernel_initializer, name=f"dense_{i}",
                                          dtype=policy) for i, w in enumerate(widths)]
        self.norms = [keras.layers.BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                                      name=f"bn_{i}", dtype=policy) for i in range(len(widths))]
        self.drop = keras.layers.Dropout(self.dropout, name="dropout", dtype=policy) if self.dropout > 0 else None
        width = int(input_shape[-1])
        for dense, norm in zip(self.denses, self.norms):
            dense.build((None, width))
            width = dense.units
            norm.build((None, width))
        self.built = True

    def call(self, e, training: bool | None = None):
        x = e
        for dense, norm in zip(self.denses, self.norms):
            x = ops.relu(norm(dense(x), training=training))
            if self.drop is not None:
                x = self.drop(x, training=training)
        return ops.reshape(x, (-1, self.k, self.k))

    def generated_parameters_per_sample(self) -> int:
        """The core ``H_b``: ``k·k`` generated parameters per instance."""
        return self.k * self.k

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.k, self.k)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"k": self.k, "hidden_units": self.hidden_units, "bn_momentum": self.bn_momentum,
                       "bn_epsilon": self.bn_epsilon, "dropout": self.dropout,
                       "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)})
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class DomainNorm(keras.layers.Layer):
    """HAMUR's domain norm over the batch axis: ``γ ⊙ (o − μ) / sqrt(σ² + ε) + β``.

    Statistics are taken over axis 0 (the batch); any middle axes (e.g. the domain axis
    of stacked towers, [B, D, m]) keep separate statistics, ``γ, β`` are per unit [m].
    The variance is the **unbiased** batch variance (``n/(n−1)`` times the biased one;
    ``n = 1`` gives variance 0 instead of the official NaN).

    Modes:
      - ``"moving"`` (default, ours): batch statistics in training, and non-trainable
        moving averages ``s ← momentum·s + (1−momentum)·s_batch`` updated only when
        ``training=True``; the moving statistics are used at inference, so predictions
        do not depend on the test batch.
      - ``"batch"`` (official HAMUR): batch statistics in training **and** inference, no
        moving averages. Predictions then depend on the evaluation batch size and order.

    Under a 16-bit policy the layer computes in float32 and casts its output back.

    Args:
      mode: "moving" or "batch".
      momentum: moving-average momentum (ours; torch-like 0.9).
      epsilon: added to the variance (official 1e-5).
    """

    def __init__(self, mode: str = "moving", momentum: float = 0.9, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        if mode not in NORM_MODES:
            raise ValueError(f"norm mode must be one of {NORM_MODES}, got {mode!r}")
        self.mode = mode
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        m = int(input_shape[-1])
        stats_shape = tuple(int(s) for s in input_shape[1:])
        self.gamma = self.add_weight(name="gamma", shape=(m,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(m,), initializer="zeros")
        if self.mode == "moving":
            # float32 under a mixed policy (no autocast), as Keras' BN.
            self.moving_mean = self.add_weight(name="moving_mean", shape=stats_shape, initializer="zeros",
                                               trainable=False, autocast=False)
            self.moving_variance = self.add_weight(name="moving_variance", shape=stats_shape,
                                                   initializer="ones", trainable=False, autocast=False)
        self.built = True

    def batch_statistics(self, x):
        """Mean and unbiased variance over axis 0."""
        n = ops.cast(ops.shape(x)[0], x.dtype)
        mean = ops.mean(x, axis=0)
        var = ops.mean(ops.square(x - mean), axis=0) * n / ops.maximum(n - 1.0, 1.0)
        return mean, var

    def call(self, x, training: bool | None = None):
        out_dtype = x.dtype
        if keras.backend.standardize_dtype(out_dtype) in ("float16", "bfloat16"):
            x = ops.cast(x, "float32")  # statistics and normalisation in float32, as Keras' BN
            return ops.cast(self.normalize(x, training), out_dtype)
        return self.normalize(x, training)

    def normalize(self, x, training: bool | None = None):
        """``γ ⊙ (x − μ) / sqrt(σ² + ε) + β`` in ``x``'s dtype."""
        if self.mode == "batch" or training:
            mean, var = self.batch_statistics(x)
            if self.mode == "moving":
                m = self.momentum
                self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * ops.cast(mean, self.moving_mean.dtype))
                self.moving_variance.assign(m * self.moving_variance
                                            + (1.0 - m) * ops.cast(var, self.moving_variance.dtype))
        else:
            mean = ops.cast(self.moving_mean, x.dtype)
            var = ops.cast(self.moving_variance, x.dtype)
        return (ops.cast(self.gamma, x.dtype) * (x - mean) / ops.sqrt(var + self.epsilon)
                + ops.cast(self.beta, x.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"mode": self.mode, "momentum": self.momentum, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class HamurCoreContext(keras.layers.Layer):
    """Computes the shared HAMUR core once per batch: ``ctx → {"hamur_core": g(ctx["all"])}``.

    A model runs it before its deep part and merges the result into ``ctx`` so that
    every ``HyperAdapter`` of the model reads the same ``H_b`` (official: one ``H_b``
    feeds both projections and, in the 7-layer variant, both adapter cells).

    Args:
      input_dim: width of ``ctx["all"]``.
      k, hidden_units, bn_momentum, bn_epsilon, dropout, kernel_initializer: see
        ``HyperNetwork``.
      core_key: the ``ctx`` key written.
    """

    def __init__(self, input_dim: int, k: int = 35, hidden_units: Sequence[int] = (64,), bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, dropout: float = 0.0, kernel_initializer: Any = "glorot_uniform",
                 core_key: str = CORE_KEY, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.core_key = core_key
        self.hyper_config = {"k": int(k), "hidden_units": [int(u) for u in hidden_units],
                             "bn_momentum": float(bn_momentum), "bn_epsilon": float(bn_epsilon),
                             "dropout": float(dropout),
                             "kernel_initializer": keras.initializers.get(kernel_initializer)}
        self.hyper = None

    def build(self, input_shape=None):
        self.hyper = HyperNetwork(**self.hyper_config, name="hyper", dtype=self.dtype_policy)
        self.hyper.build((None, self.input_dim))
        self.built = True

    def call(self, ctx: dict, training: bool | None = None) -> dict:
        return {self.core_key: self.hyper(ctx["all"], training=training)}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        h = self.hyper_config
        config.update({"input_dim": self.input_dim, **h,
                       "kernel_initializer": keras.initializers.serialize(h["kernel_initializer"]),
                       "core_key": self.core_key})
        return config


@register_hook("hamur")
class HyperAdapter(DomainHook):
    """HAMUR adapter cell on hidden activations (Li et al., CIKM 2023).

    ``h ← h + DN(σ(h U1 H V1 + c1) U2 H V2 + c2)`` with the instance core ``H_b``
    ([B, k, k]), evaluated as ``((h U1) H) V1`` (no [B, m, p] tensor). ``h`` is [B, m]
    or stacked per-domain towers [B, D, m] (the same ``H_b`` for every tower).
    ``U*, V*, c*, γ, β`` are shared across domains (as official).

    Where ``H`` comes from (ours): by default from ``ctx[core_key]``, computed once per
    batch by the model (``BackboneModel`` builds a ``HamurCoreContext`` through
    ``context_provider``; ``HamurMLP`` owns its hyper-network). With
    ``standalone=True`` the hook owns its own ``HyperNetwork`` on ``ctx["all"]`` (for a
    ``DomainMLP`` used outside a model; several standalone hooks do not share a core).

    Args:
      num_domains, context_dims: see ``DomainHook``.
      k: core size.
      bottleneck: adapter bottleneck width p (official: hard-coded 32).
      hyper_dims: hyper-network hidden widths (used by the context provider / standalone).
      adapter_initializer: initializer of ``U1, V1, U2, V2`` (official: ones).
      norm_mode, norm_momentum, norm_epsilon: see ``DomainNorm``.
      hyper_bn_momentum, hyper_bn_epsilon, hyper_dropout: hyper-network options.
      standalone: own a hyper-network instead of reading ``ctx[core_key]``.
      core_key: ``ctx`` key of the shared core.
    """

    def __init__(
        self,
        num_domains: int = 1,
        context_dims: dict[str, int] | None = None,
        k: int = 35,
        bottleneck: int = 32,
        hyper_dims: Sequence[int] = (64,),
        adapter_initializer: Any = "ones",
        norm_mode: str = "moving",
        norm_momentum: float = 0.9,
        norm_epsilon: float = 1e-5,
        hyper_bn_momentum: float = 0.9,
        hyper_bn_epsilon: float = 1e-5,
        hyper_dropout: float = 0.0,
        standalone: bool = False,
        core_key: str = CORE_KEY,
        **kwargs,
    ):
        super().__init__(num_domains, context_dims, **kwargs)
        self.k = int(k)
        self.bottleneck = int(bottleneck)
        self.hyper_dims = [int(u) for u in hyper_dims]
        self.adapter_initializer = keras.initializers.get(adapter_initializer)
        self.norm_mode = norm_mode
        self.norm_momentum = float(norm_momentum)
        self.norm_epsilon = float(norm_epsilon)
        self.hyper_bn_momentum = float(hyper_bn_momentum)
        self.hyper_bn_epsilon = float(hyper_bn_epsilon)
        self.hyper_dropout = float(hyper_dropout)
        self.standalone = bool(standalone)
        self.core_key = core_key
        if norm_mode not in NORM_MODES:
            raise ValueError(f"norm mode must be one of {NORM_MODES}, got {norm_mode!r}")
        self.norm = None
        self.hyper = None

    @classmethod
    def context_provider(cls, hook_config: dict[str, Any], context_dims: dict[str, int],
                         name: str = "hamur_core", dtype: Any = None) -> keras.layers.Layer | None:
        """The layer a model runs once per batch to put the shared core into ``ctx``
        (None for standalone hooks)."""
        cfg = dict(hook_config or {})
        if cfg.get("standalone", False):
            return None
        return HamurCoreContext(
            context_dims["all"], k=cfg.get("k", 35), hidden_units=cfg.get("hyper_dims", (64,)),
            bn_momentum=cfg.get("hyper_bn_momentum", 0.9), bn_epsilon=cfg.get("hyper_bn_epsilon", 1e-5),
            dropout=cfg.get("hyper_dropout", 0.0), core_key=cfg.get("core_key", CORE_KEY), name=name,
            dtype=dtype)

    def build(self, input_shape):
        m, k, p = int(input_shape[-1]), self.k, self.bottleneck
        init = self.adapter_initializer
        self.u1 = self.add_weight(name="U1", shape=(m, k), initializer=init)
        self.v1 = self.add_weight(name="V1", shape=(k, p), initializer=init)
        self.c1 = self.add_weight(name="c1", shape=(p,), initializer="zeros")
        self.u2 = self.add_weight(name="U2", shape=(p, k), initializer=init)
        self.v2 = self.add_weight(name="V2", shape=(k, m), initializer=init)
        self.c2 = self.add_weight(name="c2", shape=(m,), initializer="zeros")
        policy = self.dtype_policy
        self.norm = DomainNorm(self.norm_mode, self.norm_momentum, self.norm_epsilon, name="domain_norm",
                               dtype=policy)
        self.norm.build(tuple(input_shape))
        if self.standalone:
            self.hyper = HyperNetwork(self.k, self.hyper_dims, self.hyper_bn_momentum, self.hyper_bn_epsilon,
                                      self.hyper_dropout, name="hyper", dtype=policy)
            self.hyper.build((None, self.context_dims["all"]))
        self.built = True

    def core(self, ctx: dict, training: bool | None = None):
        """The instance core ``H`` [B, k, k] (from ``ctx`` or the own hyper-network)."""
        if self.hyper is not None:
            return self.hyper(ctx["all"], training=training)
        if ctx is None or self.core_key not in ctx:
            raise ValueError(f"HyperAdapter needs ctx[{self.core_key!r}] computed once per batch by the model "
                             "(BackboneModel / HamurMLP do this); pass standalone=True to own a hyper-network")
        return ctx[self.core_key]

    @staticmethod
    def _core_product(t, core):
        # t: [B, k]; core: [B, k, k] → t H_b per sample.
        return ops.einsum("bk,bkj->bj", t, core)

    def adapter_output(self, h, core):
        """``o = σ(((h U1) H) V1 + c1) U2 H V2 + c2`` (before the domain norm).

        Stacked towers [B, D, m] are computed tower by tower: a tower's output then does
        not depend on D, so adding a domain leaves the others' predictions bit-identical
        (``mdr_tf.onboarding``); one op over [B, D, m] rounds differently as D grows.
        """
        if len(h.shape) == 3:
            return ops.stack([self.adapter_output(h[:, d], core) for d in range(h.shape[1])], axis=1)
        dt = h.dtype
        core = ops.cast(core, dt)
        t = self._core_product(ops.matmul(h, ops.cast(self.u1, dt)), core)
        a = ops.sigmoid(ops.matmul(t, ops.cast(self.v1, dt)) + ops.cast(self.c1, dt))
        t = self._core_product(ops.matmul(a, ops.cast(self.u2, dt)), core)
        return ops.matmul(t, ops.cast(self.v2, dt)) + ops.cast(self.c2, dt)

    def materialized_weights(self, core):
        """The generated adapter weights ``(U1 H_b V1 [B, m, p], U2 H_b V2 [B, p, m])`` (diagnostics)."""
        w_dn = ops.einsum("mi,bij,jn->bmn", self.u1, core, self.v1)
        w_up = ops.einsum("pi,bij,jm->bpm", self.u2, core, self.v2)
        return w_dn, w_up

    def call(self, h, ctx: dict | None = None, training: bool | None = None):
        o = self.adapter_output(h, self.core(ctx, training=training))
        return h + self.norm(o, training=training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "k": self.k, "bottleneck": self.bottleneck, "hyper_dims": self.hyper_dims,
            "adapter_initializer": keras.initializers.serialize(self.adapter_initializer),
            "norm_mode": self.norm_mode, "norm_momentum": self.norm_momentum, "norm_epsilon": self.norm_epsilon,
            "hyper_bn_momentum": self.hyper_bn_momentum, "hyper_bn_epsilon": self.hyper_bn_epsilon,
            "hyper_dropout": self.hyper_dropout, "standalone": self.standalone, "core_key": self.core_key,
        })
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class PerDomainDense(StackedDense):
    """HAMUR-MLP's D per-domain tower layers on the whole batch (R1, compute-all):
    ``StackedDense`` with the ``"batch_major"`` layout and per-domain weights.

    ``[B, n] → [B, D, u]`` (every tower on the shared input) or ``[B, D, n] → [B, D, u]``
    (tower d on its own previous activations), kernels stored stacked [D, n, u].

    Args:
      units: output width u.
      num_domains: D.
      kernel_initializer: initializer of each domain's [n, u] kernel.
      bias_initializer: initializer of the [D, u] biases.
      implementation: "auto" (default: one GEMM for the shared input in training, D
        matmuls otherwise), "loop" (D matmuls, then stack) or "einsum" (one batched
        contraction). Same result; see ``mdr_tf.layers.stacked``.
    """

    def __init__(self, units: int, num_domains: int, kernel_initializer: Any = "glorot_uniform",
                 bias_initializer: Any = "zeros", implementation: str = "auto", **kwargs):
        for key in ("num_branches", "layout", "per_domain", "use_bias"):
            kwargs.pop(key, None)
        super().__init__(units, num_domains, layout="batch_major", implementation=implementation, per_domain=True,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer, **kwargs)
        self.num_domains = self.num_branches

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        for key in ("num_branches", "layout", "per_domain", "use_bias"):
            config.pop(key)
        config["num_domains"] = self.num_domains
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class PerDomainBatchNorm(keras.layers.Layer):
    """BatchNorm of stacked towers [B, D, u]: each (domain, unit) has its own γ, β and
    moving statistics; batch statistics come from the whole (mixed) batch, as each
    torch tower's BatchNorm1d sees it under compute-all routing (R1).

    Args:
      momentum: moving-average momentum (torch 0.1 = Keras 0.9).
      epsilon: variance epsilon (torch 1e-5).
    """

    def __init__(self, momentum: float = 0.9, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.bn = None

    def build(self, input_shape):
        self.d, self.u = int(input_shape[-2]), int(input_shape[-1])
        self.bn = keras.layers.BatchNormalization(momentum=self.momentum, epsilon=self.epsilon, name="bn",
                                                  dtype=self.dtype_policy)
        self.bn.build((None, self.d * self.u))
        for v in self.bn.weights:
            mark_per_domain(v)
        self.built = True

    def call(self, x, training: bool | None = None):
        y = self.bn(ops.reshape(x, (-1, self.d * self.u)), training=training)
        return ops.reshape(y, (-1, self.d, self.u))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"momentum": self.momentum, "epsilon": self.epsilon})
        return config
