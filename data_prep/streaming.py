"""Reading raw input as a stream: sources, line blocks, vectorised parsing, vocabularies, workers.

- ``StreamSource``: raw files as downloaded (folder, .zip, .tar[.gz], .gz), streamed.
- ``byte_ranges`` / ``iter_line_blocks`` / ``split_delimited`` / ``parse_*_spans``:
  blocks of whole lines split and parsed in NumPy.
- ``ValueCounts`` / ``Vocab``: vectorised frequency counting and id encoding.
- ``UnitRunner``: units of work in a pool of worker processes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import multiprocessing
import os
import shutil
import tarfile
import time
import zipfile
import zlib
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from mdr_base.atomic import atomic_path
from data_prep.base import DataError, log


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
        with atomic_path(target) as tmp, open(tmp, "wb") as out:  # no half-extracted copy is left behind
            shutil.copyfileobj(src, out, 16 << 20)


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

