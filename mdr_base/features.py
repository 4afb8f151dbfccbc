"""``Feature``: one model input column of a prepared dataset (an entry of ``schema.json``).

The single feature type of the project: ``mdr_tf.schema.Feature`` (read side) and
``data_prep``'s ``FeatureDef`` (write side) are this class.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Feature:
    """One model input column as stored in the TFRecords and listed in ``schema.json``.

    Attributes:
      name: column / tf.Example key.
      kind: "categorical" (int64 id, 0 = OOV/missing) or "dense" (float32).
      vocab_size: number of ids incl. 0, for categorical features.
      group: "user", "item", "context" or "domain" (domain-side features feed the
        domain-aware parts of models: PEPNet's EPNet, MI-DPG's scenario-aware input).
      is_id: whether the feature is an id feature (PPNet's gate prior).
    """

    name: str
    kind: str  # "categorical" | "dense"
    vocab_size: int = 0
    group: str = "context"  # user | item | context | domain
    is_id: bool = False

    def to_json(self) -> dict[str, Any]:
        """The ``schema.json`` entry (all fields)."""
        return dataclasses.asdict(self)
