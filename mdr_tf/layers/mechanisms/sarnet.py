"""SAR-Net (Shen et al., "SAR-Net: A Scenario-Aware Ranking Network for Personalized Fair
Recommendation in Hundreds of Travel Scenarios", CIKM 2021): scenario feature
transformation and debias experts.

Equations (``d``: the sample's scenario):

- scenario-specific feature transformation: ``e' = e ⊙ w_d + b_d``;
- debias experts: ``E_i(x) = act(BN(x) K_i + c_i)``, S shared and P specific to each
  scenario;
- multi-scenario gating and fairness coefficient:
  ``h = fc · Σ_i softmax(x G_d + g_d)_i E_i(x)`` over the S shared and d's P experts.

The model (transform → experts → MLP → head) is assembled in ``mdr_tf.models.sarnet``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mdr_tf.layers.routing import gather_domain_params
from mdr_tf.params import mark_per_domain

GATES = ("per_domain", "shared")


@keras.saving.register_keras_serializable(package="mdr_tf")
class ScenarioFeatureTransform(keras.layers.Layer):
    """Per-scenario scale and shift of the embedding: ``e' = e ⊙ w_d + b_d``.

    Args:
      num_domains: D.
      scale_initializer: initializer of ``w_d`` ([D, n]); default ones (identity at
        start, ours; Scenario-Wise-Rec: xavier uniform).
      shift_initializer: initializer of ``b_d`` ([D, n]); default zeros (ours;
        Scenario-Wise-Rec: U(0, 1)).

    Example:
      >>> t = ScenarioFeatureTransform(num_domains=3)
      >>> e2 = t(np.ones((4, 40), "float32"), np.array([0, 1, 2, 0]))  # [4, 40]

    References:
      Shen et al., CIKM 2021, §3.2 (scenario-specific feature transformation).
    """

    def __init__(self, num_domains: int, scale_initializer: Any = "ones", shift_initializer: Any = "zeros",
                 **kwargs):
        super().__init__(**kwargs)
        self.num_domains = int(num_domains)
        self.scale_initializer = keras.initializers.get(scale_initializer)
        self.shift_initializer = keras.initializers.get(shift_initializer)

    def build(self, input_shape):
        n = int(input_shape[-1])
        self.scale = self.add_weight(name="scale", shape=(self.num_domains, n), initializer=self.scale_initializer)
        self.shift = self.add_weight(name="shift", shape=(self.num_domains, n), initializer=self.shift_initializer)
        mark_per_domain(self.scale)
        mark_per_domain(self.shift)
        self.built = True

    def call(self, e, domain):
        return e * gather_domain_params(self.scale, domain) + gather_domain_params(self.shift, domain)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_domains": self.num_domains,
                       "scale_initializer": keras.initializers.serialize(self.scale_initializer),
                       "shift_initializer": keras.initializers.serialize(self.shift_initializer)})
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class ScenarioExperts(keras.layers.Layer):
    """Shared + scenario-specific debias experts mixed by a softmax gate.

    ``E_i(x) = act(BN(x) K_i + c_i)``; for a sample of scenario d the candidates are the
    S shared experts and d's P specific experts, and
    ``h = fc · Σ_i softmax(x G_d + g_d)_i E_i(x)`` over those S + P experts, where ``fc``
    is the sample's fairness coefficient (1 when none is given). ``gate="per_domain"``
    (default): one gate ``G_d, g_d`` per scenario (the paper's *multi-scenario* gating
    module); ``"shared"``: one gate for all scenarios (Scenario-Wise-Rec; scenario-aware
    only through the transformed input ``x``).

    Every scenario's specific experts are computed and the sample's own are selected
    (cheap for the small D of these datasets). In training the shared experts, the
    specific experts and the gate are one matmul each (``[n, D·P·u]``, ``[n, D·(S+P)]``).
    At inference the specific experts and the gate are one matmul per scenario over its
    column block: a scenario's output then does not depend on D, so adding a scenario
    leaves the others' predictions bit-identical (``mdr_tf.onboarding``); the one wide
    matmul rounds differently as D grows. The input BatchNorm ("debias" normalisation) is
    shared by the experts: per-expert BNs on the same input would have identical
    statistics and their affine parts fold into ``K_i``.

    Args:
      num_domains: D.
      num_shared: S shared experts (Scenario-Wise-Rec: 8).
      num_specific: P specific experts per scenario (Scenario-Wise-Rec: 2).
      units: expert output width (Scenario-Wise-Rec: 16).
      activation: expert activation.
      batch_norm: BatchNorm on the expert input.
      bn_momentum, bn_epsilon: BN settings (torch defaults in Keras terms).
      gate: "per_domain" or "shared" (see above).

    Example:
      >>> experts = ScenarioExperts(num_domains=3, num_shared=8, num_specific=2, units=16)
      >>> h = experts(np.zeros((4, 40), "float32"), np.array([0, 1, 2, 0]))  # [4, 16]

    References:
      Shen et al., CIKM 2021, §3.3 (scenario-specific transfer: debias experts and
      multi-scenario gating).
    """

    def __init__(self, num_domains: int, num_shared: int = 8, num_specific: int = 2, units: int = 16,
                 activation: str | None = "relu", batch_norm: bool = True, bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, gate: str = "per_domain", **kwargs):
        super().__init__(**kwargs)
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.gate = gate
        self.num_domains = int(num_domains)
        self.num_shared = int(num_shared)
        self.num_specific = int(num_specific)
        self.units = int(units)
        self.activation = activation
        self.batch_norm = bool(batch_norm)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.act = keras.activations.get(activation)
        self.norm = keras.layers.BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                                    name="bn", dtype=self.dtype_policy) if self.batch_norm else None

    def build(self, input_shape):
        n = int(input_shape[-1])
        D, S, P, u = self.num_domains, self.num_shared, self.num_specific, self.units
        if self.norm is not None:
            self.norm.build((None, n))
        self.shared_kernel = self.add_weight(name="shared_kernel", shape=(n, S * u), initializer="glorot_uniform")
        self.shared_bias = self.add_weight(name="shared_bias", shape=(S * u,), initializer="zeros")
        self.specific_kernel = self.add_weight(name="specific_kernel", shape=(n, D * P * u),
                                               initializer="glorot_uniform")
        self.specific_bias = self.add_weight(name="specific_bias", shape=(D * P * u,), initializer="zeros")
        G = D if self.gate == "per_domain" else 1
        self.gate_kernel = self.add_weight(name="gate_kernel", shape=(n, G * (S + P)), initializer="glorot_uniform")
        self.gate_bias = self.add_weight(name="gate_bias", shape=(G * (S + P),), initializer="zeros")
        per_domain = [self.specific_kernel, self.specific_bias]
        if self.gate == "per_domain":
            per_domain += [self.gate_kernel, self.gate_bias]
        for v in per_domain:
            mark_per_domain(v)
        self.built = True

    def _per_domain_dense(self, x, kernel, bias, width: int, fused: bool = False):
        """``[x K_d + c_d for each domain d]`` over column blocks of ``width`` → [B, D, width]
        (one matmul per block, or one wide matmul if ``fused``)."""
        if fused:
            return ops.reshape(ops.matmul(x, kernel) + bias, [-1, self.num_domains, width])
        return ops.stack([ops.matmul(x, kernel[:, d * width:(d + 1) * width]) + bias[d * width:(d + 1) * width]
                          for d in range(self.num_domains)], axis=1)

    def gate_weights(self, x, domain, training: bool | None = None):
        """Softmax weights over [shared..., own specific...] experts, [B, S + P]."""
        if self.gate == "shared":
            return ops.softmax(ops.matmul(x, self.gate_kernel) + self.gate_bias, axis=-1)
        logits = self._per_domain_dense(x, self.gate_kernel, self.gate_bias, self.num_shared + self.num_specific,
                                        fused=bool(training))
        logits = ops.take_along_axis(logits, ops.reshape(domain, [-1, 1, 1]), axis=1)[:, 0, :]
        return ops.softmax(logits, axis=-1)

    def call(self, x, domain, fairness=None, training: bool | None = None):
        """``x`` [B, n], ``domain`` [B]; ``fairness``: optional fairness coefficient [B, 1]."""
        S, P, u = self.num_shared, self.num_specific, self.units
        xn = self.norm(x, training=training) if self.norm is not None else x
        shared = ops.reshape(self.act(ops.matmul(xn, self.shared_kernel) + self.shared_bias), [-1, S, u])
        spec = self.act(self._per_domain_dense(xn, self.specific_kernel, self.specific_bias, P * u,
                                               fused=bool(training)))  # [B, D, P·u]
        spec = ops.reshape(ops.take_along_axis(spec, ops.reshape(domain, [-1, 1, 1]), axis=1), [-1, P, u])
        experts = ops.concatenate([shared, spec], axis=1)  # [B, S + P, u]
        g = self.gate_weights(x, domain, training=training)
        h = ops.sum(experts * ops.expand_dims(g, -1), axis=1)
        return h if fairness is None else h * ops.cast(fairness, h.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_domains": self.num_domains, "num_shared": self.num_shared,
                       "num_specific": self.num_specific, "units": self.units, "activation": self.activation,
                       "batch_norm": self.batch_norm, "bn_momentum": self.bn_momentum,
                       "bn_epsilon": self.bn_epsilon, "gate": self.gate})
        return config
