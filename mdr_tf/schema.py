"""The dataset schema written by ``data_prep`` and read by models, pipelines and export."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from mdr_base.features import Feature  # noqa: F401  (the one feature type; data_prep's FeatureDef)


@dataclasses.dataclass(frozen=True)
class SequenceFeature:
    """A fixed-length, padded behaviour sequence (kind "sequence" in ``schema.json``).

    Stored in every tf.Example as int64 lists: ``<name>_ids`` (ids, 0 = padding / OOV),
    ``<name>_mask`` (1 = real event, 0 = padding; padding <=> mask 0) and, when
    ``has_timestamps``, ``<name>_ts`` (event times, 0 on padding; read only on request).

    Attributes:
      name: the prefix of the ids / mask / timestamp keys (e.g. "click").
      shape: the per-example shape, e.g. ``[L]`` for a click history or ``[L, 2R]`` for
        TEM4CTR's unclick windows (stored flat, ``prod(shape)`` values).
      embed_with: the categorical feature whose embedding rows the ids share (``item_id``).
      has_timestamps: the records carry ``<name>_ts``.
      kind: always "sequence".
    """

    name: str
    shape: tuple[int, ...]
    embed_with: str
    has_timestamps: bool = False
    kind: str = "sequence"

    @property
    def length(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n

    @property
    def ids_key(self) -> str:
        return f"{self.name}_ids"

    @property
    def mask_key(self) -> str:
        return f"{self.name}_mask"

    @property
    def ts_key(self) -> str:
        return f"{self.name}_ts"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "embed_with": self.embed_with,
                "has_timestamps": self.has_timestamps}


def _sequences_from_config(cfg: dict[str, Any], features: tuple[Feature, ...]) -> tuple[SequenceFeature, ...]:
    out = []
    names = {f.name: f for f in features}
    for i, s in enumerate(cfg.get("sequences", ()) or ()):
        where = f"sequences[{i}] ({s.get('name', '?')!r})"
        if s.get("kind", "sequence") != "sequence":
            raise ValueError(f"{where}: kind must be 'sequence', got {s.get('kind')!r}")
        shape = tuple(int(x) for x in s.get("shape", ()))
        if not shape or min(shape) < 1:
            raise ValueError(f"{where}: shape must be a non-empty list of positive lengths, got {s.get('shape')!r}")
        base = names.get(s.get("embed_with"))
        if base is None or base.kind != "categorical":
            raise ValueError(f"{where}: embed_with must name a categorical feature, got {s.get('embed_with')!r}")
        out.append(SequenceFeature(name=s["name"], shape=shape, embed_with=s["embed_with"],
                                   has_timestamps=bool(s.get("has_timestamps", False))))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Schema:
    """Features, domains and labels of a prepared dataset.

    ``Schema.to_config()`` is JSON and is what models store in their config, so a saved
    model knows its inputs without the data directory.
    """

    features: tuple[Feature, ...]
    num_domains: int
    domain_names: tuple[str, ...] = ()
    label_keys: tuple[str, ...] = ("label",)
    domain_key: str = "domain_id"
    directory: str | None = None
    sequences: tuple[SequenceFeature, ...] = ()
    raw: dict | None = dataclasses.field(default=None, compare=False, hash=False)

    @classmethod
    def load(cls, directory: str) -> "Schema":
        path = os.path.join(directory, "schema.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no schema.json; prepare the dataset first (python -m data_prep...)")
        with open(path) as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e}); re-run data_prep") from e
        try:
            s = cls.from_config(raw)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            raise ValueError(f"{path}: invalid schema.json ({what}); re-run data_prep") from e
        return dataclasses.replace(s, directory=directory, raw=raw)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Schema":
        feats = tuple(Feature(**{k: f[k] for k in ("name", "kind", "vocab_size", "group", "is_id") if k in f})
                      for f in cfg["features"])
        for f in feats:
            if f.kind not in ("categorical", "dense"):
                raise ValueError(f"feature {f.name!r}: kind must be categorical or dense, got {f.kind!r}")
            if f.kind == "categorical" and f.vocab_size < 1:
                raise ValueError(f"feature {f.name!r}: categorical features need vocab_size >= 1")
        return cls(features=feats, sequences=_sequences_from_config(cfg, feats), num_domains=int(cfg["num_domains"]),
                   domain_names=tuple(cfg.get("domain_names", ())) or tuple(str(i) for i in range(cfg["num_domains"])),
                   label_keys=tuple(cfg.get("label_keys", ("label",))), domain_key=cfg.get("domain_key", "domain_id"))

    def to_config(self) -> dict[str, Any]:
        return {"features": [dataclasses.asdict(f) for f in self.features], "num_domains": self.num_domains,
                "domain_names": list(self.domain_names), "label_keys": list(self.label_keys),
                "domain_key": self.domain_key,
                # Only datasets with behaviour sequences carry the key (older configs are unchanged).
                **({"sequences": [q.to_json() for q in self.sequences]} if self.sequences else {})}

    @property
    def categorical(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == "categorical")

    @property
    def dense(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == "dense")

    @property
    def input_names(self) -> tuple[str, ...]:
        return (tuple(f.name for f in self.features) + (self.domain_key,)
                + tuple(k for q in self.sequences for k in (q.ids_key, q.mask_key)))

    def sequence(self, name: str) -> SequenceFeature:
        for q in self.sequences:
            if q.name == name:
                return q
        raise KeyError(f"unknown sequence feature {name!r}; schema has {[q.name for q in self.sequences]}")

    @property
    def values_per_example(self) -> int:
        """Feature values per example (scalars + domain + label + flattened sequences and masks)."""
        return len(self.features) + 2 + sum(2 * q.length for q in self.sequences)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"unknown feature {name!r}; schema has {[f.name for f in self.features]}")

    def counts(self, split: str) -> list[int]:
        if not self.raw:
            raise ValueError("schema has no counts (not loaded from a data directory)")
        return [self.raw["counts"][str(d)][split]["examples"] for d in range(self.num_domains)]

    def files(self, split: str, domains: list[int] | None = None) -> list[str]:
        if self.directory is None:
            raise ValueError("schema has no data directory")
        out = []
        n = (self.raw or {}).get("num_shards", 1)
        for d in domains if domains is not None else range(self.num_domains):
            for i in range(n):
                out.append(os.path.join(self.directory, f"domain_{d}", f"{split}-{i:05d}-of-{n:05d}.tfrecord"))
        return out
