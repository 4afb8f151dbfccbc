"""Dataset writers: the whole-array ``write_dataset`` and the resumable streamed output.

Layout of every prepared dataset::

    <output_dir>/
      schema.json                   written last: marks the output complete
      vocab/<feature>.txt           line i = raw value of id i (line 0 = <OOV>)
      domain_<k>/<split>-<i>-of-<n>.tfrecord

All output is written into a temporary sibling directory (``AtomicDir``) or a locked
work directory (``WorkDir``) that is renamed into place only when complete, so an
interrupted run never leaves a half-written dataset, and a rerun with the same inputs and
options reuses the finished directory (``existing_output``) or resumes (``WorkDir``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from mdr_base.atomic import AtomicDir, atomic_path, replace_dir, write_json_atomic
from data_prep.base import (OOV_TOKEN, SCHEMA_FILE, SPLITS, DataError, FeatureDef, check_finite,
                            check_splits_not_empty, log)
from data_prep.schema_builder import streamed_schema, whole_array_schema
from data_prep.tfrecord import shard_name


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
        # deterministic: map entries sorted by key (the default order varies between processes)
        yield tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString(deterministic=True)


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
    check_finite({**columns, **labels}, what=dataset)
    check_splits_not_empty({s: int((split == i).sum()) for i, s in enumerate(SPLITS)}, f"{dataset} → {output_dir}")
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
        schema = whole_array_schema(dataset, fp, features, domain_names, label_names, num_shards,
                                    counts, primary, metadata)
        write_json_atomic(os.path.join(tmp, SCHEMA_FILE), schema)
    progress(f"wrote {n} examples to {output_dir} in {time.time() - t0:.1f}s")
    return schema


class WorkDir:
    """Resumable work directory ``<output_dir>.work-<fp>`` (fp = fingerprint of inputs+options).

    Holds intermediate results and the dataset being written (``out/``). Each finished
    unit of work leaves a marker (``markers/<name>.json``), so a rerun after an
    interruption skips finished units. An exclusive lock stops two runs sharing it.
    ``commit()`` renames ``out/`` to the output directory (replacing an older one) and
    deletes the work directory.
    """

    def __init__(self, output_dir: str, fp: str):
        self.output_dir = os.path.abspath(output_dir)
        self.path = f"{self.output_dir}.work-{fp}"
        self.out = os.path.join(self.path, "out")
        os.makedirs(os.path.join(self.path, "markers"), exist_ok=True)
        os.makedirs(self.out, exist_ok=True)
        self._lock = open(os.path.join(self.path, "lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock.close()
            raise DataError(f"{self.path} is in use by another run (lock held)") from e
        parent = os.path.dirname(self.output_dir)
        stale = [p for p in os.listdir(parent) if p.startswith(os.path.basename(self.output_dir) + ".work-")
                 and os.path.join(parent, p) != self.path]
        for p in stale:
            _remove_stale_workdir(os.path.join(parent, p))

    def file(self, *parts: str) -> str:
        path = os.path.join(self.path, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def _marker(self, name: str) -> str:
        return os.path.join(self.path, "markers", name.replace("/", "_") + ".json")

    def done(self, name: str) -> dict | None:
        """The info saved with a finished unit, or None."""
        p = self._marker(name)
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f)

    def mark(self, name: str, info: dict | None = None) -> None:
        write_json_atomic(self._marker(name), info or {})

    def commit(self, keep: bool = False) -> None:
        replace_dir(self.out, self.output_dir)
        self.release()
        if not keep:
            shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


def _remove_stale_workdir(path: str) -> None:
    """Deletes the work directory of a run with other inputs or options unless a run holds its lock.

    Its fingerprint no longer matches the input, so no rerun can resume from it.
    """
    try:
        lock = open(os.path.join(path, "lock"), "a")
    except OSError:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log(f"note: {path} is the work directory of a running job with other inputs or options; kept")
        lock.close()
        return
    try:
        shutil.rmtree(path, ignore_errors=True)
        log(f"removed {path}: work directory of an earlier run with other inputs or options")
    finally:
        lock.close()


def write_vocab_file(path: str, values: Iterable[Any]) -> None:
    """vocab/<feature>.txt: line i = raw value of id i; line 0 is ``<OOV>``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(OOV_TOKEN + "\n")
        for v in values:
            if isinstance(v, (bytes, np.bytes_)):
                v = bytes(v).decode("utf-8", "replace")
            f.write(str(v).replace("\n", " ") + "\n")


def finish_streamed_dataset(
    work: WorkDir,
    *,
    dataset: str,
    features: Sequence[FeatureDef],
    domain_names: Sequence[str],
    label_keys: Sequence[str],
    counts: dict,
    num_shards: int,
    fp: str,
    metadata: dict[str, Any],
    keep_work: bool = False,
    progress: Callable[[str], None] = log,
    splits: Sequence[str] = SPLITS,
) -> dict:
    """Completes a dataset written into ``work.out`` (shards + vocab/): checks every shard
    file (of ``splits``: the splits written as TFRecords), writes schema.json (same keys as
    ``write_dataset``, plus per-label positive counts) and renames it into place atomically."""
    for d in range(len(domain_names)):
        for s in splits:
            for i in range(num_shards):
                p = os.path.join(work.out, f"domain_{d}", shard_name(s, i, num_shards))
                if not os.path.exists(p):
                    raise DataError(f"internal error: shard {p} was not written")
    check_splits_not_empty({s: sum(per[s]["examples"] for per in counts.values()) for s in SPLITS},
                           f"{dataset} → {work.output_dir}")
    schema = streamed_schema(dataset=dataset, fp=fp, features=features, domain_names=domain_names,
                             label_keys=label_keys, counts=counts, num_shards=num_shards, metadata=metadata)
    write_json_atomic(os.path.join(work.out, SCHEMA_FILE), schema)
    work.commit(keep=keep_work)
    progress(f"wrote {schema['num_examples']} examples to {work.output_dir}")
    return schema
