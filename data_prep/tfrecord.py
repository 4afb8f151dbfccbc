"""TFRecord writing in NumPy, without TensorFlow (worker processes stay small).

- ``encode_examples`` / ``frame_tfrecords``: column-wise tf.train.Example encoding and
  TFRecord framing (no per-row Python). Varints are written at a fixed width per column
  and batch (protobuf parsers accept over-long varints), so every record of a batch has
  the same length and a batch is one [N, L] byte matrix; CRC32C is computed column-wise.
- ``ShardSetWriter`` / ``StreamingWriter``: append batches to per-(domain, split)
  shards; files appear only when complete (``.part`` renamed on ``close()``).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from data_prep.base import SPLITS, DataError, check_finite


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


def _column_key(name: str, values, n: int) -> bytes:
    """The feature name as the Example map key, after checking its length and the column's rows."""
    key = name.encode()
    if len(key) > 100:
        raise DataError(f"feature name {name!r} is too long (> 100 bytes)")
    if len(values) != n:
        raise DataError(f"column {name!r} has {len(values)} rows, expected {n}")
    return key


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
        key = _column_key(name, values, n)
        vm = _varint_matrix(values)
        k = vm.shape[1]
        # map entry: key (field 1) + Feature (field 2) = int64_list (field 3) = packed value (field 1)
        entry = bytes([0x0A, len(key)]) + key + bytes([0x12, k + 4, 0x1A, k + 2, 0x0A, k])
        prefix = bytes([0x0A, len(entry) + k]) + entry
        parts.append(np.broadcast_to(np.frombuffer(prefix, np.uint8), (n, len(prefix))))
        parts.append(vm)
    for name, values in float_cols:
        key = _column_key(name, values, n)
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
