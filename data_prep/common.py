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


def check_split_ratios(split_ratios: Sequence[float]) -> list[float]:
    """Validates ``--split_ratios`` (three non-negative fractions summing to 1); returns floats."""
    ratios = [float(x) for x in split_ratios]
    if len(ratios) != 3 or abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) < 0:
        raise DataError(f"--split_ratios={ratios}: expected three non-negative fractions summing to 1")
    return ratios


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
        # deterministic: map entries sorted by key (the default order varies between processes)
        yield tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString(deterministic=True)


def check_finite(arrays: dict[str, np.ndarray], row_offset: int = 0, what: str = "") -> None:
    """Raises ``DataError`` naming the column and row of the first NaN / inf in float ``arrays``.

    Non-finite feature values or labels would train a model to ``loss nan`` and reach the
    results table silently; they are rejected where the dataset is written.

    Args:
      arrays: column name -> 1-D array (non-float columns are skipped).
      row_offset: row number of element 0 (for writers that receive batches).
      what: where the rows come from, for the message (e.g. the input file).
    """
    for name, arr in arrays.items():
        a = np.asarray(arr)
        if a.dtype.kind != "f":
            continue
        bad = ~np.isfinite(a)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{what + ': ' if what else ''}column {name!r}: non-finite value {a[i]!r} at row "
                            f"{row_offset + i} ({int(bad.sum())} non-finite values in this column); fix or drop "
                            "these rows before writing the dataset")


#: ``--allow_empty_splits`` of the command-line scripts: an empty split is a warning, not an error.
ALLOW_EMPTY_SPLITS = False


def check_splits_not_empty(examples_per_split: dict[str, int], what: str) -> None:
    """Raises ``DataError`` when a split (over all domains) has no examples.

    An empty valid or test split would train without early stopping or report metrics of
    nothing with exit status 0. With ``ALLOW_EMPTY_SPLITS`` it is a loud warning instead.
    """
    empty = [s for s in SPLITS if examples_per_split.get(s, 0) == 0]
    if not empty:
        return
    msg = (f"{what}: " + ", ".join(f"split {s!r} is empty" for s in empty)
           + f" (examples per split: {dict(examples_per_split)}); check the input files and split options")
    if ALLOW_EMPTY_SPLITS:
        log("WARNING: " + msg + " (kept: --allow_empty_splits)")
        return
    raise DataError(msg + ", or pass --allow_empty_splits")


def mkdtemp_honouring_umask(prefix: str, dir: str) -> str:
    """``tempfile.mkdtemp`` whose directory gets the mode the umask gives (mkdtemp's is 0700).

    The temp directory is renamed into place as the final output, which other users
    (e.g. TF Serving running as another account) must be able to read.
    """
    tmp = tempfile.mkdtemp(prefix=prefix, dir=dir)
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    return tmp


class AtomicDir:
    """Context manager: yields a temp dir next to ``final``; renames it into place on success."""

    def __init__(self, final: str):
        self.final = os.path.abspath(final)
        self.tmp = ""

    def __enter__(self) -> str:
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        self.tmp = mkdtemp_honouring_umask(os.path.basename(self.final) + ".tmp-", parent)
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


def whole_array_schema(dataset: str, fp: str, features, domain_names, label_names, num_shards: int,
                       counts: dict, primary: np.ndarray, metadata: dict,
                       sequences: Sequence[dict] = ()) -> dict:
    """The ``schema.json`` dict of a whole-array writer (``write_dataset``, ``data_prep.sequences``).

    ``primary`` is the first label column (for the positive rate); ``sequences`` adds the
    sequence features' entries after ``features`` when there are any.
    """
    n = len(primary)
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
        "label_keys": label_names,
        "num_shards": num_shards,
        "counts": counts,
        "num_examples": int(n),
        "positive_rate": float((primary > 0.5).mean()) if n else 0.0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **metadata,
    })
    return schema


# =====================================================================================
# Streaming machinery (issue 5: Ali-CCP, IJCAI-18, KuaiRand): datasets too large for
# ``write_dataset``'s whole-array interface. Same on-disk layout and schema.json keys.
#
# - ``encode_examples`` / ``frame_tfrecords``: column-wise tf.train.Example encoding and
#   TFRecord framing in NumPy (no per-row Python, no TensorFlow import: worker processes
#   stay small). Varints are written at a fixed width per column and batch (protobuf
#   parsers accept over-long varints), so every record of a batch has the same length
#   and a batch is one [N, L] byte matrix; CRC32C is computed column-wise over it.
# - ``ShardSetWriter`` / ``StreamingWriter``: append batches to per-(domain, split)
#   shards, files appear only when complete.
# - ``WorkDir``: a deterministic, locked work directory ``<output_dir>.work-<fp>`` with
#   per-unit completion markers, so an interrupted run resumes; the finished dataset is
#   renamed into place by ``finish_streamed_dataset``.
# - ``StreamSource``: raw files as downloaded (folder, .zip, .tar[.gz], .gz), streamed.
# - ``ValueCounts`` / ``Vocab``: vectorised frequency counting and id encoding.
# =====================================================================================

import fcntl
import gzip
import io
import multiprocessing
import tarfile
import zipfile
import zlib

OOV_TOKEN = "<OOV>"


