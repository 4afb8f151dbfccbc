"""PEPNet = EPNet (embedding gate from the domain side) + PPNet (per-layer gates from ids).

Chang et al., "PEPNet: Parameter and Embedding Personalized Network for Infusing with
Personalized Prior Information", KDD 2023. Single task here, so one tower.

The registry's "pepnet" is ``BackboneModel(input_hook="epnet", hook="ppnet")`` (EPNet as
an input hook, ``mdr_tf.layers.mechanisms.pepnet``), equal to this class's default and
usable on every backbone; this class keeps the gate-layout variants ("after",
"before"), EPNet / PPNet alone, and loads the models saved with it.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras

from mdr_tf.layers.embedding import FeatureEmbedding
from mdr_tf.layers.mechanisms.gates import EPNet
from mdr_tf.layers.mechanisms.pepnet import gate_schema_config  # noqa: F401  (also re-exported here)
from mdr_tf.layers.mlp import DomainMLP
from mdr_tf.models.base import MultiDomainModel

GATE_POSITIONS = ("paper", "after", "before")


@keras.saving.register_keras_serializable(package="mdr_tf")
class PEPNetModel(MultiDomainModel):
    """EPNet on the embedding, PPNet gates in the MLP, linear head.

    - EPNet: ``e' = GateNU(E_g(F_d) ⊕ ⊘(e)) ⊙ e`` with ``e = ctx["all"]`` (``⊘`` =
      stop-gradient) and ``E_g(F_d)`` the domain-side features (domain id + group
      "domain") embedded in the gates' **own** table.
    - PPNet (layout "paper", default): ``h_{l+1} = f((δ_l ⊙ h_l) W_l + b_l)`` for every
      layer including the output layer, ``δ_l = GateNU_l(E_g(ids) ⊕ ⊘(e'))``: L + 1
      gates for L hidden layers; ``E_g(ids)`` (user / item id embeddings) again from the
      gates' own table.
    - ``logit = (δ_L ⊙ h_L) w + b``.

    With ``gate_embeddings=True`` (default) no gradient that flows back through a gate
    reaches a row of the main embedding table: the main table is trained by the main
    path only, the gate table by the gates only (paper; Scenario-Wise-Rec's EPNet keeps
    separate scenario / agnostic tables, FuxiCTR's PPNet its own ``gate_embed_layer``).

    Args:
      schema: ``Schema.to_config()`` dict.
      hidden_units: MLP widths (default 128-64-32, the MI-DPG setup).
      use_epnet: apply EPNet (False: "ppnet" alone).
      use_ppnet: apply PPNet gates (False: "epnet" alone, a plain MLP on ``e'``).
      epnet_granularity: "dimension" (a gate per element of ``e``, the paper's
        ``δ_domain`` has the width of ``E``) or "field" (a gate per field).
      epnet_hidden_units: EPNet GateNU hidden width (None: its output width).
      ppnet_hidden_units: PPNet GateNU hidden width (None: the gated layer's width).
      ppnet_gate_position: "paper" (default: gate the input of every layer including the
        output layer, L + 1 gates; the paper's equation and MMLRec's ``PPNetBlock``),
        "after" (gate each hidden layer's output after its activation, L gates; FuxiCTR's
        PPNet, whose output layer is ungated) or "before" (gate the input of each hidden
        layer, L gates, output layer ungated).
      ppnet_context_key: ctx view concatenated (stop-gradient) to the ids in the PPNet
        gate input; "all" is the EPNet output when EPNet is on; None = ids only.
      gate_embeddings: the gates read their own embedding table (default); False reuses
        the main table's rows (``ctx["domain_side"]``, ``ctx["ids"]``), so gate gradients
        also train the main path's rows.
      gamma: γ of every GateNU (2).
      activation, batch_norm, dropout: MLP options.
      **kwargs: ``MultiDomainModel`` arguments.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        hidden_units: Sequence[int] = (128, 64, 32),
        use_epnet: bool = True,
        use_ppnet: bool = True,
        epnet_granularity: str = "dimension",
        epnet_hidden_units: int | None = None,
        ppnet_hidden_units: int | None = None,
        ppnet_gate_position: str = "paper",
        ppnet_context_key: str | None = "all",
        gate_embeddings: bool = True,
        gamma: float = 2.0,
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(schema, **kwargs)
        if ppnet_gate_position not in GATE_POSITIONS:
            raise ValueError(f"ppnet_gate_position must be one of {GATE_POSITIONS}, got {ppnet_gate_position!r}")
        self.hidden_units = [int(u) for u in hidden_units]
        if not self.hidden_units:
            raise ValueError("PEPNetModel needs at least one hidden layer (hidden_units)")
        self.use_epnet = bool(use_epnet)
        if self.use_epnet:
            self.reject_interest("EPNet gates the field embeddings of ctx['all'] one by one (use_epnet=False works)")
        self.use_ppnet = bool(use_ppnet)
        self.epnet_granularity = epnet_granularity
        self.epnet_hidden_units = None if epnet_hidden_units is None else int(epnet_hidden_units)
        self.ppnet_hidden_units = None if ppnet_hidden_units is None else int(ppnet_hidden_units)
        self.ppnet_gate_position = ppnet_gate_position
        self.ppnet_context_key = ppnet_context_key
        self.gate_embeddings = bool(gate_embeddings)
        self.gamma = float(gamma)
        self.activation = activation
        self.batch_norm = bool(batch_norm)
        self.dropout = float(dropout)
        dims = dict(self.context_dims)
        if self.gate_embeddings:
            self.gate_embedding = FeatureEmbedding(
                gate_schema_config(self.schema, self.use_epnet, self.use_ppnet), embedding_dim=self.embedding_dim,
                embed_domain=True, embeddings_initializer=keras.initializers.get(self.embeddings_initializer),
                embeddings_regularizer=keras.regularizers.L2(self.embedding_l2 / 2) if self.embedding_l2 else None,
                name="gate_embedding", dtype=self.dtype_policy)
            gdims = self.gate_embedding.output_dims
            dims.update({"gate_side": gdims["domain_side"], "gate_ids": gdims["ids"]})
        self.side_key = "gate_side" if self.gate_embeddings else "domain_side"
        self.ids_key = "gate_ids" if self.gate_embeddings else "ids"
        if self.use_epnet:
            self.epnet = EPNet(self.embedding.num_fields, self.embedding_dim, num_dense=len(self.schema.dense),
                               granularity=epnet_granularity, hidden_units=self.epnet_hidden_units,
                               gamma=self.gamma, name="epnet", dtype=self.dtype_policy)
        hook_kwargs: dict[str, Any] = {}
        n = len(self.hidden_units)
        if self.use_ppnet:
            on_input = ppnet_gate_position in ("paper", "before")
            positions = {"paper": list(range(n)), "after": list(range(n)), "before": list(range(n - 1))}
            hook_kwargs = {
                "hook": "ppnet",
                "hook_config": {"id_key": self.ids_key, "context_key": ppnet_context_key,
                                "hidden_units": self.ppnet_hidden_units, "gamma": self.gamma},
                "hook_positions": positions[ppnet_gate_position],
                "hook_on_input": on_input,
            }
        self.deep = DomainMLP(self.hidden_units, num_domains=self.num_domains, context_dims=dims,
                              activation=activation, batch_norm=self.batch_norm, dropout=self.dropout,
                              name="deep", dtype=self.dtype_policy, **hook_kwargs)
        self.head = keras.layers.Dense(1, name="head", dtype=self.dtype_policy)

    def gate_context(self, inputs, ctx):
        """``ctx`` with the gates' views: ``gate_side`` / ``gate_ids`` from the gate table."""
        if not self.gate_embeddings:
            return ctx
        g = self.gate_embedding(inputs)
        return {**ctx, "gate_side": g["domain_side"], "gate_ids": g["ids"]}

    def compute_logit(self, inputs, ctx, training=None):
        ctx = self.gate_context(inputs, ctx)
        e = ctx["all"]
        if self.use_epnet:
            e = self.epnet([e, ctx[self.side_key]])
            ctx = {**ctx, "all": e}  # PPNet's stop-gradient input is the EPNet output O_ep
        # "paper"/"after": the hook after the last hidden layer gates h_L, the head's input.
        return self.head(self.deep(e, ctx, training=training))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "hidden_units": self.hidden_units, "use_epnet": self.use_epnet, "use_ppnet": self.use_ppnet,
            "epnet_granularity": self.epnet_granularity, "epnet_hidden_units": self.epnet_hidden_units,
            "ppnet_hidden_units": self.ppnet_hidden_units, "ppnet_gate_position": self.ppnet_gate_position,
            "ppnet_context_key": self.ppnet_context_key, "gate_embeddings": self.gate_embeddings,
            "gamma": self.gamma, "activation": self.activation, "batch_norm": self.batch_norm,
            "dropout": self.dropout,
        })
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        # Configs saved before the gate tables existed load as they were trained.
        config = dict(config)
        config.setdefault("gate_embeddings", False)
        return cls(**config)
