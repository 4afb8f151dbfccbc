"""M2M (Zhang et al., WSDM 2022): multi-scenario meta learning with meta attention and meta tower.

Single task, D scenarios (domains):

1. a transformer encoder over each sample's field embeddings (attention within a sample);
2. K experts (MLPs) on the encoded fields: ``E_i [B, h]``;
3. scenario representation ``s = LeakyReLU(Dense(e_s))`` from the domain-side view
   (domain id embedding + domain features);
4. meta attention ``α_i = softmax_i(vᵀ LeakyReLU([E_i ; t] W_meta(s) + b_meta(s)))``,
   ``R = Σ_i α_i E_i``;
5. meta tower, L layers: ``R ← LeakyReLU(R W_l(s) + b_l(s) + R)`` (generated weights +
   residual);
6. logit ``= Dense(1)(R)``.

Every generated weight depends on the sample's own scenario representation only, and the
attentions run over one sample's fields / experts: a sample's prediction never depends
on the other samples of its batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.experts import FieldTransformer, MetaAttention, MetaDense, StackedMLP
from mdr_tf.models.base import MultiDomainModel


@keras.saving.register_keras_serializable(package="mdr_tf")
class M2M(MultiDomainModel):
    """M2M for multi-domain CTR (one task).

    Sizes are ours (small; the paper's are for long behaviour sequences):

    Args:
      schema: ``Schema.to_config()`` dict.
      encoder_layers: transformer encoder layers over the fields (0: no encoder).
      num_heads: attention heads.
      ff_units: encoder feed-forward width.
      num_experts: K (Scenario-Wise-Rec: 4).
      expert_units: expert MLP widths; the last is h (ours: [64, 32]).
      scenario_units: width of the scenario representation s (ours: 16).
      task_dim: width of the learned task embedding t (ours: 16; 0: none).
      attention_units: meta attention width (ours: 16).
      tower_layers: meta tower layers (ours: 2).
      leaky_alpha: LeakyReLU slope everywhere (Scenario-Wise-Rec: 0.1).
      dropout: encoder attention dropout.
      **kwargs: ``MultiDomainModel`` arguments.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        encoder_layers: int = 1,
        num_heads: int = 2,
        ff_units: int = 32,
        num_experts: int = 4,
        expert_units: Sequence[int] = (64, 32),
        scenario_units: int = 16,
        task_dim: int = 16,
        attention_units: int = 16,
        tower_layers: int = 2,
        leaky_alpha: float = 0.1,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(schema, **kwargs)
        self.encoder_layers = int(encoder_layers)
        self.num_heads = int(num_heads)
        self.ff_units = int(ff_units)
        self.num_experts = int(num_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.scenario_units = int(scenario_units)
        self.task_dim = int(task_dim)
        self.attention_units = int(attention_units)
        self.tower_layers = int(tower_layers)
        self.leaky_alpha = float(leaky_alpha)
        self.dropout = float(dropout)
        self.encoder = FieldTransformer(self.encoder_layers, self.num_heads, self.ff_units, self.dropout,
                                        name="encoder") if self.encoder_layers else None
        self.experts = StackedMLP(self.num_experts, self.expert_units, activation="leaky_relu",
                                  negative_slope=self.leaky_alpha, name="experts")
        self.scenario = keras.layers.Dense(self.scenario_units, name="scenario")
        self.meta_attention = MetaAttention(self.attention_units, self.scenario_units, self.task_dim,
                                            self.leaky_alpha, name="meta_attention")
        h = self.expert_units[-1]
        self.meta_tower = [MetaDense(h, self.scenario_units, name=f"meta_tower_{i}") for i in range(self.tower_layers)]
        self.head = keras.layers.Dense(1, name="head")

    def scenario_representation(self, ctx):
        """s [B, scenario_units] from the domain-side view."""
        return ops.leaky_relu(self.scenario(ctx["domain_side"]), self.leaky_alpha)

    def compute_logit(self, inputs, ctx, training=None):
        fields = ctx["fields"]
        if self.encoder is not None:
            fields = self.encoder(fields, training=training)
        f, d = fields.shape[-2], fields.shape[-1]
        x = ops.concatenate([ops.reshape(fields, (-1, f * d)), ctx["dense"]], axis=1)
        experts = ops.transpose(self.experts(x, training=training), (1, 0, 2))  # [B, K, h]
        s = self.scenario_representation(ctx)
        r = self.meta_attention(experts, s)
        for layer in self.meta_tower:
            r = ops.leaky_relu(layer(r, s) + r, self.leaky_alpha)
        return self.head(r)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "encoder_layers": self.encoder_layers, "num_heads": self.num_heads, "ff_units": self.ff_units,
            "num_experts": self.num_experts, "expert_units": self.expert_units,
            "scenario_units": self.scenario_units, "task_dim": self.task_dim,
            "attention_units": self.attention_units, "tower_layers": self.tower_layers,
            "leaky_alpha": self.leaky_alpha, "dropout": self.dropout,
        })
        return config
