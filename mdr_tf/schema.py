"""The dataset schema written by ``data_prep`` and read by models, pipelines and export."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # "categorical" | "dense"
    vocab_size: int = 0
    group: str = "context"  # user | item | context | domain
    is_id: bool = False


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
    raw: dict | None = dataclasses.field(default=None, compare=False, hash=False)

    @classmethod
    def load(cls, directory: str) -> "Schema":
        path = os.path.join(directory, "schema.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no schema.json; prepare the dataset first (python -m data_prep...)")
        with open(path) as f:
            raw = json.load(f)
        s = cls.from_config(raw)
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
        return cls(features=feats, num_domains=int(cfg["num_domains"]),
                   domain_names=tuple(cfg.get("domain_names", ())) or tuple(str(i) for i in range(cfg["num_domains"])),
                   label_keys=tuple(cfg.get("label_keys", ("label",))), domain_key=cfg.get("domain_key", "domain_id"))

    def to_config(self) -> dict[str, Any]:
        return {"features": [dataclasses.asdict(f) for f in self.features], "num_domains": self.num_domains,
                "domain_names": list(self.domain_names), "label_keys": list(self.label_keys),
                "domain_key": self.domain_key}

    @property
    def categorical(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == "categorical")

    @property
    def dense(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == "dense")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features) + (self.domain_key,)

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
