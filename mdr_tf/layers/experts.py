"""Experts, gates and towers with stacked weights (``StackedMLP``) and the expert mixture.

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


# PLE's CGC level and M2M's layers moved to mdr_tf/layers/mechanisms/{ple,m2m}.py (issue 12);
# the old import path keeps working (lazily, so that those modules can import StackedMLP from here).
_MOVED = {"CGCLevel": "mdr_tf.layers.mechanisms.ple", "MetaDense": "mdr_tf.layers.mechanisms.m2m",
          "FieldTransformer": "mdr_tf.layers.mechanisms.m2m", "MetaAttention": "mdr_tf.layers.mechanisms.m2m"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
