"""SAR-Net (Shen et al., "SAR-Net: A Scenario-Aware Ranking Network for Personalized
Fair Recommendation in Hundreds of Travel Scenarios", CIKM 2021).

Implemented parts: the scenario-specific feature transformation, shared and
scenario-specific debias experts mixed by a multi-scenario gate, the fairness
coefficient that re-weights the experts' predictions per sample, and the final MLP. Not
implemented: the cross-scenario behaviour attention (the datasets here have no
behaviour-sequence features; Scenario-Wise-Rec omits it too).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.mechanisms.sarnet import GATES, ScenarioExperts, ScenarioFeatureTransform  # noqa: F401
from mdr_tf.layers.mlp import DomainMLP
from mdr_tf.models.base import MultiDomainModel


def _initializer_config(init: Any) -> Any:
    """A JSON-able initializer: names stay names, objects are serialised."""
    return init if init is None or isinstance(init, (str, dict)) else keras.initializers.serialize(init)


@keras.saving.register_keras_serializable(package="mdr_tf")
class SARNetModel(MultiDomainModel):
    """SAR-Net: ``e' = e ⊙ w_d + b_d``; ``h = fc · Σ_i g_{d,i}(e') E_i(e')`` over shared
    and d-specific debias experts; ``logit = MLP(h)``.

    Args:
      schema: ``Schema.to_config()`` dict.
      num_shared_experts, num_specific_experts, expert_units, expert_activation,
        expert_batch_norm: see ``ScenarioExperts`` (defaults: Scenario-Wise-Rec 8, 2, 16;
        activation ReLU, ours — Scenario-Wise-Rec's experts are linear, ``None``).
      gate: "per_domain" (default, one gate per scenario) or "shared" (Scenario-Wise-Rec).
      fairness_feature: name of a dense feature holding each sample's fairness
        coefficient ``fc`` (the paper's FC, computed upstream from the manual exposure
        intervention), which re-weights the experts' prediction; None (default): fc = 1
        (no dataset here records interventions). The feature also stays in ``e``.
      hidden_units: final MLP widths before the 1-unit head (Scenario-Wise-Rec [32, 32]).
      activation: final MLP activation.
      scale_initializer, shift_initializer: see ``ScenarioFeatureTransform``.
      **kwargs: ``MultiDomainModel`` arguments.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        num_shared_experts: int = 8,
        num_specific_experts: int = 2,
        expert_units: int = 16,
        expert_activation: str = "relu",
        expert_batch_norm: bool = True,
        hidden_units: Sequence[int] = (32, 32),
        activation: str = "relu",
        scale_initializer: Any = "ones",
        shift_initializer: Any = "zeros",
        gate: str = "per_domain",
        fairness_feature: str | None = None,
        **kwargs,
    ):
        super().__init__(schema, **kwargs)
        if fairness_feature is not None:
            dense = [f.name for f in self.schema.dense]
            if fairness_feature not in dense:
                raise ValueError(f"fairness_feature {fairness_feature!r} must be a dense feature of the schema; "
                                 f"dense features: {dense}")
        self.gate = gate
        self.fairness_feature = fairness_feature
        self.num_shared_experts = int(num_shared_experts)
        self.num_specific_experts = int(num_specific_experts)
        self.expert_units = int(expert_units)
        self.expert_activation = expert_activation
        self.expert_batch_norm = bool(expert_batch_norm)
        self.hidden_units = [int(u) for u in hidden_units]
        self.activation = activation
        self.scale_initializer = scale_initializer
        self.shift_initializer = shift_initializer
        self.transform = ScenarioFeatureTransform(self.num_domains, scale_initializer, shift_initializer,
                                                  name="transform", dtype=self.dtype_policy)
        self.experts = ScenarioExperts(self.num_domains, self.num_shared_experts, self.num_specific_experts,
                                       self.expert_units, expert_activation, self.expert_batch_norm,
                                       gate=gate, name="experts", dtype=self.dtype_policy)
        self.mlp = DomainMLP(self.hidden_units, num_domains=self.num_domains, context_dims=self.context_dims,
                             activation=activation, name="mlp", dtype=self.dtype_policy)
        self.head = keras.layers.Dense(1, name="head", dtype=self.dtype_policy)

    def compute_logit(self, inputs, ctx, training=None):
        e = self.transform(ctx["all"], ctx["domain"])
        fc = None
        if self.fairness_feature is not None:
            fc = ops.reshape(ops.cast(inputs[self.fairness_feature], e.dtype), [-1, 1])
        h = self.experts(e, ctx["domain"], fc, training=training)
        return self.head(self.mlp(h, ctx, training=training))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "num_shared_experts": self.num_shared_experts, "num_specific_experts": self.num_specific_experts,
            "expert_units": self.expert_units, "expert_activation": self.expert_activation,
            "expert_batch_norm": self.expert_batch_norm, "hidden_units": self.hidden_units,
            "activation": self.activation, "scale_initializer": _initializer_config(self.scale_initializer),
            "shift_initializer": _initializer_config(self.shift_initializer), "gate": self.gate,
            "fairness_feature": self.fairness_feature,
        })
        return config
