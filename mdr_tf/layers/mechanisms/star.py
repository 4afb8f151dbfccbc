"""STAR (Sheng et al., CIKM 2021): partitioned normalisation and star-topology dense layers.

- Partitioned normalisation (PN):
  ``z' = (γ ⊙ γ_d) ⊙ (z − μ) / sqrt(σ² + ε) + (β + β_d)``; training uses the batch
  moments (per domain when a batch mixes domains), inference the domain's moving
  ``μ_d, σ²_d``.
- Star-topology FCN: ``W*_d = W ⊙ W_d``, ``b*_d = b + b_d``, ``h' = φ(h W*_d + b*_d)``.

``StarDense`` is a registered dense block, so ``BackboneModel(block="star")`` puts star
topology layers into any backbone's deep part.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mdr_tf.layers.blocks import DenseBlock, register_block
from mdr_tf.layers.routing import domain_dense
from mdr_tf.params import mark_per_domain


@keras.saving.register_keras_serializable(package="mdr_tf")
class PartitionedNorm(keras.layers.Layer):
    """STAR's partitioned normalisation (Sheng et al., CIKM 2021, §4.2).

    ``z' = (γ ⊙ γ_d) ⊙ (z − μ) / sqrt(σ² + ε) + (β + β_d)`` with shared ``γ, β`` and
    per-domain ``γ_d, β_d``. In training, ``μ, σ²`` are the batch moments of the
    sample's own domain: a mixed batch is normalised per domain with masked moments
    (segment means of ``z`` and ``z²``; biased variance, as Keras BN), and only the
    moving statistics of domains present in the batch are updated
    (``m_d ← momentum · m_d + (1 − momentum) · μ_d``). At inference each sample uses its
    domain's moving ``μ_d, σ²_d``. With single-domain batches this is exactly the
    paper's / MLoRA-TF's PN.

    Args:
      num_domains: number of domains D.
      momentum: moving-average momentum (MLoRA TF STAR: 0.99).
      epsilon: ε (MLoRA TF STAR: 1e-3).
    """

    def __init__(self, num_domains: int, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = int(num_domains)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        d = self.num_domains
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")
        self.gamma_d = self.add_weight(name="gamma_d", shape=(d, dim), initializer="ones")
        self.beta_d = self.add_weight(name="beta_d", shape=(d, dim), initializer="zeros")
        # The moving statistics stay float32 under a mixed policy (no autocast), as Keras' BN.
        self.moving_mean = self.add_weight(name="moving_mean", shape=(d, dim), initializer="zeros",
                                           trainable=False, autocast=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(d, dim), initializer="ones",
                                               trainable=False, autocast=False)
        for v in (self.gamma_d, self.beta_d, self.moving_mean, self.moving_variance):
            mark_per_domain(v)
        self.built = True

    def domain_moments(self, z, domain):
        """Per-domain batch moments: (mean [D, n], biased variance [D, n], count [D])."""
        z32 = ops.cast(z, "float32")
        d = self.num_domains
        count = ops.segment_sum(ops.ones_like(domain, dtype="float32"), domain, num_segments=d)
        denom = ops.maximum(count, 1.0)[:, None]
        mean = ops.segment_sum(z32, domain, num_segments=d) / denom
        ex2 = ops.segment_sum(ops.square(z32), domain, num_segments=d) / denom
        var = ops.maximum(ex2 - ops.square(mean), 0.0)
        return mean, var, count

    def call(self, z, domain, training: bool | None = None):
        domain = ops.cast(domain, "int32")
        if training:
            mean, var, count = self.domain_moments(z, domain)
            present = (count > 0)[:, None]
            m = self.momentum
            self.moving_mean.assign(ops.where(present, m * self.moving_mean + (1 - m) * mean, self.moving_mean))
            self.moving_variance.assign(ops.where(present, m * self.moving_variance + (1 - m) * var,
                                                  self.moving_variance))
        else:
            mean, var = self.moving_mean, self.moving_variance
        mu = ops.cast(ops.take(mean, domain, axis=0), z.dtype)
        inv = ops.cast(ops.rsqrt(ops.take(var, domain, axis=0) + self.epsilon), z.dtype)
        scale = self.gamma * ops.take(self.gamma_d, domain, axis=0)
        shift = self.beta + ops.take(self.beta_d, domain, axis=0)
        return scale * (z - mu) * inv + shift

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_domains": self.num_domains, "momentum": self.momentum, "epsilon": self.epsilon})
        return config


@register_block("star")
class StarDense(DenseBlock):
    """STAR's star-topology dense layer: ``y = x (W ⊙ W_d) + (b + b_d)`` (pre-activation).

    ``W, b`` are the shared (centre) weights, ``W_d, b_d`` the domain's own. Routing: the
    D effective kernels ``W ⊙ W_d`` are formed once per batch and applied with
    ``mdr_tf.layers.routing.domain_dense`` (default "bucket": rows grouped into
    per-domain tiles, one batched matmul with each tile's kernel — about (B + D·32)/B
    of a shared layer's work instead of D times; the fastest measured on CPU for D = 3
    and 10, see ``docs/models/baselines_a.md``).

    Args:
      specific_initializer: initializer of ``W_d``. Default "ones" (ours: the
        effective kernel starts equal to the glorot-initialised shared ``W``; the
        MLoRA TF code initialises ``W_d`` glorot-uniform too, which shrinks the
        effective weights' scale by a factor ~fan-in).
      routing: "bucket" | "stacked" | "masked" | "gather" | "partition" (see
        ``domain_dense``; "partition" is not XLA-compilable).
      **kwargs: ``DenseBlock`` arguments.
    """

    def __init__(self, units: int, specific_initializer: Any = "ones", routing: str = "bucket", **kwargs):
        super().__init__(units, **kwargs)
        self.specific_initializer = keras.initializers.get(specific_initializer)
        self.routing = routing

    def build(self, input_shape):
        super().build(input_shape)
        d = self.num_domains
        self.kernel_d = self.add_weight(name="kernel_d", shape=(d, self.input_dim, self.units),
                                        initializer=self.specific_initializer)
        self.bias_d = self.add_weight(name="bias_d", shape=(d, self.units), initializer="zeros")
        mark_per_domain(self.kernel_d)
        mark_per_domain(self.bias_d)

    def effective_kernels(self):
        """``W ⊙ W_d`` for every domain: [D, n, u]."""
        return self.kernel[None] * self.kernel_d

    def effective_biases(self):
        """``b + b_d`` for every domain: [D, u]."""
        return self.bias_d + self.bias if self.bias is not None else self.bias_d

    def call(self, x, ctx: dict | None = None, training: bool | None = None):
        if ctx is None or "domain" not in ctx:
            raise ValueError("StarDense needs ctx['domain']")
        return domain_dense(x, self.effective_kernels(), self.effective_biases(), ctx["domain"], self.routing)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"specific_initializer": keras.initializers.serialize(self.specific_initializer),
                       "routing": self.routing})
        return config
