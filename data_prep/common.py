"""Shared machinery for every dataset preprocessor.

One writer for all datasets: a pandas frame with categorical id columns (0 = OOV),
dense float columns, a contiguous ``domain_id`` and labels becomes

    <output_dir>/
      schema.json                   written last: marks the output complete
      vocab/<feature>.txt           line i = raw value of id i (line 0 = <OOV>)
      domain_<k>/<split>-<i>-of-<n>.tfrecord

All output is written into a temporary sibling directory that is renamed into place
only when complete, so an interrupted run never leaves a half-written dataset, and
a rerun with the same inputs and options reuses the finished directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

SCHEMA_FILE = "schema.json"
SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """Bad input data: the message names the file, line or field and what was expected."""


def log(msg: str) -> None:
    print(f"[data_prep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (options + source checksums)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass
class FeatureDef:
    """One model input column as stored in the TFRecords.

    Attributes:
      name: column / tf.Example key.
      kind: "categorical" (int64 id, 0 = OOV/missing) or "dense" (float32).
      vocab_size: number of ids incl. 0, for categorical features.
      group: "user", "item", "context" or "domain" (domain-side features feed the
        domain-aware parts of models: PEPNet's EPNet, MI-DPG's scenario-aware input).
      is_id: whether the feature is an id feature (PPNet's gate prior).
    """

    name: str
    kind: str
    vocab_size: int = 0
    group: str = "context"
    is_id: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def encode_categorical(
    values: pd.Series,
    name: str,
    fit_mask: np.ndarray | None = None,
    min_freq: int = 1,
) -> tuple[np.ndarray, list[str]]:
    """Map raw values to ids 1..V (0 = OOV), vocabulary sorted by descending frequency.

    Args:
      values: raw column.
      name: feature name (for error messages).
      fit_mask: rows whose values define the vocabulary (e.g. the train split);
        all rows when None.
      min_freq: values seen fewer times in the fitting rows map to 0.

    Returns:
      (ids int64 array, vocabulary list whose index is the id; entry 0 is "<OOV>").
    """
    s = values.astype(str)
    fit = s if fit_mask is None else s[fit_mask]
    counts = fit.value_counts(sort=False)
    counts = counts[counts >= min_freq]
    # Deterministic order: frequency desc, then value.
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab = ["<OOV>"] + [k for k, _ in order]
    index = {v: i for i, v in enumerate(vocab) if i > 0}
    ids = s.map(index).fillna(0).to_numpy(dtype=np.int64)
    if len(vocab) < 2:
        raise DataError(f"feature {name!r}: empty vocabulary (no value reaches min_freq={min_freq})")
    return ids, vocab


def remap_domains(raw: pd.Series, order: Sequence[Any] | None = None) -> tuple[np.ndarray, list[str]]:
    """Remap raw domain values to contiguous ids 0..K-1.

    Args:
      raw: raw domain value per row.
      order: the raw values in id order; sorted unique values when None. Values not
        in ``order`` are an error (the caller filters rows first).
    """
    values = list(order) if order is not None else sorted(raw.unique().tolist())
    index = {v: i for i, v in enumerate(values)}
    unknown = set(raw.unique().tolist()) - set(index)
    if unknown:
        raise DataError(f"domain values {sorted(map(str, unknown))[:5]} are not in the domain map {values}")
    return raw.map(index).to_numpy(dtype=np.int64), [str(v) for v in values]


def random_split(n: int, ratios: Sequence[float], seed: int) -> np.ndarray:
    """Seeded random split; returns an int8 array with 0=train, 1=valid, 2=test."""
    if len(ratios) != 3 or abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) < 0:
        raise DataError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(ratios[0] * n))
    n_valid = int(round(ratios[1] * n))
    split = np.empty(n, dtype=np.int8)
    split[perm[:n_train]] = 0
    split[perm[n_train:n_train + n_valid]] = 1
    split[perm[n_train + n_valid:]] = 2
    return split


def stratified_split(labels: np.ndarray, groups: np.ndarray, ratios: Sequence[float], seed: int) -> np.ndarray:
    """Seeded split stratified by (group, label): MLoRA's per-domain stratified 60/20/20."""
    split = np.empty(len(labels), dtype=np.int8)
    rng = np.random.default_rng(seed)
    keys = groups.astype(np.int64) * 2 + (labels > 0.5)
    for key in np.unique(keys):
        idx = np.flatnonzero(keys == key)
        idx = idx[rng.permutation(len(idx))]
        n_train = int(round(ratios[0] * len(idx)))
        n_valid = int(round(ratios[1] * len(idx)))
        split[idx[:n_train]] = 0
        split[idx[n_train:n_train + n_valid]] = 1
        split[idx[n_train + n_valid:]] = 2
    return split


def _serialize_rows(
    cat: dict[str, np.ndarray], dense: dict[str, np.ndarray], domain: np.ndarray, labels: dict[str, np.ndarray]
) -> Iterable[bytes]:
    import tensorflow as tf  # local: data_prep's CSV logic should not need TF at import

    feat = tf.train.Feature
    i64 = tf.train.Int64List
    f32 = tf.train.FloatList
    n = len(domain)
    for i in range(n):
        f = {k: feat(int64_list=i64(value=[int(v[i])])) for k, v in cat.items()}
        f.update({k: feat(float_list=f32(value=[float(v[i])])) for k, v in dense.items()})
        f["domain_id"] = feat(int64_list=i64(value=[int(domain[i])]))
        f.update({k: feat(float_list=f32(value=[float(v[i])])) for k, v in labels.items()})
        yield tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()


class AtomicDir:
    """Context manager: yields a temp dir next to ``final``; renames it into place on success."""

    def __init__(self, final: str):
        self.final = os.path.abspath(final)
        self.tmp = ""

    def __enter__(self) -> str:
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=os.path.basename(self.final) + ".tmp-", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if os.path.exists(self.final):
            old = self.final + f".old-{os.getpid()}"
            os.rename(self.final, old)
            os.rename(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.final)


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def existing_output(output_dir: str, fp: str) -> dict | None:
    """Returns the schema of a finished output with the same fingerprint, else None."""
    path = os.path.join(output_dir, SCHEMA_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        schema = json.load(f)
    return schema if schema.get("fingerprint") == fp else None


def write_dataset(
    output_dir: str,
    *,
    dataset: str,
    features: Sequence[FeatureDef],
    columns: dict[str, np.ndarray],
    domain: np.ndarray,
    domain_names: Sequence[str],
    labels: dict[str, np.ndarray],
    split: np.ndarray,
    vocabs: dict[str, list[str]],
    fp: str,
    metadata: dict[str, Any],
    num_shards: int = 1,
    progress: Callable[[str], None] = log,
) -> dict:
    """Writes TFRecords per (domain, split) and schema.json, atomically.

    Args:
      output_dir: final directory (replaced atomically if it exists).
      dataset: dataset name recorded in the schema.
      features: model input features in order (excludes domain_id and labels).
      columns: feature name -> array (int64 ids or float32 values), one per row.
      domain: contiguous domain id per row.
      domain_names: raw domain value per id.
      labels: label name -> float array (first one is the primary label).
      split: 0/1/2 = train/valid/test per row.
      vocabs: categorical feature -> vocabulary (index = id).
      fp: fingerprint of source checksums + options (reuse key).
      metadata: extra JSON-able provenance (source files, options, seed, ...).
      num_shards: shards per (domain, split) file set.

    Returns:
      The schema dictionary that was written.
    """
    import tensorflow as tf

    n = len(domain)
    for name, arr in list(columns.items()) + list(labels.items()):
        if len(arr) != n:
            raise DataError(f"column {name!r} has {len(arr)} rows, expected {n}")
    num_domains = len(domain_names)
    if n and (domain.min() < 0 or domain.max() >= num_domains):
        raise DataError(f"domain ids must lie in 0..{num_domains - 1}")
    label_names = list(labels)
    primary = labels[label_names[0]]
    counts: dict[str, dict[str, dict[str, float]]] = {}
    t0 = time.time()
    with AtomicDir(output_dir) as tmp:
        os.makedirs(os.path.join(tmp, "vocab"))
        for name, vocab in vocabs.items():
            with open(os.path.join(tmp, "vocab", f"{name}.txt"), "w", encoding="utf-8") as f:
                for v in vocab:
                    f.write(str(v).replace("\n", " ") + "\n")
        written = 0
        for d in range(num_domains):
            ddir = os.path.join(tmp, f"domain_{d}")
            os.makedirs(ddir)
            counts[str(d)] = {}
            for s, sname in enumerate(SPLITS):
                idx = np.flatnonzero((domain == d) & (split == s))
                counts[str(d)][sname] = {
                    "examples": int(len(idx)),
                    "positives": int((primary[idx] > 0.5).sum()),
                }
                shards = np.array_split(idx, num_shards)
                for i, sidx in enumerate(shards):
                    path = os.path.join(ddir, f"{sname}-{i:05d}-of-{num_shards:05d}.tfrecord")
                    with tf.io.TFRecordWriter(path) as w:
                        for rec in _serialize_rows(
                            {f.name: columns[f.name][sidx] for f in features if f.kind == "categorical"},
                            {f.name: columns[f.name][sidx] for f in features if f.kind == "dense"},
                            domain[sidx],
                            {k: v[sidx] for k, v in labels.items()},
                        ):
                            w.write(rec)
                    written += len(sidx)
                progress(f"domain {d} ({domain_names[d]}) {sname}: {len(idx)} examples "
                         f"[{written}/{n} written, {time.time() - t0:.1f}s]")
        schema = {
            "schema_version": SCHEMA_VERSION,
            "dataset": dataset,
            "fingerprint": fp,
            "features": [f.to_json() for f in features],
            "domain_key": "domain_id",
            "num_domains": num_domains,
            "domain_names": list(domain_names),
            "label_keys": label_names,
            "num_shards": num_shards,
            "counts": counts,
            "num_examples": int(n),
            "positive_rate": float((primary > 0.5).mean()) if n else 0.0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **metadata,
        }
        write_json_atomic(os.path.join(tmp, SCHEMA_FILE), schema)
    progress(f"wrote {n} examples to {output_dir} in {time.time() - t0:.1f}s")
    return schema
