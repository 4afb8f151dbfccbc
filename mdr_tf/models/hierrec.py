"""HierRec: scenario-aware hierarchical dynamic network (explicit → G implicit SOMs).

Gao et al., "HierRec: Scenario-Aware Hierarchical Modeling for Multi-scenario
Recommendations", CIKM 2024 (arXiv 2309.02061 "Scenario-Aware Hierarchical Dynamic
Network"). No public code; the structure follows the paper (docs/models/hierrec.md)::

    O_global = FC([e_1; …; e_F])                          (shared)
    SC_exp   = FC(e_s)              → O_exp   = SOM_exp(O_global; SC_exp)
    w        = softmax_F(Reshape_{G×F}(FC(e_s)))          (eq. 6)
    IE_g     = [w_{g,1} e_1; …; w_{g,F} e_F; w_{g,F+1} x_1; …]   (eq. 7; x_j dense features)
    SC_imp,g = FC_shared(IE_g)      → O_imp,g = SOM_g(O_exp; SC_imp,g)
    ŷ        = σ(FC([O_imp,1; …; O_imp,G]))              (eq. 9), loss BCE
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.mechanisms.som import ScenarioOrientedModule
from mdr_tf.layers.routing import per_row
from mdr_tf.models.base import MultiDomainModel


@keras.saving.register_keras_serializable(package="mdr_tf")
class HierRec(MultiDomainModel):
    """HierRec with an explicit (per-scenario) SOM and G implicit (per-instance) SOMs.

    The explicit SOM's condition depends on the scenario id only, so its weights are
    generated once per scenario (``[D, in, r]``) and each sample keeps its own scenario's
    output. The implicit SOMs' conditions depend on the re-weighted field embeddings of
    each instance, so their weights are per sample: applied without materialising them
    (``ScenarioOrientedModule.call``), the G heads as separate tensors and the head layer
    as a sum of per-head matmuls.

    Every width below is unknown in the paper and marked (ours). The defaults are the
    registry's main-table "hierrec" (~6k samples/s on 2 CPU cores); "hierrec_large" is
    G 4, c 64, SOM 32→64.

    Args:
      schema: ``Schema.to_config()`` dict.
      global_units: width of ``O_global = FC(e)`` (ours: 64).
      condition_dim: width c of every scenario condition SC (ours: 16).
      som_units: widths of each SOM, bottleneck narrow→wide (ours: (16, 32)).
      num_heads: G implicit heads (ours: 2).
      activation: activation of FC_global and inside SOMs (ours: relu).
      condition_activation: activation of the SC projections (ours: None = linear).
      static_weight: add a static shared kernel to every generated one (off; unconfirmed).
      implicit_condition: ``ctx`` view fed to the field-attention FC (ours:
        "domain_side" = scenario-id embedding + domain-group features; the explicit
        path always uses the scenario-id embedding only).
      embed_domain: include the scenario id among the common fields E (default False:
        the paper separates e_s from e_1..e_F).
      implicit_dense: dense features are fields of the implicit path too: each dense
        value ``x_j`` is one more field of the softmax of eq. 6, re-weighted like an
        embedding in eq. 7 (default True: the paper's fields are all common features;
        False = categorical embeddings only, the earlier behaviour). Without dense
        features both are the same model.
      **kwargs: ``MultiDomainModel`` arguments.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        global_units: int = 64,
        condition_dim: int = 16,
        som_units: Sequence[int] = (16, 32),
        num_heads: int = 2,
        activation: str = "relu",
        condition_activation: str | None = None,
        static_weight: bool = False,
        implicit_condition: str = "domain_side",
        embed_domain: bool = False,
        implicit_dense: bool = True,
        **kwargs,
    ):
        super().__init__(schema, embed_domain=embed_domain, **kwargs)
        self.implicit_dense = bool(implicit_dense)
        self.global_units = int(global_units)
        self.condition_dim = int(condition_dim)
        self.som_units = [int(u) for u in som_units]
        self.num_heads = int(num_heads)
        self.activation = activation
        self.condition_activation = condition_activation
        self.static_weight = bool(static_weight)
        self.implicit_condition = implicit_condition
        if implicit_condition not in self.context_dims:
            raise ValueError(f"implicit_condition {implicit_condition!r} unknown; have {sorted(self.context_dims)}")
        self.num_fields = self.embedding.num_fields
        self.num_dense_fields = len(self.schema.dense) if self.implicit_dense else 0
        self.num_attended = self.num_fields + self.num_dense_fields  # fields of eq. 6's softmax
        self.global_fc = keras.layers.Dense(self.global_units, activation=activation, name="global_fc",
                                            dtype=self.dtype_policy)
        self.sc_explicit = keras.layers.Dense(self.condition_dim, activation=condition_activation, name="sc_explicit",
                                              dtype=self.dtype_policy)
        self.field_attention = keras.layers.Dense(self.num_heads * self.num_attended, name="field_attention",
                                                  dtype=self.dtype_policy)
        self.sc_implicit = keras.layers.Dense(self.condition_dim, activation=condition_activation, name="sc_implicit",
                                              dtype=self.dtype_policy)
        self.explicit_som = ScenarioOrientedModule(self.som_units, self.condition_dim, heads=1,
                                                   activation=activation, static_weight=self.static_weight,
                                                   name="explicit_som", dtype=self.dtype_policy)
        self.implicit_som = ScenarioOrientedModule(self.som_units, self.condition_dim, heads=self.num_heads,
                                                   activation=activation, static_weight=self.static_weight,
                                                   name="implicit_som", dtype=self.dtype_policy)
        self.head = keras.layers.Dense(1, name="head", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        if self.built:
            return
        d, cd = self.embedding_dim, self.context_dims
        self.global_fc.build((None, cd["all"]))
        self.sc_explicit.build((None, d))
        self.field_attention.build((None, cd[self.implicit_condition]))
        self.sc_implicit.build((None, self.num_fields * d + self.num_dense_fields))
        self.explicit_som.build((None, self.global_units))
        self.implicit_som.build((None, self.explicit_som.output_dim))
        self.head.build((None, self.num_heads * self.implicit_som.output_dim))
        super().build(input_shape)

    # ---------------------------------------------------------------- parts
    def scenario_table(self):
        """Scenario-id embeddings of all D scenarios, [D, d] (rows of the fused table)."""
        start, end = self.embedding.table_rows(self.schema.domain_key)
        rows = (self.embedding.table[start:end] if self.embedding.quantized is None
                else self.embedding.gather_rows(ops.arange(start, end)))  # a low-precision table (ALPT)
        return ops.cast(rows, self.compute_dtype)

    def _explicit_condition(self, row_by_row: bool = True):
        # At inference one scenario at a time: a scenario's condition then does not depend
        # on D (new-domain onboarding); in training one op (faster).
        table = self.scenario_table()
        return per_row(self.sc_explicit, table) if row_by_row else self.sc_explicit(table)  # [D, c]

    def field_weights_from_ctx(self, ctx):
        """Field re-weighting ``w = softmax_F(reshape(FC(e_s), [G, F']))`` → [B, G, F'], F' = F
        embedding fields then the dense features (if ``implicit_dense``)."""
        logits = self.field_attention(ops.cast(ctx[self.implicit_condition], self.compute_dtype))
        return ops.softmax(ops.reshape(logits, [-1, self.num_heads, self.num_attended]), axis=-1)

    def _implicit_condition(self, ctx):
        w = self.field_weights_from_ctx(ctx)                                 # [B, G, F']
        f = self.num_fields
        fields = ops.cast(ctx["fields"], self.compute_dtype)                 # [B, F, d]
        ie = ops.expand_dims(w[:, :, :f], -1) * ops.expand_dims(fields, 1)   # [B, G, F, d]
        ie = ops.reshape(ie, [-1, self.num_heads, f * self.embedding_dim])
        if self.num_dense_fields:
            dense = ops.cast(ctx["dense"], self.compute_dtype)               # [B, n_dense]
            ie = ops.concatenate([ie, w[:, :, f:] * ops.expand_dims(dense, 1)], axis=-1)
        return self.sc_implicit(ie)                                          # [B, G, c]

    def compute_logit(self, inputs, ctx, training=None):
        o_global = self.global_fc(ctx["all"])                                # [B, h0]
        o_exp = self.explicit_som(o_global, self._explicit_condition(row_by_row=not training), index=ctx["domain"],
                                  training=training)[:, 0]
        o_imp = self.implicit_som(o_exp, self._implicit_condition(ctx), split_heads=True)  # G × [B, h]
        # head(concat_g O_imp,g) as Σ_g O_imp,g · kernel_g (no concatenation of the heads)
        h = self.implicit_som.output_dim
        kernel = ops.cast(self.head.kernel, o_imp[0].dtype)
        logit = ops.cast(self.head.bias, o_imp[0].dtype)
        for g, o in enumerate(o_imp):
            logit = logit + ops.matmul(o, kernel[g * h:(g + 1) * h])
        return logit

    # ---------------------------------------------------------- diagnostics
    def field_weights(self, inputs):
        """[B, G, F'] field weights of each head (rows sum to 1; dense features last)."""
        return self.field_weights_from_ctx(self.embedding(inputs))

    def explicit_weights(self, inputs) -> list:
        """Per-sample explicit-SOM ``(W [B, in, out], b [B, out])`` per layer."""
        ctx = self.embedding(inputs)
        return [(w[:, 0], b[:, 0]) for w, b in self.explicit_som.generate(self._explicit_condition(), ctx["domain"])]

    def implicit_weights(self, inputs) -> list:
        """Per-sample implicit-SOM ``(W [B, G, in, out], b [B, G, out])`` per layer."""
        return self.implicit_som.generate(self._implicit_condition(self.embedding(inputs)))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "global_units": self.global_units, "condition_dim": self.condition_dim, "som_units": self.som_units,
            "num_heads": self.num_heads, "activation": self.activation,
            "condition_activation": self.condition_activation, "static_weight": self.static_weight,
            "implicit_condition": self.implicit_condition, "implicit_dense": self.implicit_dense,
        })
        return config


def build_hierrec(schema: dict[str, Any], **kwargs: Any) -> HierRec:
    """Registry builder: ``HierRec(schema, **kwargs)``."""
    return HierRec(schema, **kwargs)
