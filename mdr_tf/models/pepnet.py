"""PEPNet = EPNet (embedding gate from the domain side) + PPNet (per-layer gates from ids).

Chang et al., "PEPNet: Parameter and Embedding Personalized Network for Infusing with
Personalized Prior Information", KDD 2023. Single task here, so one tower.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras

from mdr_tf.layers.mechanisms.gates import EPNet
from mdr_tf.layers.mlp import DomainMLP
from mdr_tf.models.base import MultiDomainModel

GATE_POSITIONS = ("after", "before")


@keras.saving.register_keras_serializable(package="mdr_tf")
class PEPNetModel(MultiDomainModel):
    """EPNet on the embedding, PPNet gates in the MLP, linear head.

    - EPNet: ``e' = GateNU(e_s ⊕ ⊘(e)) ⊙ e`` with ``e = ctx["all"]``,
      ``e_s = ctx["domain_side"]`` (``⊘`` = stop-gradient).
    - PPNet: per hidden layer ``h' = GateNU_l(e_id ⊕ ⊘(e')) ⊙ h`` with
      ``e_id = ctx["ids"]`` (user / item id embeddings).
    - ``logit = h_L w + b``.

    Args:
      schema: ``Schema.to_config()`` dict.
      hidden_units: MLP widths (default 128-64-32, the MI-DPG setup).
      use_epnet: apply EPNet (False: "ppnet" alone).
      use_ppnet: apply PPNet gates (False: "epnet" alone, a plain MLP on ``e'``).
      epnet_granularity: "dimension" (a gate per element of ``e``, the paper's
        ``δ_domain`` has the width of ``E``) or "field" (a gate per field).
      epnet_hidden_units: EPNet GateNU hidden width (None: its output width).
      ppnet_hidden_units: PPNet GateNU hidden width (None: the gated layer's width).
      ppnet_gate_position: "after" (default: gate each layer's output after the
        activation, PEPNet figure / FuxiCTR) or "before" (gate each layer's input,
        MMLRec: the MLP input and every hidden output but the last).
      ppnet_context_key: ctx view concatenated (stop-gradient) to the ids in the PPNet
        gate input; "all" is the EPNet output when EPNet is on; None = ids only.
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
        ppnet_gate_position: str = "after",
        ppnet_context_key: str | None = "all",
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
        self.use_epnet = bool(use_epnet)
        self.use_ppnet = bool(use_ppnet)
        self.epnet_granularity = epnet_granularity
        self.epnet_hidden_units = None if epnet_hidden_units is None else int(epnet_hidden_units)
        self.ppnet_hidden_units = None if ppnet_hidden_units is None else int(ppnet_hidden_units)
        self.ppnet_gate_position = ppnet_gate_position
        self.ppnet_context_key = ppnet_context_key
        self.gamma = float(gamma)
        self.activation = activation
        self.batch_norm = bool(batch_norm)
        self.dropout = float(dropout)
        if self.use_epnet:
            self.epnet = EPNet(self.embedding.num_fields, self.embedding_dim, num_dense=len(self.schema.dense),
                               granularity=epnet_granularity, hidden_units=self.epnet_hidden_units,
                               gamma=self.gamma, name="epnet")
        hook_kwargs: dict[str, Any] = {}
        if self.use_ppnet:
            n = len(self.hidden_units)
            before = ppnet_gate_position == "before"
            hook_kwargs = {
                "hook": "ppnet",
                "hook_config": {"id_key": "ids", "context_key": ppnet_context_key,
                                "hidden_units": self.ppnet_hidden_units, "gamma": self.gamma},
                "hook_positions": list(range(n - 1)) if before else list(range(n)),
                "hook_on_input": before,
            }
            if before and n == 1:
                hook_kwargs["hook_positions"] = []
        self.deep = DomainMLP(self.hidden_units, num_domains=self.num_domains, context_dims=self.context_dims,
                              activation=activation, batch_norm=self.batch_norm, dropout=self.dropout,
                              name="deep", **hook_kwargs)
        self.head = keras.layers.Dense(1, name="head")

    def compute_logit(self, inputs, ctx, training=None):
        e = ctx["all"]
        if self.use_epnet:
            e = self.epnet([e, ctx["domain_side"]])
            ctx = {**ctx, "all": e}  # PPNet's stop-gradient input is the EPNet output O_ep
        return self.head(self.deep(e, ctx, training=training))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "hidden_units": self.hidden_units, "use_epnet": self.use_epnet, "use_ppnet": self.use_ppnet,
            "epnet_granularity": self.epnet_granularity, "epnet_hidden_units": self.epnet_hidden_units,
            "ppnet_hidden_units": self.ppnet_hidden_units, "ppnet_gate_position": self.ppnet_gate_position,
            "ppnet_context_key": self.ppnet_context_key, "gamma": self.gamma, "activation": self.activation,
            "batch_norm": self.batch_norm, "dropout": self.dropout,
        })
        return config