def _crc32c_tables() -> np.ndarray:
    """Slicing-by-4 tables of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & np.uint32(1), (t >> np.uint32(1)) ^ np.uint32(0x82F63B78), t >> np.uint32(1))
    tables = np.empty((4, 256), np.uint32)
    tables[0] = t
    for k in range(1, 4):
        tables[k] = (tables[k - 1] >> np.uint32(8)) ^ t[tables[k - 1] & np.uint32(0xFF)]
    return tables


_CRC_T = _crc32c_tables()


def _crc32c_16bit_tables() -> tuple[np.ndarray, np.ndarray]:
    """Two 65,536-entry tables that advance a CRC-32C by one 4-byte word in two look-ups."""
    i = np.arange(65536)
    t0, t1, t2, t3 = _CRC_T
    return (t3[i & 0xFF] ^ t2[i >> 8]).astype(np.uint32), (t1[i & 0xFF] ^ t0[i >> 8]).astype(np.uint32)


_CRC_LO, _CRC_HI = _crc32c_16bit_tables()


def crc32c_rows(rows: np.ndarray) -> np.ndarray:
    """CRC-32C of every row of a [N, L] uint8 matrix (all rows have the same length).

    Column-wise over the rows: one step per 4-byte word (slicing-by-4, merged into two
    16-bit tables), then the 0-3 tail bytes one by one.
    """
    n, width = rows.shape
    q = width // 4
    crc = np.full(n, 0xFFFFFFFF, np.uint32)
    # little-endian words (all supported platforms are little endian)
    words = np.ascontiguousarray(np.ascontiguousarray(rows[:, :4 * q]).view("<u4").T)  # [q, N]
    for j in range(q):
        halves = (crc ^ words[j]).view(np.uint16).reshape(n, 2)
        crc = _CRC_LO[halves[:, 0]] ^ _CRC_HI[halves[:, 1]]
    t0 = _CRC_T[0]
    for j in range(4 * q, width):
        crc = t0[(crc ^ rows[:, j]) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


def _masked_crc(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint64)
    return ((((crc >> np.uint64(15)) | (crc << np.uint64(17))) + np.uint64(0xA282EAD8)) & np.uint64(0xFFFFFFFF)
            ).astype(np.uint32)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _varint_matrix(values: np.ndarray) -> np.ndarray:
    """[N, k] uint8: each int64 as a k-byte varint, k = the widest value of the batch.

    Shorter values are padded with zero-payload continuation bytes (0x80 … 0x00), an
    over-long but valid encoding that every protobuf parser (and TF's Example parser)
    accepts. Negative values take 10 bytes (two's complement), as in protobuf.
    """
    v = np.asarray(values).astype(np.int64).view(np.uint64)
    if v.size == 0:
        return np.zeros((0, 1), np.uint8)
    need = np.ones(v.shape, np.int64)
    for i in range(1, 10):
        need += (v >> np.uint64(7 * i)) != 0
    k = int(need.max())
    out = np.empty((len(v), k), np.uint8)
    for i in range(k):
        b = ((v >> np.uint64(7 * i)) & np.uint64(0x7F)).astype(np.uint8)
        out[:, i] = b | np.uint8(0x80) if i < k - 1 else b
    return out


def encode_examples(int_cols: Sequence[tuple[str, np.ndarray]],
                    float_cols: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """Serialises N ``tf.train.Example`` records column by column.

    Each record holds one int64 (``Int64List``) per ``int_cols`` entry and one float32
    (``FloatList``) per ``float_cols`` entry, keyed by name. Equivalent to building
    ``tf.train.Example`` protos row by row (tests parse the output with
    ``tf.train.Example.FromString`` and ``tf.io.parse_example``), about two orders of
    magnitude faster in Python.

    Returns:
      [N, L] uint8 matrix: row i is the serialised example i (all rows have length L).
    """
    n = len(int_cols[0][1]) if int_cols else len(float_cols[0][1])
    parts: list[np.ndarray] = []
    for name, values in int_cols:
        key = name.encode()
        if len(key) > 100:
            raise DataError(f"feature name {name!r} is too long (> 100 bytes)")
        if len(values) != n:
            raise DataError(f"column {name!r} has {len(values)} rows, expected {n}")
        vm = _varint_matrix(values)
        k = vm.shape[1]
        # map entry: key (field 1) + Feature (field 2) = int64_list (field 3) = packed value (field 1)
        entry = bytes([0x0A, len(key)]) + key + bytes([0x12, k + 4, 0x1A, k + 2, 0x0A, k])
        prefix = bytes([0x0A, len(entry) + k]) + entry
        parts.append(np.broadcast_to(np.frombuffer(prefix, np.uint8), (n, len(prefix))))
        parts.append(vm)
    for name, values in float_cols:
        key = name.encode()
        if len(key) > 100:
            raise DataError(f"feature name {name!r} is too long (> 100 bytes)")
        if len(values) != n:
            raise DataError(f"column {name!r} has {len(values)} rows, expected {n}")
        entry = bytes([0x0A, len(key)]) + key + bytes([0x12, 8, 0x12, 6, 0x0A, 4])
        prefix = bytes([0x0A, len(entry) + 4]) + entry
        parts.append(np.broadcast_to(np.frombuffer(prefix, np.uint8), (n, len(prefix))))
        parts.append(np.ascontiguousarray(np.asarray(values, dtype="<f4")).view(np.uint8).reshape(n, 4))
    body_len = sum(p.shape[1] for p in parts)
    head = np.frombuffer(b"\x0a" + _varint(body_len), np.uint8)
    return np.concatenate([np.broadcast_to(head, (n, len(head)))] + parts, axis=1)


def frame_tfrecords(records: np.ndarray) -> bytes:
    """TFRecord file bytes for the rows of a [N, L] record matrix.

    Each record is framed as ``uint64 length | uint32 masked_crc32c(length) | data |
    uint32 masked_crc32c(data)`` (little endian), the format ``tf.io.TFRecordWriter``
    writes and ``tf.data.TFRecordDataset`` checks.
    """
    n, width = records.shape
    if n == 0:
        return b""
    length = np.frombuffer(np.uint64(width).tobytes(), np.uint8)
    len_crc = _masked_crc(crc32c_rows(length[None, :]))[0]
    out = np.empty((n, 12 + width + 4), np.uint8)
    out[:, :8] = length
    out[:, 8:12] = np.frombuffer(np.uint32(len_crc).tobytes(), np.uint8)
    out[:, 12:12 + width] = records
    out[:, 12 + width:] = _masked_crc(crc32c_rows(records)).astype("<u4").view(np.uint8).reshape(n, 4)
    return out.tobytes()


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _empty_counts(num_domains: int, label_keys: Sequence[str]) -> dict:
    return {str(d): {s: {"examples": 0, "positives": 0, "label_positives": {k: 0 for k in label_keys}}
                     for s in SPLITS} for d in range(num_domains)}


def merge_counts(total: dict, part: dict) -> dict:
    """Adds per-(domain, split) counts ``part`` into ``total`` (both as ``_empty_counts``)."""
    for d, per in part.items():
        for s, c in per.items():
            t = total[d][s]
            t["examples"] += c["examples"]
            t["positives"] += c["positives"]
            for k, v in c["label_positives"].items():
                t["label_positives"][k] += v
    return total


class ShardSetWriter:
    """Writes shard ``index`` (of ``num_shards``) of every (domain, split) in ``splits``.

    Batches are appended to ``<root>/domain_<d>/<split>-<index>-of-<n>.tfrecord.part``;
    ``close()`` creates the files of (domain, split) pairs that got no rows (empty
    shards) and renames every part file into place, so a shard file exists only when it
    is complete.
    """

    def __init__(self, root: str, index: int, num_shards: int, num_domains: int, splits: Sequence[str],
                 int_features: Sequence[str], float_features: Sequence[str], label_keys: Sequence[str],
                 domain_key: str = "domain_id"):
        self.root, self.index, self.num_shards = root, index, num_shards
        self.num_domains, self.splits = num_domains, list(splits)
        self.int_features, self.float_features = list(int_features), list(float_features)
        self.label_keys, self.domain_key = list(label_keys), domain_key
        self.counts = _empty_counts(num_domains, label_keys)
        self._files: dict[tuple[int, str], Any] = {}
        self.rows_seen = 0  # rows received so far (row numbers in error messages)

    def _path(self, d: int, split: str) -> str:
        return os.path.join(self.root, f"domain_{d}", shard_name(split, self.index, self.num_shards))

    def write(self, columns: dict[str, np.ndarray], domain: np.ndarray, split: np.ndarray,
              labels: dict[str, np.ndarray]) -> None:
        """Appends a batch: feature columns, domain ids, split ids (0/1/2) and float labels."""
        n = len(domain)
        if n == 0:
            return
        if domain.min() < 0 or domain.max() >= self.num_domains:
            raise DataError(f"domain ids must lie in 0..{self.num_domains - 1}")
        check_finite({**{k: columns[k] for k in self.float_features}, **labels}, self.rows_seen)
        self.rows_seen += n
        records = encode_examples(
            [(k, columns[k]) for k in self.int_features] + [(self.domain_key, domain)],
            [(k, columns[k]) for k in self.float_features] + [(k, labels[k]) for k in self.label_keys])
        key = domain.astype(np.int64) * 3 + split.astype(np.int64)
        order = np.argsort(key, kind="stable")
        bounds = np.searchsorted(key[order], np.arange(self.num_domains * 3 + 1))
        primary = labels[self.label_keys[0]]
        for g in range(self.num_domains * 3):
            lo, hi = bounds[g], bounds[g + 1]
            if lo == hi:
                continue
            d, s = divmod(g, 3)
            sname = SPLITS[s]
            if sname not in self.splits:
                raise DataError(f"shard writer {self.index} does not write split {sname!r}")
            idx = order[lo:hi]
            f = self._files.get((d, sname))
            if f is None:
                os.makedirs(os.path.join(self.root, f"domain_{d}"), exist_ok=True)
                f = self._files[(d, sname)] = open(self._path(d, sname) + ".part", "wb")
            f.write(frame_tfrecords(records[idx]))
            c = self.counts[str(d)][sname]
            c["examples"] += int(hi - lo)
            c["positives"] += int((primary[idx] > 0.5).sum())
            for k in self.label_keys:
                c["label_positives"][k] += int((labels[k][idx] > 0.5).sum())

    def close(self) -> dict:
        """Completes every shard file (empty where no rows came) and returns the counts."""
        for d in range(self.num_domains):
            for s in self.splits:
                path = self._path(d, s)
                f = self._files.pop((d, s), None)
                if f is None:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    f = open(path + ".part", "wb")
                f.close()
                os.replace(path + ".part", path)
        return self.counts

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
            try:
                os.remove(f.name)
            except OSError:
                pass
        self._files.clear()


class StreamingWriter:
    """Sequential-stream writer: rows go round-robin (by running row index) to ``num_shards``
    shards of every (domain, split); same layout as ``write_dataset``."""

    def __init__(self, root: str, num_shards: int, num_domains: int, int_features: Sequence[str],
                 float_features: Sequence[str], label_keys: Sequence[str]):
        self.num_shards = num_shards
        self.writers = [ShardSetWriter(root, i, num_shards, num_domains, SPLITS, int_features, float_features,
                                       label_keys) for i in range(num_shards)]
        self.rows = 0
        self.label_keys = list(label_keys)

    def write(self, columns: dict[str, np.ndarray], domain: np.ndarray, split: np.ndarray,
              labels: dict[str, np.ndarray]) -> None:
        n = len(domain)
        check_finite({**{k: columns[k] for k in self.writers[0].float_features}, **labels}, self.rows)
        shard = (self.rows + np.arange(n)) % self.num_shards
        self.rows += n
        for i, w in enumerate(self.writers):
            sel = np.flatnonzero(shard == i)
            if len(sel):
                w.write({k: v[sel] for k, v in columns.items()}, domain[sel], split[sel],
                        {k: v[sel] for k, v in labels.items()})

    def close(self) -> dict:
        total = _empty_counts(self.writers[0].num_domains, self.label_keys)
        for w in self.writers:
            merge_counts(total, w.close())
        return total

    def abort(self) -> None:
        for w in self.writers:
            w.abort()


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
        if os.path.exists(self.output_dir):
            old = f"{self.output_dir}.old-{os.getpid()}"
            os.rename(self.output_dir, old)
            os.rename(self.out, self.output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.out, self.output_dir)
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
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(OOV_TOKEN + "\n")
        for v in values:
            if isinstance(v, (bytes, np.bytes_)):
                v = bytes(v).decode("utf-8", "replace")
            f.write(str(v).replace("\n", " ") + "\n")
    os.replace(tmp, path)


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
) -> dict:
    """Completes a dataset written into ``work.out`` (shards + vocab/): checks every shard
    file, writes schema.json (same keys as ``write_dataset``, plus per-label positive
    counts) and renames it into place atomically."""
    for d in range(len(domain_names)):
        for s in SPLITS:
            for i in range(num_shards):
                p = os.path.join(work.out, f"domain_{d}", shard_name(s, i, num_shards))
                if not os.path.exists(p):
                    raise DataError(f"internal error: shard {p} was not written")
    check_splits_not_empty({s: sum(per[s]["examples"] for per in counts.values()) for s in SPLITS},
                           f"{dataset} → {work.output_dir}")
    n = sum(c["examples"] for per in counts.values() for c in per.values())
    pos = sum(c["positives"] for per in counts.values() for c in per.values())
    schema = {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "fingerprint": fp,
        "features": [f.to_json() for f in features],
        "domain_key": "domain_id",
        "num_domains": len(domain_names),
        "domain_names": [str(x) for x in domain_names],
        "label_keys": list(label_keys),
        "num_shards": num_shards,
        "counts": counts,
        "num_examples": int(n),
        "positive_rate": float(pos / n) if n else 0.0,
        "domain_positive_rates": {
            d: {s: (c["positives"] / c["examples"] if c["examples"] else None) for s, c in per.items()}
            for d, per in counts.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **metadata,
    }
    write_json_atomic(os.path.join(work.out, SCHEMA_FILE), schema)
    work.commit(keep=keep_work)
    progress(f"wrote {n} examples to {work.output_dir}")
    return schema


class StreamSource:
    """Raw files as downloaded: a folder (searched two levels deep), a single file, a
    ``.zip``, a ``.tar``/``.tar.gz``/``.tgz`` archive, or a folder holding such archives.
    A file may also be gzip-compressed on its own (``name.gz``). Files are found by base
    name and opened as binary streams, decompressing on the fly."""

    ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz")
    #: Default of ``full_hash`` (``--full_hash`` of the command-line scripts sets it).
    FULL_HASH = False
    #: Files up to this size are always hashed whole by ``identity``.
    WHOLE_HASH_MAX = 64 << 20

    def __init__(self, path: str, full_hash: bool | None = None):
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file or directory")
        self.full_hash = self.FULL_HASH if full_hash is None else bool(full_hash)
        self.path = os.path.abspath(path)
        self._plain: dict[str, str] = {}  # base name -> file path
        self._archives: list[str] = []
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                depth = os.path.relpath(root, path).count(os.sep) + (root != path)
                if depth >= 2:
                    dirs[:] = []
                for fn in sorted(files):
                    full = os.path.join(root, fn)
                    if fn.endswith(self.ARCHIVES):
                        self._archives.append(full)
                    self._plain.setdefault(fn, full)
        elif path.endswith(self.ARCHIVES):
            self._archives.append(self.path)
        else:
            self._plain[os.path.basename(path)] = self.path
        self._members: dict[str, tuple[str, str]] | None = None

    def _archive_members(self) -> dict[str, tuple[str, str]]:
        if self._members is None:
            self._members = {}
            for a in self._archives:
                if a.endswith(".zip"):
                    if not zipfile.is_zipfile(a):
                        raise DataError(f"{a}: not a valid zip archive")
                    with zipfile.ZipFile(a) as z:
                        names = [i.filename for i in z.infolist() if not i.is_dir()]
                else:
                    try:
                        with tarfile.open(a) as t:
                            names = [m.name for m in t.getmembers() if m.isfile()]
                    except (tarfile.TarError, OSError, EOFError) as e:
                        raise DataError(f"{a}: not a readable tar archive ({e})") from e
                for m in names:
                    self._members.setdefault(os.path.basename(m), (a, m))
        return self._members

    def locate(self, name: str) -> tuple[str, str | None, bool] | None:
        """(file or archive path, member or None, gzip-compressed) of ``name``, else None."""
        for cand, gz in ((name, False), (name + ".gz", True)):
            if cand in self._plain:
                return self._plain[cand], None, gz
        if self._archives:
            members = self._archive_members()
            for cand, gz in ((name, False), (name + ".gz", True)):
                if cand in members:
                    a, m = members[cand]
                    return a, m, gz
        return None

    def has(self, name: str) -> bool:
        return self.locate(name) is not None

    def where(self, name: str) -> str:
        loc = self._require(name)
        return loc[0] if loc[1] is None else f"{loc[0]}!{loc[1]}"

    def _require(self, name: str) -> tuple[str, str | None, bool]:
        loc = self.locate(name)
        if loc is None:
            raise DataError(f"{self.path}: no file {name!r} (nor {name}.gz) in this folder, its subfolders "
                            "or the archives found there")
        return loc

    def open(self, name: str) -> io.BufferedIOBase:
        """Binary stream of the (decompressed) content of ``name``."""
        path, member, gz = self._require(name)
        where = self.where(name)
        try:
            if member is None:
                f = open(path, "rb")
            elif path.endswith(".zip"):
                f = zipfile.ZipFile(path).open(member)
            else:
                t = tarfile.open(path)
                f = t.extractfile(member)
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as e:
            raise DataError(f"{where}: cannot open ({type(e).__name__}: {e})") from e
        return CheckedReader(gzip.GzipFile(fileobj=f) if gz else f, where)

    def identity(self, name: str) -> dict:
        """Content identity for fingerprints: changes whenever the content changes.

        Files up to ``WHOLE_HASH_MAX`` (64 MiB), and every file with ``full_hash``, are
        hashed whole (sha256, ~0.45 GB/s on one core). Larger files get size, mtime
        (ns) and the sha256 of the first and last MiB: any edit that goes through the file
        system changes the mtime; only an edit that keeps size and mtime and spares both
        ends goes unseen (use ``full_hash`` / ``--full_hash`` then). Of a file inside an
        archive, the archive is identified.
        """
        path, member, _ = self._require(name)
        st = os.stat(path)
        size = st.st_size
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if self.full_hash or size <= self.WHOLE_HASH_MAX:
                for b in iter(lambda: f.read(16 << 20), b""):
                    h.update(b)
                return {"file": os.path.basename(path), "member": member, "size": size, "sha256": h.hexdigest()}
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
        return {"file": os.path.basename(path), "member": member, "size": size, "mtime_ns": st.st_mtime_ns,
                "head_tail_sha256": h.hexdigest()}

    def plain_path(self, name: str) -> str | None:
        """Path of ``name`` when it is an uncompressed file on disk (seekable), else None."""
        path, member, gz = self._require(name)
        return path if member is None and not gz else None

    def materialize(self, names: Sequence[str], dest_dir: str, progress: Callable[[str], None] = log) -> dict:
        """Plain on-disk paths of ``names``: files already plain are used in place; others are
        decompressed into ``dest_dir`` once (reused by later runs; one pass per tar archive)."""
        out: dict[str, str] = {}
        todo: dict[str, list[str]] = {}
        for name in names:
            plain = self.plain_path(name)
            target = os.path.join(dest_dir, name)
            if plain is not None:
                out[name] = plain
            elif os.path.exists(target):
                out[name] = target
            else:
                path, member, _ = self._require(name)
                todo.setdefault(path if member is not None and not path.endswith(".zip") else "", []).append(name)
        os.makedirs(dest_dir, exist_ok=True)
        for archive, group in todo.items():
            if archive:  # tar: stream once, pick the members we need
                wanted = {self._require(n)[1]: n for n in group}
                progress(f"extracting {sorted(wanted.values())} from {archive} (one pass) ...")
                with tarfile.open(archive, "r|*") as t:
                    for m in t:
                        if m.name in wanted:
                            self._copy(wanted[m.name], t.extractfile(m), dest_dir, progress)
            else:
                for n in group:
                    progress(f"decompressing {self.where(n)} into {dest_dir} ...")
                    with self.open(n) as f:
                        self._copy(n, f, dest_dir, progress, already_decompressed=True)
            for n in group:
                out[n] = os.path.join(dest_dir, n)
        return out

    def _copy(self, name: str, f, dest_dir: str, progress, already_decompressed: bool = False) -> None:
        target = os.path.join(dest_dir, name)
        gz = self._require(name)[2] and not already_decompressed
        src = CheckedReader(gzip.GzipFile(fileobj=f), self.where(name)) if gz else f
        try:
            with open(target + ".part", "wb") as out:
                shutil.copyfileobj(src, out, 16 << 20)
        except BaseException:
            if os.path.exists(target + ".part"):  # no half-extracted copy is left behind
                os.remove(target + ".part")
            raise
        os.replace(target + ".part", target)


class CheckedReader(io.BufferedIOBase):
    """A binary stream that turns read errors of compressed input (truncated gzip, bad zip
    member, corrupt tar) into ``DataError`` naming the user's file (``where``)."""

    _ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError)

    def __init__(self, raw, where: str):
        super().__init__()
        self._raw, self.where = raw, where

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except self._ERRORS as e:
            raise DataError(f"{self.where}: cannot read ({type(e).__name__}: {e}); truncated download or "
                            "not a valid compressed file?") from e

    def read(self, size: int | None = -1) -> bytes:
        return self._guard(self._raw.read, -1 if size is None else size)

    def read1(self, size: int = -1) -> bytes:
        return self._guard(getattr(self._raw, "read1", self._raw.read), size)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                super().close()


def byte_ranges(path: str, n: int) -> list[tuple[int, int]]:
    """Splits a file into ``n`` contiguous byte ranges that start at line starts."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, n):
            pos = max(cuts[-1], size * i // n)
            if pos >= size:
                cuts.append(size)
                continue
            f.seek(pos)
            if pos > 0:
                f.seek(pos - 1)
                if f.read(1) != b"\n":
                    f.readline()
            cuts.append(f.tell())
    cuts.append(size)
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


def iter_line_blocks(f, start: int = 0, end: int | None = None, block_bytes: int = 8 << 20) -> Iterable[bytes]:
    """Blocks of whole lines (each ends with a newline) from a binary stream.

    With ``start``/``end`` on a seekable file: the lines that start in [start, end) —
    ranges from ``byte_ranges``.
    """
    if start:
        f.seek(start)
    remaining = None if end is None else end - start
    carry = b""
    while True:
        want = block_bytes if remaining is None else min(block_bytes, remaining)
        data = f.read(want) if want > 0 else b""
        if remaining is not None:
            remaining -= len(data)
        if not data:
            if carry:
                yield carry if carry.endswith(b"\n") else carry + b"\n"
            return
        data = carry + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            continue
        carry = data[cut:]
        yield data[:cut]


def count_newlines(path: str, end: int) -> int:
    """Number of newline bytes in the first ``end`` bytes of a file (error line numbers)."""
    n = 0
    with open(path, "rb") as f:
        left = end
        while left > 0:
            b = f.read(min(left, 16 << 20))
            if not b:
                break
            n += b.count(b"\n")
            left -= len(b)
    return n


def line_spans(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) byte offsets of every line of a block of whole lines ('\\r' stripped)."""
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], nl[:-1] + 1]).astype(np.int64)
    ends = nl.astype(np.int64)
    cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    return starts, ends - cr


