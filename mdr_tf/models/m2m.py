"""M2M (Zhang et al., WSDM 2022): multi-scenario meta learning with meta attention and meta tower.

Single task, D scenarios (domains):

1. a transformer encoder over each sample's **field embeddings** (attention within a
   sample, across its F fields). The paper encodes advertiser behaviour / performance
   *sequences*; the datasets here have no sequence features, so the encoder runs over
   the fields instead (Scenario-Wise-Rec feeds the flat [B, n] embedding to torch's
   Transformer, which then attends across the batch: not reproduced);
2. K experts (MLPs) on the encoded fields: ``E_i [B, h]``;
3. scenario representation ``s = LeakyReLU(Dense_s(e_s))`` and task representation
   ``t = LeakyReLU(Dense_t(e_s))``, both from the scenario embedding ``e_s`` (domain id
   embedding + domain features; Scenario-Wise-Rec's ``scenario_mlp`` / ``task_mlp`` on
   the domain embedding);
4. meta attention ``α_i = softmax_i(vᵀ MetaUnit_s([E_i ; t]))``, ``R = Σ_i α_i E_i``;
5. meta tower, L layers: ``R ← LeakyReLU(R W_l(s) + b_l(s) + R)`` (generated weights +
   residual);
6. output MLP (Scenario-Wise-Rec [64, 32]) and ``logit = Dense(1)``.

Every generated weight depends on the sample's own scenario representation only, and the
attentions run over one sample's fields / experts: a sample's prediction never depends
on the other samples of its batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.experts import StackedMLP
from mdr_tf.layers.mechanisms.m2m import FieldTransformer, MetaAttention, MetaDense
from mdr_tf.layers.mlp import DomainMLP
from mdr_tf.models.base import MultiDomainModel

TASK_SOURCES = ("scenario", "learned", "none")


@keras.saving.register_keras_serializable(package="mdr_tf")
class M2M(MultiDomainModel):
    """M2M for multi-domain CTR (one task).

    Args:
      schema: ``Schema.to_config()`` dict.
      encoder_layers: transformer encoder layers over the fields (0: no encoder).
      num_heads: attention heads.
      ff_units: encoder feed-forward width.
      num_experts: K (Scenario-Wise-Rec: 4).
      expert_units: expert MLP widths; the last is h (ours: [64, 32]).
      scenario_units: width of the scenario representation s (ours: 16; SWR: 16).
      task_dim: width of the task representation t (ours: 16; SWR: 16).
      task_source: "scenario" (default: ``t = LeakyReLU(Dense(e_s))``, SWR), "learned"
        (a learned constant vector) or "none" (no task input).
      attention_units: meta attention width (ours: 16).
      meta_unit_layers: depth of the meta attention's meta unit (SWR: 1).
      tower_layers: meta tower layers (SWR: 1).
      output_units: output MLP widths before the 1-unit head (SWR: [64, 32]; () = none).
      leaky_alpha: LeakyReLU slope of the meta parts (Scenario-Wise-Rec: 0.1).
      output_activation: activation of the output MLP (SWR's ``MLP`` default: relu).
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
        task_source: str = "scenario",
        attention_units: int = 16,
        meta_unit_layers: int = 1,
        tower_layers: int = 1,
        output_units: Sequence[int] = (64, 32),
        leaky_alpha: float = 0.1,
        output_activation: str = "relu",
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(schema, **kwargs)
        if task_source not in TASK_SOURCES:
            raise ValueError(f"task_source must be one of {TASK_SOURCES}, got {task_source!r}")
        self.reject_interest("M2M reads per-field embeddings, not the backbone input ctx['all']")
        self.encoder_layers = int(encoder_layers)
        self.num_heads = int(num_heads)
        self.ff_units = int(ff_units)
        self.num_experts = int(num_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.scenario_units = int(scenario_units)
        self.task_source = task_source
        self.task_dim = 0 if task_source == "none" else int(task_dim)
        self.attention_units = int(attention_units)
        self.meta_unit_layers = int(meta_unit_layers)
        self.tower_layers = int(tower_layers)
        self.output_units = [int(u) for u in output_units]
        self.leaky_alpha = float(leaky_alpha)
        self.output_activation = output_activation
        self.dropout = float(dropout)
        self.encoder = FieldTransformer(self.encoder_layers, self.num_heads, self.ff_units, self.dropout,
                                        name="encoder", dtype=self.dtype_policy) if self.encoder_layers else None
        self.experts = StackedMLP(self.num_experts, self.expert_units, activation="leaky_relu",
                                  negative_slope=self.leaky_alpha, name="experts", dtype=self.dtype_policy)
        self.scenario = keras.layers.Dense(self.scenario_units, name="scenario", dtype=self.dtype_policy)
        self.task = keras.layers.Dense(self.task_dim, name="task", dtype=self.dtype_policy) \
            if task_source == "scenario" and self.task_dim else None
        self.meta_attention = MetaAttention(self.attention_units, self.scenario_units, self.task_dim,
                                            self.leaky_alpha, learned_task=task_source == "learned",
                                            meta_layers=self.meta_unit_layers, name="meta_attention",
                                            dtype=self.dtype_policy)
        h = self.expert_units[-1]
        self.meta_tower = [MetaDense(h, self.scenario_units, name=f"meta_tower_{i}", dtype=self.dtype_policy)
                           for i in range(self.tower_layers)]
        self.output_mlp = DomainMLP(self.output_units, num_domains=self.num_domains, context_dims=self.context_dims,
                                    activation=output_activation, name="output_mlp",
                                    dtype=self.dtype_policy) if self.output_units else None
        self.head = keras.layers.Dense(1, name="head", dtype=self.dtype_policy)

    def scenario_representation(self, ctx):
        """s [B, scenario_units] from the scenario embedding (domain-side view)."""
        return ops.leaky_relu(self.scenario(ctx["domain_side"]), self.leaky_alpha)

    def task_representation(self, ctx):
        """t [B, task_dim] from the scenario embedding (``task_source="scenario"``), else None."""
        if self.task is None:
            return None
        return ops.leaky_relu(self.task(ctx["domain_side"]), self.leaky_alpha)

    def compute_logit(self, inputs, ctx, training=None):
        fields = ctx["fields"]
        if self.encoder is not None:
            fields = self.encoder(fields, training=training)
        f, d = fields.shape[-2], fields.shape[-1]
        x = ops.concatenate([ops.reshape(fields, (-1, f * d)), ctx["dense"]], axis=1)
        experts = ops.transpose(self.experts(x, training=training), (1, 0, 2))  # [B, K, h]
        s = self.scenario_representation(ctx)
        r = self.meta_attention(experts, s, self.task_representation(ctx))
        for layer in self.meta_tower:
            r = ops.leaky_relu(layer(r, s) + r, self.leaky_alpha)
        if self.output_mlp is not None:
            r = self.output_mlp(r, ctx, training=training)
        return self.head(r)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "encoder_layers": self.encoder_layers, "num_heads": self.num_heads, "ff_units": self.ff_units,
            "num_experts": self.num_experts, "expert_units": self.expert_units,
            "scenario_units": self.scenario_units, "task_dim": self.task_dim, "task_source": self.task_source,
            "attention_units": self.attention_units, "meta_unit_layers": self.meta_unit_layers,
            "tower_layers": self.tower_layers, "output_units": self.output_units,
            "leaky_alpha": self.leaky_alpha, "output_activation": self.output_activation, "dropout": self.dropout,
        })
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        # Configs saved before issue 13 (learned task vector, no output MLP) load as trained.
        config = dict(config)
        config.setdefault("task_source", "learned")
        config.setdefault("output_units", [])
        return cls(**config)
