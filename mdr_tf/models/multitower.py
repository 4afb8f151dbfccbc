"""Tower-per-domain baselines: Shared-Bottom, MMoE, PLE (domains play the role of tasks).

Every model ends in one tower per domain; each sample's logit comes from its own
domain's tower, routed by ``StackedMLP`` (default "auto": "bucket" — rows grouped into
per-domain tiles, each tile through its domain's tower; with BatchNorm "stacked" — all D
towers on the whole batch, then each sample's row is selected, as the references do).

Default sizes are ours for ML-100k-scale data (the Scenario-Wise-Rec ML scripts use
experts [16] and towers [8]):

- Shared-Bottom: bottom [128, 64], towers [32];
- MMoE: 4 experts [64], per-domain gates, towers [32];
- PLE: 1 CGC level, 2 specific experts per domain + 1 shared, experts [64], towers [32].

BatchNorm in experts / bottom / towers and before the gate softmax (the references'
Linear → BN → Softmax) is off by default and switched on with ``batch_norm`` /
``gate_batch_norm`` (reference parity).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.experts import StackedMLP, mix_experts
from mdr_tf.layers.mechanisms.ple import CGCLevel
from mdr_tf.layers.mlp import DomainMLP
from mdr_tf.models.base import MultiDomainModel


class _TowerModel(MultiDomainModel):
    """Shared arguments and the per-domain towers of the three models."""

    def __init__(
        self,
        schema: dict[str, Any],
        tower_units: Sequence[int] = (32,),
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        routing: str = "auto",
        **kwargs,
    ):
        super().__init__(schema, **kwargs)
        self.tower_units = [int(u) for u in tower_units]
        self.activation = activation
        self.batch_norm = bool(batch_norm)
        self.dropout = float(dropout)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.routing = routing
        self.towers = StackedMLP(self.num_domains, self.tower_units, output_units=1, activation=activation,
                                 batch_norm=self.batch_norm, dropout=self.dropout, bn_momentum=self.bn_momentum,
                                 bn_epsilon=self.bn_epsilon, routing=routing, per_domain=True, name="towers",
                                 dtype=self.dtype_policy)

    def tower_logit(self, h, ctx, training=None):
        return self.towers(h, ctx["domain"], training=training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"tower_units": self.tower_units, "activation": self.activation,
                       "batch_norm": self.batch_norm, "dropout": self.dropout, "bn_momentum": self.bn_momentum,
                       "bn_epsilon": self.bn_epsilon, "routing": self.routing})
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class SharedBottom(_TowerModel):
    """Shared-Bottom (Caruana 1997), domains as tasks: ``ŷ = σ(Tower_{s}(MLP_bottom(e)))``.

    Args:
      schema: ``Schema.to_config()`` dict.
      bottom_units: shared bottom MLP widths (ours: [128, 64]).
      tower_units: per-domain tower widths before the 1-unit output (ours: [32]).
      activation, batch_norm, dropout, bn_momentum, bn_epsilon: MLP options.
      routing: tower / gate routing ("auto" | "bucket" | "stacked" | "masked" | "gather";
        "auto": "bucket", or "stacked" with BatchNorm).
      **kwargs: ``MultiDomainModel`` arguments.
    """

    def __init__(self, schema: dict[str, Any], bottom_units: Sequence[int] = (128, 64), **kwargs):
        super().__init__(schema, **kwargs)
        self.bottom_units = [int(u) for u in bottom_units]
        self.bottom = DomainMLP(self.bottom_units, num_domains=self.num_domains, context_dims=self.context_dims,
                                activation=self.activation, batch_norm=self.batch_norm, bn_momentum=self.bn_momentum,
                                bn_epsilon=self.bn_epsilon, dropout=self.dropout, name="bottom",
                                dtype=self.dtype_policy)

    def compute_logit(self, inputs, ctx, training=None):
        return self.tower_logit(self.bottom(ctx["all"], ctx, training=training), ctx, training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"bottom_units": self.bottom_units})
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class MMoE(_TowerModel):
    """MMoE (Ma et al., KDD 2018), domains as tasks.

    ``E_i(e)`` for i = 1..n; ``g_d(e) = softmax(e G_d + c_d (→ BN))`` over experts;
    ``h = Σ_i g_{s,i}(e) E_i(e)`` with the sample's own domain's gate; ``ŷ = σ(Tower_s(h))``.

    Args:
      schema: ``Schema.to_config()`` dict.
      num_experts: shared experts (ours: 4; Scenario-Wise-Rec uses D).
      expert_units: expert MLP widths (ours: [64]).
      gate_batch_norm: BN between the gate's linear layer and the softmax (reference).
      tower_units, activation, batch_norm, dropout, bn_momentum, bn_epsilon, routing:
        see ``SharedBottom``.
      **kwargs: ``MultiDomainModel`` arguments.
    """

    def __init__(self, schema: dict[str, Any], num_experts: int = 4, expert_units: Sequence[int] = (64,),
                 gate_batch_norm: bool = False, **kwargs):
        super().__init__(schema, **kwargs)
        self.num_experts = int(num_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.gate_batch_norm = bool(gate_batch_norm)
        self.experts = StackedMLP(self.num_experts, self.expert_units, activation=self.activation,
                                  batch_norm=self.batch_norm, dropout=self.dropout, bn_momentum=self.bn_momentum,
                                  bn_epsilon=self.bn_epsilon, name="experts", dtype=self.dtype_policy)
        self.gates = StackedMLP(self.num_domains, [self.num_experts], activation="linear",
                                batch_norm=self.gate_batch_norm, bn_momentum=self.bn_momentum,
                                bn_epsilon=self.bn_epsilon, routing="auto" if self.gate_batch_norm else self.routing,
                                per_domain=True, name="gates", dtype=self.dtype_policy)

    def gate_weights(self, ctx, training=None):
        """Each sample's own domain's gate weights [B, n_experts] (rows sum to 1)."""
        return ops.softmax(self.gates(ctx["all"], ctx["domain"], training=training), axis=-1)

    def compute_logit(self, inputs, ctx, training=None):
        experts = self.experts(ctx["all"], training=training)  # [E, B, u]
        h = mix_experts(self.gate_weights(ctx, training), experts)
        return self.tower_logit(h, ctx, training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_experts": self.num_experts, "expert_units": self.expert_units,
                       "gate_batch_norm": self.gate_batch_norm})
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class PLE(_TowerModel):
    """PLE (Tang et al., RecSys 2020), domains as tasks: ``num_levels`` CGC levels, towers.

    Domain d's gate mixes only its own specific experts and the shared experts
    (``CGCLevel``); intermediate levels also carry a shared branch whose gate spans all
    experts. ``ŷ = σ(Tower_s(h_s))`` with h_s the last level's output of the sample's
    domain.

    Args:
      schema: ``Schema.to_config()`` dict.
      num_levels: CGC levels (Scenario-Wise-Rec: 1).
      num_specific: specific experts per domain (2).
      num_shared: shared experts (1).
      expert_units: expert MLP widths (ours: [64]).
      gate_batch_norm: BN between each gate's linear layer and the softmax (reference).
      tower_units, activation, batch_norm, dropout, bn_momentum, bn_epsilon, routing:
        see ``SharedBottom``.
      **kwargs: ``MultiDomainModel`` arguments.
    """

    def __init__(self, schema: dict[str, Any], num_levels: int = 1, num_specific: int = 2, num_shared: int = 1,
                 expert_units: Sequence[int] = (64,), gate_batch_norm: bool = False, **kwargs):
        super().__init__(schema, **kwargs)
        self.num_levels = int(num_levels)
        self.num_specific = int(num_specific)
        self.num_shared = int(num_shared)
        self.expert_units = [int(u) for u in expert_units]
        self.gate_batch_norm = bool(gate_batch_norm)
        if self.num_levels < 1 or self.num_specific + self.num_shared < 1:
            raise ValueError("PLE needs num_levels >= 1 and at least one expert")
        self.levels = [
            CGCLevel(self.num_domains, self.num_specific, self.num_shared, self.expert_units,
                     last=i == self.num_levels - 1, activation=self.activation, batch_norm=self.batch_norm,
                     gate_batch_norm=self.gate_batch_norm, dropout=self.dropout, bn_momentum=self.bn_momentum,
                     bn_epsilon=self.bn_epsilon, name=f"cgc_{i}", dtype=self.dtype_policy)
            for i in range(self.num_levels)]

    def compute_logit(self, inputs, ctx, training=None):
        h = ctx["all"]
        for level in self.levels[:-1]:
            h = level(h, training=training)  # [D + 1, B, u]
        h = self.levels[-1](h, ctx["domain"], training=training)  # the sample's own domain's output [B, u]
        return self.tower_logit(h, ctx, training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_levels": self.num_levels, "num_specific": self.num_specific,
                       "num_shared": self.num_shared, "expert_units": self.expert_units,
                       "gate_batch_norm": self.gate_batch_norm})
        return config
