"""DIN and TEM4CTR as single models (the head of TEM4CTR's official code).

``SequenceCTR`` = ``SequenceInterest`` (``mdr_tf.layers.sequence``) + the official head:
``[e_t, v₁(, v₂)] → BN → FC 200 → PReLU → FC 80 → PReLU → FC 1`` (PReLU slopes start at
0.1). The official code ends in a 2-way softmax trained with ``−mean(y log ŷ)`` over both
columns; a 2-way softmax is a sigmoid of the logit difference and that loss is half the
binary cross-entropy, so one sigmoid output with the usual BCE is the same model up to a
learning-rate factor of 2 (we keep the package's loss).

``e_t`` is the target item's fields (the categorical features of group "item": item id
and genre on MovieLens); the official code has no user embedding in the input
(``head_inputs="target"``, default). ``head_inputs="all"`` feeds every schema feature
instead (ours; the DNN's input plus the interest).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.models.base import MultiDomainModel


@keras.saving.register_keras_serializable(package="mdr_tf")
class SequenceCTR(MultiDomainModel):
    """DIN (``mode="din"``) or TEM4CTR (``mode="tem4ctr"``) with the official head.

    Args:
      schema: ``Schema.to_config()`` dict of a dataset with behaviour sequences.
      mode: "din" or "tem4ctr".
      hidden_units: head widths (official: 200, 80).
      head_inputs: "target" (official: target item fields + interest) or "all".
      batch_norm: the head's input BatchNorm (official: on).
      attention_units, enhance, normalization: ``SequenceInterest`` arguments.
      **kwargs: ``MultiDomainModel`` arguments (embedding_dim, ...; ``interest`` is set here).
    """

    def __init__(
        self,
        schema: dict[str, Any],
        mode: str = "tem4ctr",
        hidden_units: Sequence[int] = (200, 80),
        head_inputs: str = "target",
        batch_norm: bool = True,
        attention_units: Sequence[int] = (80, 40),
        enhance: str = "projection",
        normalization: str = "softmax",
        **kwargs,
    ):
        kwargs.pop("interest", None)  # derived from the arguments above (a saved config carries both)
        interest = {"mode": mode, "attention_units": [int(u) for u in attention_units], "enhance": enhance,
                    "normalization": normalization}
        super().__init__(schema, interest=interest, **kwargs)
        if head_inputs not in ("target", "all"):
            raise ValueError(f"head_inputs must be 'target' or 'all', got {head_inputs!r}")
        self.mode = mode
        self.hidden_units = [int(u) for u in hidden_units]
        self.head_inputs = head_inputs
        self.batch_norm = bool(batch_norm)
        self.attention_units = [int(u) for u in attention_units]
        self.enhance = enhance
        self.normalization = normalization
        self.target_fields = [f.name for f in self.schema.categorical if f.group == "item"]
        if head_inputs == "target" and not self.target_fields:
            raise ValueError("head_inputs='target' needs categorical features of group 'item' in the schema")
        dtype = self.dtype_policy
        self.norm = keras.layers.BatchNormalization(name="head_bn", dtype=dtype) if self.batch_norm else None
        self.dense = [keras.layers.Dense(u, name=f"head_{i}", dtype=dtype) for i, u in enumerate(self.hidden_units)]
        self.prelu = [keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.1), name=f"prelu_{i}",
                                         dtype=dtype) for i in range(len(self.hidden_units))]
        self.out = keras.layers.Dense(1, name="logit", dtype=dtype)

    def compute_logit(self, inputs, ctx, training=None):
        if self.head_inputs == "all":
            x = ctx["all"]
        else:
            names = [f.name for f in self.schema.categorical]
            fields = [ctx["fields"][:, names.index(n), :] for n in self.target_fields]
            x = ops.concatenate(fields + [ctx["interest"]], axis=1)
        if self.norm is not None:
            x = self.norm(x, training=training)
        for dense, act in zip(self.dense, self.prelu):
            x = act(dense(x))
        return self.out(x)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("interest", None)
        config.update({"mode": self.mode, "hidden_units": self.hidden_units, "head_inputs": self.head_inputs,
                       "batch_norm": self.batch_norm, "attention_units": self.attention_units,
                       "enhance": self.enhance, "normalization": self.normalization})
        return config
