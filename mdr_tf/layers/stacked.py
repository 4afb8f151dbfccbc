"""One stacked per-branch dense layer: K dense layers whose weights are stored stacked.

``y_k = x_k W_k + b_k`` for every branch k (a domain's tower, an expert, a gate) on the
whole batch, with ``W [K, n, u]`` and ``b [K, u]``. Every "D parallel dense layers" of the
package is this layer or its function ``stacked_dense``: ``StackedMLP`` (MMoE / PLE /
M2M experts, per-domain towers and gates; ``mdr_tf.layers.experts``), HAMUR-MLP's
per-domain towers (``PerDomainDense``, ``mdr_tf.layers.mechanisms.hamur``) and the routed
per-domain dense of ``mdr_tf.layers.routing`` (``all_domains_dense``).

Two layouts: ``"branch_major"`` ``[K, B, u]`` (experts and towers that are mixed or
selected afterwards) and ``"batch_major"`` ``[B, K, u]`` (HAMUR's towers, normalised
per (domain, unit) over the batch). Two evaluation orders with the same result:

- ``"einsum"``: one batched contraction over all K branches (a single GEMM
  ``x [B, n] · [n, K·u]`` for a shared input) — the fastest in training;
- ``"loop"``: K separate matmuls, stacked. A branch's output then never depends on K
  (CPU GEMM kernels may round a few entries differently when a matrix grows by a branch),
  which new-domain onboarding needs at inference (``mdr_tf.onboarding``).

``"auto"`` is ``"einsum"`` in training for a shared [B, n] input and ``"loop"`` otherwise
(measured with XLA on CPU, docs/benchmarks.md "HAMUR-MLP and HierRec cost": one GEMM
``[B, n]·[n, K·u]`` beats K matmuls, but for per-branch inputs [B, K, n] the batched
contraction's transposes cost more than K matmuls on strided slices).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mdr_tf.params import mark_per_domain

LAYOUTS = ("branch_major", "batch_major")
IMPLEMENTATIONS = ("auto", "einsum", "loop")
SEED_STRIDE = 1_000_003  # seed offset between branches of a seeded initializer


def branch_initializer(initializer: Any, branch: int):
    """``initializer`` for branch ``branch``: a copy whose integer seed is shifted by
    ``branch · SEED_STRIDE`` (a Keras 3 initializer with an int seed returns the same values
    on every call, which would make all branches identical); unseeded ones are shared."""
    initializer = keras.initializers.get(initializer)
    seed = getattr(initializer, "seed", None)
    if not isinstance(seed, int) or branch == 0:
        return initializer
    cfg = keras.initializers.serialize(initializer)
    cfg = {**cfg, "config": {**cfg["config"], "seed": (seed + SEED_STRIDE * branch) % (2**31 - 1)}}
    return keras.initializers.deserialize(cfg)


def stacked_initializer(initializer: Any, num_branches: int):
    """An initializer of a stacked kernel ``[K, n, u]`` that draws each branch as its own
    ``[n, u]`` kernel (Keras' fans would otherwise fold K in), branch by branch."""
    inits = [branch_initializer(initializer, k) for k in range(num_branches)]

    def init(shape, dtype=None):
        return ops.stack([f(tuple(shape[1:]), dtype=dtype) for f in inits], axis=0)

    return init


def stacked_dense(x, kernel, bias=None, layout: str = "branch_major", implementation: str = "einsum"):
    """``y_k = x_k W_k + b_k`` for all K branches.

    Args:
      x: [B, n] (one input shared by all branches), or per-branch inputs [K, B, n]
        (``"branch_major"``) / [B, K, n] (``"batch_major"``).
      kernel: [K, n, u].
      bias: [K, u] or None.
      layout: output (and per-branch input) layout, ``"branch_major"`` [K, B, u] or
        ``"batch_major"`` [B, K, u].
      implementation: ``"einsum"`` (one batched contraction) or ``"loop"`` (K matmuls).

    Returns:
      [K, B, u] or [B, K, u].
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    kernel = ops.cast(kernel, x.dtype)
    shared = len(x.shape) == 2
    branch_major = layout == "branch_major"
    if implementation == "einsum":
        if shared:
            eq = "bn,knu->kbu" if branch_major else "bn,knu->bku"
        else:
            eq = "kbn,knu->kbu" if branch_major else "bkn,knu->bku"
        y = ops.einsum(eq, x, kernel)
    elif implementation == "loop":
        k = kernel.shape[0]
        axis = 0 if branch_major else 1
        y = ops.stack([ops.matmul(x if shared else (x[i] if branch_major else x[:, i]), kernel[i])
                       for i in range(k)], axis=axis)
    else:
        raise ValueError(f"implementation must be 'einsum' or 'loop', got {implementation!r}")
    if bias is None:
        return y
    bias = ops.cast(bias, x.dtype)
    return y + (bias[:, None, :] if branch_major else bias)


@keras.saving.register_keras_serializable(package="mdr_tf")
class StackedDense(keras.layers.Layer):
    """K dense layers evaluated on the whole batch: ``y_k = x_k W_k + b_k``.

    ``W [K, n, u]`` and ``b [K, u]`` are stored stacked; each branch's kernel is drawn as
    its own ``[n, u]`` kernel (``stacked_initializer``). See the module docstring for the
    layouts and evaluation orders.

    Args:
      units: output width u.
      num_branches: K.
      layout: ``"branch_major"`` ([B, n] or [K, B, n] → [K, B, u]) or ``"batch_major"``
        ([B, n] or [B, K, n] → [B, K, u]).
      implementation: ``"auto"`` (einsum for a shared input in training, else loop),
        ``"einsum"`` or ``"loop"``.
      use_bias: add the per-branch bias.
      per_domain: mark the weights as per-domain parameters (K = D towers / gates).
      kernel_initializer: initializer of each branch's [n, u] kernel.
      bias_initializer: initializer of the [K, u] biases.

    Example:
      >>> layer = StackedDense(4, num_branches=3)
      >>> layer(ops.ones((2, 5))).shape
      (3, 2, 4)
    """

    def __init__(self, units: int, num_branches: int, layout: str = "branch_major", implementation: str = "einsum",
                 use_bias: bool = True, per_domain: bool = False, kernel_initializer: Any = "glorot_uniform",
                 bias_initializer: Any = "zeros", **kwargs):
        super().__init__(**kwargs)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.units = int(units)
        self.num_branches = int(num_branches)
        self.layout = layout
        self.implementation = implementation
        self.use_bias = bool(use_bias)
        self.per_domain = bool(per_domain)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        n = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(self.num_branches, n, self.units),
                                      initializer=stacked_initializer(self.kernel_initializer, self.num_branches))
        self.bias = (self.add_weight(name="bias", shape=(self.num_branches, self.units),
                                     initializer=self.bias_initializer) if self.use_bias else None)
        if self.per_domain:
            for v in (self.kernel, self.bias):
                if v is not None:
                    mark_per_domain(v)
        self.built = True

    def resolve_implementation(self, x, training: bool | None) -> str:
        """The evaluation order used for input ``x`` ("einsum" or "loop")."""
        if self.implementation == "auto":
            return "einsum" if training and len(x.shape) == 2 else "loop"
        return self.implementation

    def call(self, x, training: bool | None = None):
        return stacked_dense(x, self.kernel, self.bias, self.layout, self.resolve_implementation(x, training))

    def compute_output_shape(self, input_shape):
        batch = input_shape[0] if len(input_shape) == 2 or self.layout == "batch_major" else input_shape[1]
        if self.layout == "branch_major":
            return (self.num_branches, batch, self.units)
        return (batch, self.num_branches, self.units)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"units": self.units, "num_branches": self.num_branches, "layout": self.layout,
                       "implementation": self.implementation, "use_bias": self.use_bias,
                       "per_domain": self.per_domain,
                       "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                       "bias_initializer": keras.initializers.serialize(self.bias_initializer)})
        return config
