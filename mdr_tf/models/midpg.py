"""MI-DPG / DPG builders: an MLP backbone whose every dense layer is a ``DWMDense`` block.

Cheng et al., CIKM 2023 (see ``mdr_tf/layers/mechanisms/dwm.py`` for the equations).
The model is a plain ``BackboneModel(block="dwm")``; this module only maps flat,
flag-friendly arguments onto ``block_config`` and reads the MIR estimates back.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from mdr_tf.models.backbones import BackboneModel


def build_midpg(
    schema: dict[str, Any],
    variant: str = "r",
    a: int = 8,
    b: int = 8,
    k: int = 4,
    scale: float = 1.0,
    mir_weight: float = 0.1,
    aux_units: Sequence[int] = (32,),
    mir_units: Sequence[int] = (32,),
    stop_gradient_inputs: bool = False,
    uneven: str = "pad",
    hidden_units: Sequence[int] = (128, 64, 32),
    backbone: str = "mlp",
    block_extra: dict[str, Any] | None = None,
    **kwargs: Any,
) -> BackboneModel:
    """MI-DPG (``mir_weight > 0``) or DPG (``mir_weight = 0``) on ``backbone`` (paper: MLP 128-64-32).

    Args:
      schema: ``Schema.to_config()`` dict.
      variant: DWM variant "non" | "rc" | "r" | "c" (default "r": the paper's best, a
        result to check, not built in).
      a, b, k: small-matrix size and rank (ours: 8, 8, 4; the paper's values were lost).
      scale: M multiplier (ours, 1.0).
      mir_weight: λ1 (ours, 0.1; 0 = DPG).
      aux_units, mir_units: hidden widths of the aux net f and the discriminator T (ours).
      stop_gradient_inputs: stop gradients into f's inputs (ours, False).
      uneven: "pad" (ours default here: backbone inputs such as 113 = 7·16+1 are often
        prime) or "error".
      hidden_units, backbone: backbone shape.
      block_extra: further ``DWMDense`` arguments (e.g. ``{"compute": "materialize"}``).
      **kwargs: ``BackboneModel`` / ``MultiDomainModel`` arguments.
    """
    block_config = {"variant": variant, "a": int(a), "b": int(b), "k": int(k), "scale": float(scale),
                    "mir_weight": float(mir_weight), "aux_units": [int(u) for u in aux_units],
                    "mir_units": [int(u) for u in mir_units], "stop_gradient_inputs": bool(stop_gradient_inputs),
                    "uneven": uneven, **(block_extra or {})}
    return BackboneModel(schema, backbone=backbone, hidden_units=hidden_units, block="dwm",
                         block_config=block_config, **kwargs)


def dwm_layers(model: keras.Model) -> list:
    """The ``DWMDense`` layers of a model, in order."""
    from mdr_tf.layers.mechanisms.dwm import DWMDense

    deep = getattr(model, "deep", None)
    if deep is not None and hasattr(deep, "blocks"):
        return [lay for lay in deep.blocks if isinstance(lay, DWMDense)]
    return [lay for lay in model._flatten_layers(include_self=False) if isinstance(lay, DWMDense)]


def mir_estimates(model: keras.Model) -> list[float]:
    """Last training-step MIR estimate of every DWM layer that has a discriminator."""
    return [float(np.asarray(lay.mir_estimate)) for lay in dwm_layers(model) if lay.mir_weight > 0]
