"""Parameter report: shared vs per-domain vs generated-per-sample parameters.

Layers mark per-domain variables with ``mark_per_domain(var)`` and declare generated
parameters with a ``generated_parameters_per_sample()`` method (e.g. HAMUR's k×k core,
MI-DPG's weighting matrices, APG's S(z)).
"""

from __future__ import annotations

import math

import keras


def mark_per_domain(variable) -> None:
    """Tags a variable as holding one slice per domain (counted as per-domain parameters)."""
    variable._mdr_per_domain = True


def is_per_domain(variable) -> bool:
    return bool(getattr(variable, "_mdr_per_domain", False))


def parameter_report(model: keras.Model) -> dict[str, int]:
    """Counts ``total``, ``trainable``, ``shared``, ``per_domain`` (all domains together),
    ``per_domain_each`` (per_domain / D), ``generated_per_sample`` and ``table_bytes``
    (the stored embedding table: float32, or integers + float32 Δ for a low-precision
    table, ``QuantizedEmbedding.table_bytes``)."""
    total = trainable = per_domain = 0
    for v in model.weights:
        n = math.prod(v.shape)
        total += n
        if v.trainable:
            trainable += n
            if is_per_domain(v):
                per_domain += n
    generated = 0
    for layer in model._flatten_layers(include_self=False):
        fn = getattr(layer, "generated_parameters_per_sample", None)
        if callable(fn):
            generated += int(fn())
    d = getattr(model, "num_domains", 1) or 1
    table_bytes = 0
    for layer in model._flatten_layers(include_self=False):
        if hasattr(layer, "quantized") and hasattr(layer, "total_rows"):  # FeatureEmbedding
            table_bytes += (layer.quantized.table_bytes() if layer.quantized is not None
                            else 4 * layer.total_rows * layer.embedding_dim)
    return {"total": int(total), "trainable": int(trainable), "shared": int(trainable - per_domain),
            "per_domain": int(per_domain), "per_domain_each": int(per_domain // d),
            "generated_per_sample": int(generated), "table_bytes": int(table_bytes)}
