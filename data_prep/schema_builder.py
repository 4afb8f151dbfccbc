"""The one builder of ``schema.json`` (read back by ``mdr_tf.schema.Schema``), and the reuse check."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import numpy as np

from data_prep.base import SCHEMA_FILE, SCHEMA_VERSION


def existing_output(output_dir: str, fp: str) -> dict | None:
    """Returns the schema of a finished output with the same fingerprint, else None."""
    path = os.path.join(output_dir, SCHEMA_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        schema = json.load(f)
    return schema if schema.get("fingerprint") == fp else None


def build_schema(*, dataset: str, fp: str, features, domain_names: Sequence[Any], label_keys: Sequence[str],
                 num_shards: int, counts: dict, num_examples: int, positive_rate: float, metadata: dict,
                 sequences: Sequence[dict] = (), extra: dict | None = None) -> dict:
    """The ``schema.json`` dict of every writer (whole-array, sequences, streamed).

    Args:
      dataset: dataset name.
      fp: fingerprint of source checksums + options (the reuse key).
      features: ``FeatureDef``s in model input order.
      domain_names: raw domain value per id.
      label_keys: label names (the first is the primary label).
      num_shards: shards per (domain, split).
      counts: ``{domain: {split: {"examples", "positives", ...}}}``.
      num_examples: rows over all splits.
      positive_rate: share of rows whose primary label is positive.
      metadata: extra JSON-able provenance, added last.
      sequences: behaviour-sequence entries (``data_prep.sequences``), after ``features``.
      extra: writer-specific keys placed after ``positive_rate`` (e.g. per-domain rates).
    """
    schema = {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "fingerprint": fp,
        "features": [f.to_json() for f in features],
    }
    if sequences:
        schema["sequences"] = [dict(s, kind="sequence") for s in sequences]
    schema.update({
        "domain_key": "domain_id",
        "num_domains": len(domain_names),
        "domain_names": list(domain_names),
        "label_keys": list(label_keys),
        "num_shards": num_shards,
        "counts": counts,
        "num_examples": int(num_examples),
        "positive_rate": float(positive_rate),
        **(extra or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **metadata,
    })
    return schema


def whole_array_schema(dataset: str, fp: str, features, domain_names, label_names, num_shards: int,
                       counts: dict, primary: np.ndarray, metadata: dict,
                       sequences: Sequence[dict] = ()) -> dict:
    """``build_schema`` for a whole-array writer (``write_dataset``, ``data_prep.sequences``).

    ``primary`` is the first label column (for the positive rate); ``sequences`` adds the
    sequence features' entries after ``features`` when there are any.
    """
    n = len(primary)
    return build_schema(dataset=dataset, fp=fp, features=features, domain_names=domain_names,
                        label_keys=label_names, num_shards=num_shards, counts=counts, num_examples=n,
                        positive_rate=float((primary > 0.5).mean()) if n else 0.0, metadata=metadata,
                        sequences=sequences)


def streamed_schema(*, dataset: str, fp: str, features, domain_names: Sequence[Any], label_keys: Sequence[str],
                    counts: dict, num_shards: int, metadata: dict) -> dict:
    """``build_schema`` for a streamed writer: totals and per-domain positive rates from ``counts``."""
    n = sum(c["examples"] for per in counts.values() for c in per.values())
    pos = sum(c["positives"] for per in counts.values() for c in per.values())
    rates = {d: {s: (c["positives"] / c["examples"] if c["examples"] else None) for s, c in per.items()}
             for d, per in counts.items()}
    return build_schema(dataset=dataset, fp=fp, features=features, domain_names=[str(x) for x in domain_names],
                        label_keys=label_keys, num_shards=num_shards, counts=counts, num_examples=n,
                        positive_rate=float(pos / n) if n else 0.0, metadata=metadata,
                        extra={"domain_positive_rates": rates})