def gather_spans(buf: np.ndarray, start: np.ndarray, end: np.ndarray, width: int | None = None) -> np.ndarray:
    """Byte spans of a buffer as a fixed-width numpy bytes array ('S<w>'), vectorised."""
    n = len(start)
    length = (end - start).astype(np.int64)
    w = int(width if width is not None else (length.max() if n else 1))
    w = max(w, 1)
    if n == 0:
        return np.zeros(0, f"S{w}")
    cols = np.arange(w)
    idx = start[:, None] + cols[None, :]
    mask = cols[None, :] < length[:, None]
    m = np.where(mask, buf[np.minimum(idx, len(buf) - 1)], 0).astype(np.uint8)
    return np.ascontiguousarray(m).view(f"S{w}").ravel()


def split_uniform(keys: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic uniform number in [0, 1) per key (splitmix64 of key ^ seed).

    Row-level random splits that do not depend on chunking or worker count.
    """
    z = np.asarray(keys).astype(np.int64).view(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class ValueCounts:
    """Frequency table of values (int64 or bytes arrays), merged batch by batch in NumPy."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending = 0

    def add(self, values: np.ndarray, counts: np.ndarray | None = None) -> None:
        if len(values) == 0:
            return
        if counts is None:
            values, counts = np.unique(values, return_counts=True)
        self._parts.append((values, counts.astype(np.int64)))
        self._pending += len(values)
        if len(self._parts) > 16 and self._pending > 1_000_000:
            self._compact()

    def _compact(self) -> None:
        if len(self._parts) <= 1:
            return
        v = np.concatenate([p[0] for p in self._parts])
        c = np.concatenate([p[1] for p in self._parts])
        u, inv = np.unique(v, return_inverse=True)
        self._parts = [(u, np.bincount(inv.ravel(), weights=c, minlength=len(u)).astype(np.int64))]
        self._pending = len(u)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted unique values, counts)."""
        if not self._parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._compact()
        return self._parts[0]


class Vocab:
    """Raw value -> id 1..V (0 = OOV/missing); ids by descending frequency, then value."""

    def __init__(self, values: np.ndarray, counts: np.ndarray, min_freq: int = 1):
        keep = counts >= min_freq
        v, c = values[keep], counts[keep]
        order = np.lexsort((v, -c)) if len(v) else np.zeros(0, np.int64)
        self.values = v[order]  # id i+1 -> values[i]
        self.counts = c[order]
        srt = np.argsort(self.values, kind="stable")
        self._sorted = self.values[srt]
        self._ids = (srt + 1).astype(np.int64)

    def __len__(self) -> int:
        """Vocabulary size including id 0."""
        return len(self.values) + 1

    def encode(self, x: np.ndarray) -> np.ndarray:
        if len(self._sorted) == 0 or len(x) == 0:
            return np.zeros(len(x), np.int64)
        x = np.asarray(x)
        too_long = None
        if x.dtype.kind == "S" and self._sorted.dtype.kind == "S" and x.dtype != self._sorted.dtype:
            if x.dtype.itemsize > self._sorted.dtype.itemsize:  # longer than every vocab entry: OOV
                too_long = np.char.str_len(x) > self._sorted.dtype.itemsize
            x = x.astype(self._sorted.dtype)
        elif x.dtype != self._sorted.dtype and x.dtype.kind == self._sorted.dtype.kind:
            x = x.astype(self._sorted.dtype)
        pos = np.searchsorted(self._sorted, x)
        pos = np.minimum(pos, len(self._sorted) - 1)
        hit = self._sorted[pos] == x
        if too_long is not None:
            hit &= ~too_long
        return np.where(hit, self._ids[pos], 0)

    def save(self, path: str) -> None:
        np.savez(path, values=self.values, counts=self.counts)

    @classmethod
    def load(cls, path: str) -> "Vocab":
        z = np.load(path, allow_pickle=False)
        return cls(z["values"], z["counts"], 1)


class UnitRunner:
    """Runs units of work ``fn(*unit)``, in a pool of worker processes when ``workers > 1``.

    The pool is started on first use and shared by every stage of a run (``close()``
    ends it). ``on_result(i, result)`` is called in the parent as units finish (it
    writes the completion marker). Workers are started with ``forkserver`` (spawn
    elsewhere), so they never inherit TensorFlow state from the parent.
    """

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._pool = None

    def run(self, fn: Callable[..., Any], units: Sequence[tuple], on_result: Callable[[int, Any], None]) -> None:
        if self.workers <= 1 or len(units) <= 1:
            for i, u in enumerate(units):
                on_result(i, fn(*u))
            return
        if self._pool is None:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            self._pool = ctx.Pool(self.workers)
        pending = {i: self._pool.apply_async(fn, u) for i, u in enumerate(units)}
        try:
            while pending:
                finished = [i for i, r in pending.items() if r.ready()]
                for i in finished:
                    on_result(i, pending.pop(i).get())
                if not finished:
                    time.sleep(0.02)
        except BaseException:
            self.close(terminate=True)
            raise

    def close(self, terminate: bool = False) -> None:
        if self._pool is not None:
            if terminate:
                self._pool.terminate()
            else:
                self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "UnitRunner":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(terminate=exc_type is not None)


_DIGIT_BYTES = np.zeros(256, bool)
_DIGIT_BYTES[48:58] = True
_FLOAT_BYTES = np.zeros(256, bool)
_FLOAT_BYTES[np.frombuffer(b"0123456789.-+eE", np.uint8)] = True


def span_matrix(buf: np.ndarray, start: np.ndarray, end: np.ndarray, width: int):
    """[n, width] bytes of each span of ``buf`` (zero past its end), the mask of real bytes and the lengths."""
    length = end - start
    itype = np.int32 if len(buf) < 2 ** 31 - 64 else np.int64
    cols = np.arange(max(width, 1), dtype=itype)
    mask = cols[None, :] < length[:, None]
    m = buf.take(start.astype(itype)[:, None] + cols[None, :], mode="clip")
    m[~mask] = 0
    return m, mask, length


def parse_int_spans(buf: np.ndarray, start: np.ndarray, end: np.ndarray, max_digits: int = 18,
                    signed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Decimal integers in byte spans -> (int64 values, ok mask); vectorised.

    ``signed`` accepts a leading '-'. Malformed spans give ok = False (value 0).
    """
    if len(start) == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    neg = np.zeros(len(start), bool)
    if signed:
        neg = (end > start) & (buf.take(start, mode="clip") == 45)
        start = start + neg
    length = end - start
    w = int(min(max(int(length.max()), 1), max_digits + 1))
    m, mask, length = span_matrix(buf, start, end, w)
    ok = (length >= 1) & (length <= max_digits) & np.all(_DIGIT_BYTES[m] | ~mask, axis=1)
    s = np.ascontiguousarray(np.where(ok[:, None], m, 48).astype(np.uint8)).view(f"S{w}").ravel()
    v = s.astype(np.int64)
    return np.where(neg, -v, v), ok


