"""PEPNet's EPNet as a backbone *input hook* (Chang et al., "PEPNet: Parameter and
Embedding Personalized Network for Infusing with Personalized Prior Information", KDD 2023).

Equation (EPNet, the embedding personalisation):

    e' = GateNU(E_g(F_d) ⊕ ⊘(e)) ⊙ e,   GateNU(x) = γ · sigmoid(ReLU(x W + b) W' + b')

with ``e = ctx["all"]`` (``⊘`` = stop-gradient) and ``E_g(F_d)`` the domain-side
features (domain id + group "domain") embedded in the gates' **own** table. Registered
as the input hook "epnet", so ``BackboneModel(input_hook="epnet", hook="ppnet")`` is
PEPNet on any backbone (MLP, Wide&Deep, DCN, DeepFM): the gated ``e'`` is what the deep
part and the cross network read. PPNet (the per-layer gates) is the layer hook "ppnet"
(``mdr_tf.layers.mechanisms.gates.PPNetGate``); with ``gate_ids=True`` this hook's gate
table also embeds the id features as ``ctx["gate_ids"]`` for it. The gate layers
themselves (``GateNU``, ``EPNet``) live in ``mdr_tf.layers.mechanisms.gates``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from keras import ops

from mdr_tf.layers.blocks import InputHook, register_input_hook
from mdr_tf.layers.embedding import FeatureEmbedding
from mdr_tf.layers.mechanisms.gates import EPNet
from mdr_tf.schema import Schema


def gate_schema_config(schema: Schema, domain_side: bool, ids: bool) -> dict[str, Any]:
    """The schema restricted to the features the gates read (their own embedding tables).

    ``domain_side``: keep the features of group "domain" (EPNet's ``E(F_d)``); ``ids``:
    keep the id features (PPNet's ``E(F_u) ⊕ E(F_i) ⊕ …``). The domain id is always there.
    """
    keep = [f for f in schema.features if (domain_side and f.group == "domain") or (ids and f.is_id)]
    cfg = schema.to_config()
    cfg["features"] = [dataclasses.asdict(f) for f in keep]
    names = {f.name for f in keep}  # a sequence stays only with the table it is embedded with
    cfg["sequences"] = [s for s in cfg.get("sequences", ()) or () if s.get("embed_with") in names]
    return cfg


@register_input_hook("epnet")
class EPNetInputHook(InputHook):
    """EPNet on the backbone input: ``ctx["all"] ← GateNU(E_g(F_d) ⊕ ⊘(e)) ⊙ e``.

    Args:
      granularity: "dimension" (a gate per element of ``e``, the paper) or "field".
      hidden_units: GateNU hidden width (None: its output width).
      gamma: GateNU γ (2).
      gate_embeddings: the gate reads its own embedding table (default, the paper): adds
        ``ctx["gate_side"]``; False reuses the main table's ``ctx["domain_side"]``.
      gate_ids: the gate table also embeds the id features as ``ctx["gate_ids"]`` (for the
        "ppnet" layer hook with ``id_key="gate_ids"``; PEPNet's default).
      **kwargs: ``InputHook`` arguments (set by the backbone).

    Example:
      >>> model = BackboneModel(schema, backbone="dcn", input_hook="epnet",
      ...                       input_hook_config={"gate_ids": True},
      ...                       hook="ppnet", hook_config={"id_key": "gate_ids"})

    References:
      Chang et al., KDD 2023, §3.3 (EPNet) and §3.2 (Gate NU).
    """

    rejects_interest = "EPNet gates the field embeddings of ctx['all'] one by one"

    def __init__(self, granularity: str = "dimension", hidden_units: int | None = None, gamma: float = 2.0,
                 gate_embeddings: bool = True, gate_ids: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.granularity = granularity
        self.hidden_units = None if hidden_units is None else int(hidden_units)
        self.gamma = float(gamma)
        self.gate_embeddings = bool(gate_embeddings)
        self.gate_ids = bool(gate_ids)
        if self.gate_ids and not self.gate_embeddings:
            raise ValueError("EPNetInputHook: gate_ids needs gate_embeddings=True (the ids come from the gate table)")
        self.gate_embedding = None
        if self.gate_embeddings:  # created here so that output_dims is known before build
            self.gate_embedding = FeatureEmbedding(
                gate_schema_config(Schema.from_config(self.schema), True, self.gate_ids),
                embedding_dim=self.embedding_dim, embed_domain=True,
                embeddings_initializer=keras.initializers.get(self.embeddings_initializer),
                embeddings_regularizer=keras.regularizers.L2(self.embedding_l2 / 2) if self.embedding_l2 else None,
                name="gate_embedding", dtype=self.dtype_policy)
        self.epnet = EPNet(self.num_fields, self.embedding_dim, num_dense=self.num_dense, granularity=granularity,
                           hidden_units=self.hidden_units, gamma=self.gamma, name="epnet", dtype=self.dtype_policy)

    @property
    def output_dims(self) -> dict[str, int]:
        if self.gate_embedding is None:
            return {}
        gdims = self.gate_embedding.output_dims
        dims = {"gate_side": gdims["domain_side"]}
        if self.gate_ids:
            dims["gate_ids"] = gdims["ids"]
        return dims

    def call(self, inputs, ctx: dict, training: bool | None = None) -> dict:
        out = {}
        side = ctx["domain_side"]
        if self.gate_embedding is not None:
            g = self.gate_embedding(inputs)
            side = out["gate_side"] = g["domain_side"]
            if self.gate_ids:
                out["gate_ids"] = g["ids"]
        out["all"] = self.epnet([ctx["all"], ops.cast(side, ctx["all"].dtype)])
        return out

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"granularity": self.granularity, "hidden_units": self.hidden_units, "gamma": self.gamma,
                       "gate_embeddings": self.gate_embeddings, "gate_ids": self.gate_ids})
        return config
