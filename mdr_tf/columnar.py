"""Columnar shards next to the TFRecords: one raw little-endian file per column, memory-mapped.

The TFRecords written by ``data_prep`` stay the canonical dataset. A columnar shard is
derived from one TFRecord shard (``convert``) or written by a generator alongside it
(``ColumnarShardWriter``); it holds the same rows in the same order:

    <data_dir>/columnar/domain_<d>/<split>-<i>-of-<n>/
        meta.json              {"rows": N, "columns": {key: [dtype, [trailing dims]]}, "source": ...}
        <key>.bin              N * prod(trailing) values of dtype, row-major

Keys are the schema's ``input_names`` plus its ``label_keys`` (as the TFRecords). A
shard directory appears only when complete (written as ``<name>.part-<pid>``, renamed),
so a converter that stops half-way redoes only the shard it was writing. Reading
(``open_shard``) maps the files with ``np.memmap``; nothing is loaded until sliced.

Why: parsing ``tf.train.Example`` protos is what limits the streaming input path on a
small CPU (about 0.25 M examples/s on 2 cores); slicing memory-mapped columns costs a
copy per value (``mdr_tf.outofcore``).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Iterable, Sequence

import numpy as np

COLUMNAR_DIR = "columnar"
FORMAT_VERSION = 1


def shard_dir(data_dir: str, domain: int, split: str, index: int, num_shards: int) -> str:
    """Directory of the columnar shard that mirrors TFRecord shard ``index`` of (domain, split)."""
    return os.path.join(data_dir, COLUMNAR_DIR, f"domain_{domain}", f"{split}-{index:05d}-of-{num_shards:05d}")


def _source_identity(path: str | None) -> dict | None:
    if path is None or not os.path.exists(path):
        return None
    st = os.stat(path)
    return {"file": os.path.basename(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class ColumnarShardWriter:
    """Appends column chunks to one columnar shard; ``close()`` renames it into place.

    Memory stays at one chunk: every ``append`` writes its arrays to the open column
    files at once.

    Args:
      path: final shard directory (``shard_dir``).
      dtypes: key → numpy dtype stored (ids as int64, values and labels as float32).
      source: the TFRecord file the shard mirrors (its size and mtime are recorded, so a
        replaced TFRecord makes the shard stale).
    """

    def __init__(self, path: str, dtypes: dict[str, Any], source: str | None = None):
        self.path = path
        self.tmp = f"{path}.part-{os.getpid()}"
        self.dtypes = {k: np.dtype(v) for k, v in dtypes.items()}
        self.source = source
        self.rows = 0
        self.trailing: dict[str, list[int]] = {}
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        self._files = {k: open(os.path.join(self.tmp, f"{k}.bin"), "wb") for k in self.dtypes}

    def append(self, columns: dict[str, np.ndarray]) -> None:
        """Appends rows: every key of ``dtypes``, equal lengths (ids must fit the stored integer type)."""
        missing = set(self.dtypes) - set(columns)
        if missing:
            raise ValueError(f"{self.path}: append lacks columns {sorted(missing)}")
        n = {len(np.asarray(v)) for k, v in columns.items() if k in self.dtypes}
        if len(n) != 1:
            raise ValueError(f"{self.path}: columns of unequal lengths {sorted(n)}")
        for k, f in self._files.items():
            a = np.asarray(columns[k])
            dt = self.dtypes[k]
            if dt.kind == "i" and a.dtype.itemsize > dt.itemsize and len(a) and (
                    a.max() > np.iinfo(dt).max or a.min() < np.iinfo(dt).min):
                raise ValueError(f"{self.path}: column {k!r} has values outside {dt} ({a.min()}..{a.max()})")
            a = np.ascontiguousarray(a, dtype=dt.newbyteorder("<"))
            tr = list(a.shape[1:])
            if self.trailing.setdefault(k, tr) != tr:
                raise ValueError(f"{self.path}: column {k!r} has shape {a.shape}, earlier chunks {self.trailing[k]}")
            f.write(a.tobytes())
        self.rows += n.pop()

    def close(self) -> str:
        for f in self._files.values():
            f.close()
        meta = {"format_version": FORMAT_VERSION, "rows": self.rows,
                "columns": {k: [d.str.lstrip("<>|="), self.trailing.get(k, [])] for k, d in self.dtypes.items()},
                "source": _source_identity(self.source)}
        with open(os.path.join(self.tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        if os.path.exists(self.path):
            shutil.rmtree(self.path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        os.rename(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_meta(path: str) -> dict | None:
    p = os.path.join(path, "meta.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def open_shard(path: str) -> tuple[int, dict[str, np.ndarray]]:
    """``(rows, {key: memmap})`` of one columnar shard (read-only, nothing loaded yet)."""
    meta = read_meta(path)
    if meta is None:
        raise FileNotFoundError(f"{path}: columnar shard missing (no meta.json); run `python -m "
                                f"mdr_tf.columnar --data_dir=...` to derive it from the TFRecords")
    n = int(meta["rows"])
    cols = {}
    for k, (dt, tr) in meta["columns"].items():
        f = os.path.join(path, f"{k}.bin")
        want = n * int(np.prod(tr or [1])) * np.dtype(dt).itemsize
        size = os.path.getsize(f) if os.path.exists(f) else -1
        if size != want:
            raise ValueError(f"{f}: {size} bytes, expected {want} ({n} rows of {dt}{tr}); the columnar shard is "
                             "truncated, delete it and re-run the converter")
        cols[k] = (np.memmap(f, dtype=np.dtype(dt).newbyteorder("<"), mode="r", shape=(n, *tr)) if n
                   else np.zeros((0, *tr), dt))
    return n, cols


def read_rows(col: np.ndarray, a: int, b: int, widen: bool = True) -> np.ndarray:
    """Rows ``a:b`` of a column of ``open_shard`` as a new array (ids widened to int64).

    A memory-mapped column is read with ``np.fromfile`` (a plain read into new memory):
    slicing the map instead leaves every page read mapped into the process, so its
    resident size grows by the column files read (page cache, but counted in RSS).
    """
    dt = col.dtype.newbyteorder("=")
    if widen and dt.kind in "iu":
        dt = np.dtype(np.int64)
    if isinstance(col, np.memmap) and col.filename:
        per_row = int(np.prod(col.shape[1:], dtype=np.int64))
        raw = np.fromfile(col.filename, dtype=col.dtype, count=(b - a) * per_row,
                          offset=col.offset + a * per_row * col.dtype.itemsize)
        return raw.reshape((b - a, *col.shape[1:])).astype(dt, copy=False)
    return np.array(col[a:b], dtype=dt)


def is_current(path: str, source: str) -> bool:
    """True when the columnar shard exists and mirrors ``source`` as it is now (size, mtime)."""
    meta = read_meta(path)
    return meta is not None and meta.get("source") == _source_identity(source)


def schema_dtypes(schema) -> dict[str, Any]:
    """Stored dtype per key of a schema: ids, domain and sequences as int32 when every id fits (half the
    disk of int64; readers widen them to int64, the TFRecords' type), else int64; float32 values and labels."""
    from mdr_tf.records import sequence_keys

    # Sequence ids share a categorical feature's vocabulary (``embed_with``).
    big = max([f.vocab_size for f in schema.features if f.kind == "categorical"] + [schema.num_domains]) >= 2**31
    ids = np.int64 if big else np.int32
    out: dict[str, Any] = {}
    for f in schema.features:
        out[f.name] = ids if f.kind == "categorical" else np.float32
    out[schema.domain_key] = ids
    for k in sequence_keys(schema):
        out[k] = ids
    for k in schema.label_keys:
        out[k] = np.float32
    return out


def available(schema, split: str, domains: Sequence[int] | None = None, check_source: bool = False) -> bool:
    """True when every (domain, shard) of ``split`` has a columnar shard (optionally: still current)."""
    if schema.directory is None or not schema.raw:
        return False
    n = schema.raw.get("num_shards", 1)
    for d in range(schema.num_domains) if domains is None else domains:
        for i in range(n):
            p = shard_dir(schema.directory, d, split, i, n)
            if read_meta(p) is None:
                return False
            if check_source and not is_current(p, schema.files(split, [d])[i]):
                return False
    return True


def shard_paths(schema, split: str, domains: Sequence[int] | None = None) -> list[str]:
    n = schema.raw.get("num_shards", 1)
    return [shard_dir(schema.directory, d, split, i, n)
            for d in (range(schema.num_domains) if domains is None else domains) for i in range(n)]


def open_split(schema, split: str, domains: Sequence[int] | None = None,
               keys: Sequence[str] = ()) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """``[(shard path, rows, {key: memmap})]`` of a split's columnar shards, domain by domain.

    Checks that every shard has the columns ``keys`` and that each domain's rows add up to
    the counts schema.json records; errors name the shard directories (a truncated column
    file is named by ``open_shard``).
    """
    doms = list(range(schema.num_domains)) if domains is None else list(domains)
    out = []
    for d in doms:
        per = []
        for p in shard_paths(schema, split, [d]):
            n, cols = open_shard(p)
            missing = [k for k in keys if k not in cols]
            if missing:
                raise ValueError(f"{p}: columnar shard lacks {missing}; delete it and re-run the converter")
            per.append((p, n, cols))
        got, want = sum(n for _, n, _ in per), schema.counts(split)[d]
        if got != want:
            where = ", ".join(p for p, _, _ in per)
            raise ValueError(f"{where}: {got:,} rows of domain {d} in split {split!r}, but schema.json records "
                             f"{want:,}; delete these columnar shards and re-run the converter")
        out += per
    return out


def convert(data_dir: str, splits: Iterable[str] = ("train",), chunk_rows: int = 65_536,
            progress: Callable[[str], None] = print) -> list[str]:
    """Derives the columnar shards of ``splits`` from a prepared dataset's TFRecords.

    Resumable: a shard that exists and mirrors its TFRecord as it is now is skipped; a
    missing, stale or half-written one is (re)written from its TFRecord in chunks of
    ``chunk_rows`` rows (memory: one chunk). Returns the shard directories.
    """
    import tensorflow as tf

    from mdr_tf.records import feature_spec, raise_corrupt_file
    from mdr_tf.schema import Schema

    schema = Schema.load(data_dir)
    dtypes = schema_dtypes(schema)
    spec = feature_spec(schema, with_labels=True)
    n = schema.raw.get("num_shards", 1)
    out = []
    for split in splits:
        for d in range(schema.num_domains):
            for i in range(n):
                src = schema.files(split, [d])[i]
                dst = shard_dir(data_dir, d, split, i, n)
                out.append(dst)
                if is_current(dst, src):
                    continue
                if not os.path.exists(src):
                    raise FileNotFoundError(f"{src}: TFRecord shard missing; re-run data_prep")
                w = ColumnarShardWriter(dst, dtypes, source=src)
                try:
                    ds = tf.data.TFRecordDataset(src).batch(chunk_rows).map(
                        lambda s: tf.io.parse_example(s, spec), num_parallel_calls=2).prefetch(1)
                    for ex in ds:
                        w.append({k: v.numpy() for k, v in ex.items()})
                except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
                    w.abort()
                    raise_corrupt_file([src], e)
                except BaseException:
                    w.abort()
                    raise
                w.close()
                progress(f"columnar: {dst} ({w.rows:,} rows)")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Derive columnar shards from a prepared dataset's TFRecords.")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--splits", default="train", help="comma-separated splits")
    p.add_argument("--chunk_rows", type=int, default=65_536)
    a = p.parse_args(argv)
    convert(a.data_dir, a.splits.split(","), a.chunk_rows)


if __name__ == "__main__":
    main()