def parse_float_spans(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal floats in byte spans -> (float64 values, ok mask); vectorised."""
    if len(start) == 0:
        return np.zeros(0, np.float64), np.zeros(0, bool)
    length = end - start
    w = int(min(max(int(length.max()), 1), 40))
    m, mask, length = span_matrix(buf, start, end, w)
    ok = (length >= 1) & (length <= 40) & np.all(_FLOAT_BYTES[m] | ~mask, axis=1)
    s = np.ascontiguousarray(np.where(ok[:, None], m, 48).astype(np.uint8)).view(f"S{w}").ravel()
    try:
        return s.astype(np.float64), ok
    except ValueError:  # e.g. "1.2.3": find the offending spans one by one (rare)
        vals = np.zeros(len(s), np.float64)
        for i, x in enumerate(s):
            try:
                vals[i] = float(x)
            except ValueError:
                ok[i] = False
        return vals, ok


def split_delimited(buf: np.ndarray, sep: int, ncols: int):
    """Splits a block of whole lines into ``ncols`` fields separated by byte ``sep``.

    Returns (line index of each non-blank line, [(start, end)] per column, {line: reason}
    for lines with another number of fields — they are left out of the spans).
    """
    starts, ends = line_spans(buf)
    rows = np.flatnonzero(ends > starts)
    rs, re_ = starts[rows], ends[rows]
    pos = np.flatnonzero(buf == sep)
    prow = np.searchsorted(re_, pos)
    keep = prow < len(rows)
    pos, prow = pos[keep], prow[keep]
    cnt = np.bincount(prow, minlength=len(rows))[:len(rows)]
    badm = cnt != ncols - 1
    bad = {int(rows[i]): f"expected {ncols} fields separated by {chr(sep)!r}, found {cnt[i] + 1}"
           for i in np.flatnonzero(badm)[:1000]}
    if badm.any():
        good = ~badm
        pos = pos[good[prow]]
        rows, rs, re_ = rows[good], rs[good], re_[good]
    n = len(rows)
    if ncols == 1:
        return rows, [(rs, re_)], bad
    p = pos.reshape(n, ncols - 1)
    cols = [(rs, p[:, 0])] + [(p[:, i - 1] + 1, p[:, i]) for i in range(1, ncols - 1)] + [(p[:, -1] + 1, re_)]
    return rows, cols, bad


#: Lines TensorFlow's C++ runtime prints at start-up on every run (not errors).
_TF_STARTUP_NOISE = (b"All log messages before absl::InitializeLog()", b"oneDNN custom operations are on",
                     b"cpu_feature_guard", b"This TensorFlow binary is optimized",
                     b"To enable the following instructions")


def quiet_tensorflow_startup() -> None:
    """Drops TensorFlow's C++ start-up lines (oneDNN, CPU features, absl pre-init notice) from stderr.

    They are written by C++ before ``TF_CPP_MIN_LOG_LEVEL`` applies, so fd 2 is routed
    through a pipe whose reader thread forwards every other line unchanged. Called by the
    command-line entry points (``run_cli``); ``MDR_TF_TF_LOGS=1`` keeps the lines.
    """
    import atexit
    import threading

    if os.environ.get("MDR_TF_TF_LOGS") == "1" or getattr(quiet_tensorflow_startup, "active", False):
        return
    sys.stderr.flush()
    orig = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    quiet_tensorflow_startup.active = True

    def forward(data: bytes) -> None:
        if data:
            os.write(orig, data)

    def pump() -> None:
        pending = b""
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            forward(b"".join(x + b"\n" for x in lines if not any(n in x for n in _TF_STARTUP_NOISE)))
            if pending and not pending.startswith((b"I0000", b"W0000", b"WARNING: All")):
                forward(pending)  # a partial line (progress output): no delay
                pending = b""
        if pending and not any(n in pending for n in _TF_STARTUP_NOISE):
            forward(pending)
        os.close(r)

    thread = threading.Thread(target=pump, name="tf-startup-filter", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(orig, 2)  # the pipe's write end closes: the reader drains and ends
        thread.join(timeout=2)

    atexit.register(restore)


def run_cli(define_flags: Callable[[], None], body: Callable[[Any], Any], required: Sequence[str] = (),
            errors: tuple[type[BaseException], ...] = (DataError,)) -> None:
    """Shared absl entry point of the preprocessors and experiment scripts: defines the
    flags, checks the ``required`` ones, runs ``body(FLAGS)`` and turns an expected error
    (default ``DataError``: bad input, the message names the file, line or feature) into
    ``error: ...`` on stderr and exit status 1."""
    from absl import app, flags

    quiet_tensorflow_startup()
    define_flags()
    if "full_hash" not in flags.FLAGS:
        flags.DEFINE_boolean("full_hash", False, "Identify raw input files by a sha256 of their whole content "
                             "(default: whole for files up to 64 MiB; larger ones by size, mtime, first and "
                             "last MiB). Decides whether a finished output is reused.")
    if "allow_empty_splits" not in flags.FLAGS:
        flags.DEFINE_boolean("allow_empty_splits", False, "Write a dataset whose train, valid or test split "
                             "is empty (with a warning) instead of failing.")

    def main(argv: Sequence[str]) -> None:
        del argv
        missing = [name for name in required if not getattr(flags.FLAGS, name)]
        if missing:
            raise app.UsageError(" and ".join(f"--{name}" for name in required)
                                 + (" are required" if len(required) > 1 else " is required"))
        global ALLOW_EMPTY_SPLITS
        StreamSource.FULL_HASH = bool(flags.FLAGS.full_hash)
        ALLOW_EMPTY_SPLITS = bool(flags.FLAGS.allow_empty_splits)
        try:
            body(flags.FLAGS)
        except errors as e:
            raise SystemExit(f"error: {e}")
        except KeyboardInterrupt:
            print("\ninterrupted (Ctrl-C): finished work is kept; rerun the same command to resume",
                  file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    app.run(main)
