"""MI-DPG / DPG: an MLP backbone whose dense layers are ``DWMDense`` blocks, trained with
the paper's objective (eq. 8)::

    L = BCE(y, ŷ) − λ1 · MIR + λ2 · ||Θ||²

Cheng et al., CIKM 2023 (see ``mdr_tf/layers/mechanisms/dwm.py`` for the DWM equations).
The paper writes one MIR term; with one weighting matrix per layer, ``MIR`` is here the
mean of the L layers' estimates (``mir_reduction="mean"``, default) or their sum
(``"sum"``, i.e. weight L·λ1, the earlier behaviour). ``||Θ||²`` is the squared L2 norm
of every trainable weight (embeddings, kernels, biases, aux nets, discriminators).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from mdr_tf.layers.mechanisms.dwm import DWMDense
from mdr_tf.models.backbones import BackboneModel

MIR_REDUCTIONS = ("mean", "sum")


@keras.saving.register_keras_serializable(package="mdr_tf")
class MIDPGModel(BackboneModel):
    """MI-DPG (λ1 > 0) or DPG (λ1 = 0): ``BackboneModel(block="dwm")`` plus eq. 8's terms.

    Args:
      schema: ``Schema.to_config()`` dict.
      mir_weight: λ1 of eq. 8 (the weight of the model's one MIR term).
      mir_reduction: "mean" (MIR = mean of the per-layer estimates; the paper's one
        term, default) or "sum" (every layer adds ``−λ1·MIR_l``).
      l2_weight: λ2 of eq. 8, ``λ2·Σ_θ ||θ||²`` over all trainable weights, added in
        training calls (0 disables).
      output_dwm: the output layer (``n → 1``) is a DWM layer too (its ``b`` is 1);
        False (default) keeps a plain ``Dense(1)`` head.
      block_config: ``DWMDense`` arguments of every DWM layer (``mir_weight`` is set
        from ``mir_weight`` / ``mir_reduction``).
      **kwargs: ``BackboneModel`` arguments (``block`` is always "dwm").
    """

    def __init__(self, schema: dict[str, Any], mir_weight: float = 0.1, mir_reduction: str = "mean",
                 l2_weight: float = 0.0, output_dwm: bool = False, block_config: dict[str, Any] | None = None,
                 **kwargs):
        if mir_reduction not in MIR_REDUCTIONS:
            raise ValueError(f"mir_reduction must be one of {MIR_REDUCTIONS}, got {mir_reduction!r}")
        if float(mir_weight) < 0 or float(l2_weight) < 0:
            raise ValueError(f"mir_weight and l2_weight must be >= 0, got {mir_weight}, {l2_weight}")
        self.mir_weight = float(mir_weight)
        self.mir_reduction = mir_reduction
        self.l2_weight = float(l2_weight)
        self.output_dwm = bool(output_dwm)
        kwargs["block"] = "dwm"
        layers = len(kwargs.get("hidden_units", (128, 64, 32))) + int(self.output_dwm)
        per_layer = self.mir_weight / layers if mir_reduction == "mean" else self.mir_weight
        super().__init__(schema, block_config={**dict(block_config or {}), "mir_weight": per_layer}, **kwargs)

    def make_head(self) -> keras.layers.Layer:
        if not self.output_dwm:
            return super().make_head()
        cfg = {**self.block_config, "b": 1}  # one output column: S is a×1
        if self.kernel_initializer is not None:
            cfg.setdefault("kernel_initializer", self.kernel_initializer)
        return DWMDense(1, num_domains=self.num_domains, context_dims=self.context_dims, name="head_dwm",
                        dtype=self.dtype_policy, **cfg)

    def apply_head(self, h, ctx, training=None):
        if not self.output_dwm:
            return self.head(h)
        return self.head(h, ctx, training=training)

    def l2_penalty(self):
        """``Σ_θ ||θ||²`` over the trainable weights."""
        return ops.sum(ops.stack([ops.sum(ops.square(ops.cast(v, "float32"))) for v in self.trainable_weights]))

    def compute_logit(self, inputs, ctx, training=None):
        logit = super().compute_logit(inputs, ctx, training=training)
        if training and self.l2_weight > 0:
            self.add_loss(self.l2_weight * self.l2_penalty())
        return logit

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("block", None)
        config.update({"mir_weight": self.mir_weight, "mir_reduction": self.mir_reduction,
                       "l2_weight": self.l2_weight, "output_dwm": self.output_dwm})
        return config


def build_midpg(
    schema: dict[str, Any],
    variant: str = "r",
    a: int = 8,
    b: int = 8,
    k: int = 4,
    scale: float = 1.0,
    mir_weight: float = 0.1,
    mir_reduction: str = "mean",
    l2_weight: float = 0.0,
    output_dwm: bool = False,
    repeat: str = "tile",
    aux_units: Sequence[int] = (32,),
    mir_units: Sequence[int] = (32,),
    mir_negatives: str = "shuffle",
    stop_gradient_inputs: bool = False,
    uneven: str = "pad",
    hidden_units: Sequence[int] = (128, 64, 32),
    backbone: str = "mlp",
    block_extra: dict[str, Any] | None = None,
    **kwargs: Any,
) -> MIDPGModel:
    """MI-DPG (``mir_weight > 0``) or DPG (``mir_weight = 0``) on ``backbone`` (paper: MLP 128-64-32).

    Args:
      schema: ``Schema.to_config()`` dict.
      variant: DWM variant "non" | "rc" | "r" | "c" (default "r": the paper's best, a
        result to check, not built in).
      a, b, k: small-matrix size and rank (ours: 8, 8, 4; the paper's values were lost).
      scale: M multiplier (ours, 1.0).
      mir_weight: λ1 (ours, 0.1; 0 = DPG).
      mir_reduction: "mean" (one MIR term: the mean over the DWM layers; default) or "sum".
      l2_weight: λ2, L2 on all trainable weights (ours, 0: the paper's value was lost).
      output_dwm: the output layer is a DWM layer too (eq. 1 read for every layer incl. the
        output). Default False: hidden layers only; with it on, MI-DPG / DPG collapsed to the
        majority solution on 3 of 6 conflicting-domains runs (docs/models/midpg.md).
      repeat: "tile" or "block" (``DWMDense``; default "tile", measured in docs/models/midpg.md).
      aux_units, mir_units: hidden widths of the aux net f and the discriminator T (ours).
      mir_negatives: "shuffle" (default: a random permutation, the paper's "shuffled", the
        estimator as first built) or "roll" (the batch shifted by a random offset, ours).
        Both pair every sample with a partner uniform over the batch, so MIR has the same
        expectation; on ML-100k both gave the same AUC and cost (docs/models/midpg.md).
      stop_gradient_inputs: stop gradients into f's inputs (ours, False).
      uneven: "pad" (ours default here: backbone inputs such as 113 = 7·16+1 are often
        prime) or "error".
      hidden_units, backbone: backbone shape.
      block_extra: further ``DWMDense`` arguments (e.g. ``{"compute": "materialize"}``).
      **kwargs: ``BackboneModel`` / ``MultiDomainModel`` arguments.
    """
    block_config = {"variant": variant, "a": int(a), "b": int(b), "k": int(k), "scale": float(scale),
                    "aux_units": [int(u) for u in aux_units], "repeat": repeat,
                    "mir_units": [int(u) for u in mir_units], "mir_negatives": mir_negatives,
                    "stop_gradient_inputs": bool(stop_gradient_inputs),
                    "uneven": uneven, **(block_extra or {})}
    return MIDPGModel(schema, mir_weight=mir_weight, mir_reduction=mir_reduction, l2_weight=l2_weight,
                      output_dwm=output_dwm, backbone=backbone, hidden_units=hidden_units,
                      block_config=block_config, **kwargs)


def dwm_layers(model: keras.Model, include_head: bool = False) -> list:
    """The ``DWMDense`` layers of a model's deep part, in order (plus a DWM head if asked)."""
    deep = getattr(model, "deep", None)
    if deep is not None and hasattr(deep, "blocks"):
        out = [lay for lay in deep.blocks if isinstance(lay, DWMDense)]
        head = getattr(model, "head", None)
        return out + ([head] if include_head and isinstance(head, DWMDense) else [])
    return [lay for lay in model._flatten_layers(include_self=False) if isinstance(lay, DWMDense)]


def mir_estimates(model: keras.Model) -> list[float]:
    """Last training-step MIR estimate of every DWM layer (head included) that has a discriminator."""
    return [float(np.asarray(lay.mir_estimate)) for lay in dwm_layers(model, include_head=True)
            if lay.mir_weight > 0]
