"""Ali-CCP (Alibaba Click and Conversion Prediction, Tianchi 408; ESMM) -> TFRecords by scenario.

Inputs, as downloaded from Tianchi (login needed; not redistributable): a folder with
``sample_skeleton_{train,test}.csv`` and ``common_features_{train,test}.csv`` (in the
folder, in ``train/``/``test/`` subfolders, gzip-compressed, or still inside the
``sample_train.tar.gz`` / ``sample_test.tar.gz`` archives, which are extracted once).

Raw format (datasets.md §4.1):
  sample_skeleton: ``sample_id,click,buy,common_feature_index,num_features,feature_list``
  common_features: ``common_feature_index,num_features,feature_list``
  feature_list: entries joined by ``\\x01``, each ``field\\x02feature_id\\x03value``.
A sample's features are its own entries merged with the entries of its common-feature
row (common wins, like ``dict.update``); for a repeated field only the last entry counts.

Recipe (torch-rechub ``preprocess_ali_ccp.py`` as used by HAMUR / Scenario-Wise-Rec):
  * rows with click = 0 and buy = 1 are dropped (inconsistent);
  * 23 sparse fields (``f<field>``, e.g. ``f101`` = user id, ``f205`` = item id) and
    8 dense fields (``d<field>``: the entry's value of 109_14 110_14 127_14 150_14 508
    509 702 853); a missing field is id 0 / value 0;
  * vocabularies from the train file, ids with frequency >= ``min_freq`` (10) kept, rarer
    ones map to 0; ids ordered by frequency (rechub: first appearance; any order is the
    same model);
  * domain = field 301 (position), its 3 raw values remapped to 0..2 in order of first
    appearance in the train file (= rechub's encoded 1, 2, 3 -> HAMUR's domains 0, 1, 2);
  * the test file is split 50/50 into valid/test by a seeded hash of ``sample_id``
    (rechub: ``train_test_split(test_size=0.5, random_state=2022)``; not reproducible
    bit for bit, same distribution);
  * dense fields min-max scaled with the train file's min/max (``--dense_fit=all``:
    train + test, rechub's leakage), ``--dense=raw`` leaves them unscaled and
    ``--dense=none`` drops them (HierRec).

Tasks (``--task``) — what the label and the example space mean:
  ctr    every impression; label ``click`` (P(click | impression)). Default.
  cvr    clicked impressions only; label ``purchase`` (P(buy | click)), MI-DPG style CVR.
  ctcvr  every impression; label ``purchase`` = click AND buy (P(click, buy | impression)),
         ESMM's CTCVR. After the drop rule purchase = 1 implies click = 1.
Both labels are stored in every example (``label_keys``: primary first).

Scale: 85M rows on one machine. Everything streams; no step holds the dataset:
  1. the common-feature files become a sorted on-disk index (keys + the last id/value of
     each kept field), memory-mapped by every worker (about 32 + 8·13 bytes per key);
  2. pass 1 over the train file counts id frequencies (NumPy frequency tables of distinct
     ids, not rows), the domain values and the dense min/max;
  3. pass 2 writes the shards. Files are split into ``num_shards`` byte ranges; each range
     is one unit of work in a worker process and becomes shard i of every
     (domain, split). Lines are parsed and encoded in blocks (``block_mb``) with NumPy
     (no per-row Python), examples are serialised column-wise.
Each finished unit leaves a marker in ``<output_dir>.work-<fingerprint>/``: a rerun after
an interruption continues from there; the output directory appears only when complete.

Example:
  python -m data_prep.aliccp --raw_path=/data/aliccp --output_dir=data/aliccp_ctr --workers=8
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np
from absl import flags

from data_prep.common import (DataError, FeatureDef, ShardSetWriter, StreamingWriter, StreamSource, UnitRunner,
                              ValueCounts, Vocab, WorkDir, _empty_counts, byte_ranges, count_newlines,
                              existing_output, finish_streamed_dataset, fingerprint, gather_spans, iter_line_blocks,
                              line_spans, log, merge_counts, parse_float_spans, parse_int_spans, span_matrix,
                              split_delimited, split_uniform, write_vocab_file, run_cli)
from data_prep.common import define_streaming_flags, savez_atomic

FORMAT_VERSION = 1
SPARSE_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
                 "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14")
DENSE_FIELDS = ("109_14", "110_14", "127_14", "150_14", "508", "509", "702", "853")
DOMAIN_FIELD = "301"
FILES = {"train": ("sample_skeleton_train.csv", "common_features_train.csv"),
         "test": ("sample_skeleton_test.csv", "common_features_test.csv")}
TASKS = {
    "ctr": ("click", "every impression; label click = P(click | impression)"),
    "cvr": ("purchase", "clicked impressions only; label purchase = P(buy | click)"),
    "ctcvr": ("purchase", "every impression; label purchase = click AND buy = P(click, buy | impression)"),
}
# Merlin's field semantics (datasets.md §4.1).
FIELD_SEMANTICS = {
    "101": "user id", "121": "user profile", "122": "user group", "124": "user gender", "125": "user age",
    "126": "user consumption level 1", "127": "user consumption level 2", "128": "user occupation",
    "129": "user geography", "109_14": "user category history (count)", "110_14": "user shop history (count)",
    "127_14": "user brand history (count)", "150_14": "user intention history (count)", "205": "item id",
    "206": "item category", "207": "item shop", "210": "item intention", "216": "item brand",
    "508": "user-category combination", "509": "user-shop combination", "702": "user-brand combination",
    "853": "user-intention combination", "301": "position (scenario)",
}
GROUPS = {f: "user" for f in ("101", "121", "122", "124", "125", "126", "127", "128", "129", "109_14", "110_14",
                              "127_14", "150_14")}
GROUPS.update({f: "item" for f in ("205", "206", "207", "210", "216")})
GROUPS.update({f: "context" for f in ("508", "509", "702", "853")})
GROUPS["301"] = "domain"

NF = len(SPARSE_FIELDS)
DENSE_POS = np.array([SPARSE_FIELDS.index(f) for f in DENSE_FIELDS])
DOMAIN_POS = SPARSE_FIELDS.index(DOMAIN_FIELD)


def _pack(b: bytes) -> int:
    return int(np.frombuffer(b.ljust(8, b"\0"), "<u8")[0])


_FIELD_CODES = np.array([_pack(f.encode()) for f in SPARSE_FIELDS], np.uint64)
_CODE_ORDER = np.argsort(_FIELD_CODES)
_SORTED_CODES = _FIELD_CODES[_CODE_ORDER]


# ------------------------------------------------------------------ vectorised line parser

class _Bad(Exception):
    """Malformed lines of a block: {line index in block: reason}."""

    def __init__(self, lines: dict[int, str]):
        super().__init__(lines)
        self.lines = lines


def _bad(rows_lines: np.ndarray, mask: np.ndarray, reason) -> dict[int, str]:
    out = {}
    for i in np.flatnonzero(mask)[:1000]:
        out[int(rows_lines[i])] = reason(i) if callable(reason) else reason
    return out


_DIGIT = np.zeros(256, bool)
_DIGIT[48:58] = True
_NOT_DIGIT = (~_DIGIT).astype(np.uint8)
_NOT_FLOAT_CHAR = _NOT_DIGIT.copy()
_NOT_FLOAT_CHAR[list(b".-+eE")] = 0


def _span_count(lut: np.ndarray, buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Sum of ``lut[byte]`` over each span [start, end) of ``buf``; spans ordered and disjoint.

    One table lookup and one ``np.add.reduceat`` over the interleaved (start, end)
    boundaries: no buffer-sized cumulative array. Empty spans count 0.
    """
    if len(start) == 0:
        return np.zeros(0, np.int64)
    m = lut[buf]
    bounds = np.stack([start, end], axis=1).ravel()
    if bounds[-1] >= len(m):
        m = np.concatenate([m, np.zeros(1, m.dtype)])
    counts = np.add.reduceat(m, bounds, dtype=np.int32)[0::2]
    return np.where(end > start, counts, 0)


def _int_like(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Spans of 1..18 decimal digits (what ``parse_int_spans`` accepts), screened in one pass."""
    n = end - start
    return (n > 0) & (n <= 18) & (_span_count(_NOT_DIGIT, buf, start, end) == 0)


def _float_like(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Spans that look like a decimal number: only digits, '.', signs and exponent marks,
    starting with a digit, sign or '.' and ending in a digit or '.'. A screen, not a parser
    (the used entries are parsed in full): it rejects words like ``abc``, ``x1`` or ``1e``."""
    n = end - start
    first, last = buf[np.minimum(start, len(buf) - 1)], buf[np.maximum(end - 1, 0)]
    return ((n > 0) & (_span_count(_NOT_FLOAT_CHAR, buf, start, end) == 0)
            & (first != 101) & (first != 69) & (_DIGIT[last] | (last == 46)))

def parse_feature_block(block: bytes, n_head: int, check_num: bool) -> dict[str, Any]:
    """Parses a block of whole Ali-CCP lines (``n_head`` comma fields + a feature list).

    Returns ``line`` (line index in the block of each parsed row; blank lines skipped),
    ``head`` (list of (start, end) spans of the comma fields), ``buf`` (the block as
    uint8), ``ids`` [n, 23] int64 (last feature id of each kept field, -1 = absent),
    ``vals`` [n, 8] float32 (value of the last entry of each dense field, 0 = absent),
    ``num_entries`` [n]. Raises ``_Bad`` listing malformed lines.
    """
    b = np.frombuffer(block, np.uint8)
    starts, ends = line_spans(b)
    nonblank = np.flatnonzero(ends > starts)
    rows_line = nonblank
    rs, re_ = starts[nonblank], ends[nonblank]
    n = len(nonblank)
    if n == 0:
        e = np.zeros(0, np.int64)
        return {"line": e, "head": [(e, e)] * n_head, "buf": b, "ids": np.zeros((0, NF), np.int64),
                "vals": np.zeros((0, len(DENSE_FIELDS)), np.float32), "num_entries": e}
    expected = "sample_id,click,buy,common_feature_index,num_features,feature_list" if n_head == 5 else \
        "common_feature_index,num_features,feature_list"
    # 1. exactly n_head commas per line
    cpos = np.flatnonzero(b == 44)
    crow = np.searchsorted(re_, cpos)
    ccount = np.bincount(crow, minlength=n)[:n]
    if (ccount != n_head).any():
        raise _Bad(_bad(rows_line, ccount != n_head,
                        lambda i: f"expected {n_head + 1} comma-separated fields ({expected}), found {ccount[i] + 1}"))
    commas = cpos.reshape(n, n_head)
    head = [(rs, commas[:, 0])] + [(commas[:, i - 1] + 1, commas[:, i]) for i in range(1, n_head)]
    fs, fe = commas[:, -1] + 1, re_
    # 2. entries, separated by \x01 inside the feature list
    s1 = np.flatnonzero(b == 1)
    r1 = np.searchsorted(fe, s1)
    stray = s1 < fs[np.minimum(r1, n - 1)]
    if stray.any():
        raise _Bad(_bad(rows_line[r1], stray, "separator \\x01 outside the feature list"))
    cnt1 = np.bincount(r1, minlength=n)[:n]
    nent = np.where(fe > fs, cnt1 + 1, 0)
    has = nent > 0
    estart = np.sort(np.concatenate([fs[has], s1 + 1]))
    eend = np.sort(np.concatenate([s1, fe[has]]))
    erow = np.repeat(np.arange(n), nent)
    m = len(estart)
    # 3. each entry: field \x02 id \x03 value
    seps = []
    for code, name in ((2, "\\x02"), (3, "\\x03")):
        p = np.flatnonzero(b == code)
        e = np.searchsorted(eend, p)
        inside = (e < m) & (estart[np.minimum(e, m - 1)] <= p)
        if not inside.all():
            prow = np.searchsorted(re_, p[~inside])
            raise _Bad({int(rows_line[min(r, n - 1)]): f"separator {name} outside a feature entry"
                        for r in prow[:1000]})
        cnt = np.bincount(e, minlength=m)[:m]
        if (cnt != 1).any():
            raise _Bad(_bad(rows_line[erow], cnt != 1,
                            lambda i: f"feature entry {i - np.searchsorted(erow, erow[i])} has {cnt[i]} "
                                      f"'{name}' separators; expected field\\x02id\\x03value"))
        seps.append(p)
    p2, p3 = seps
    if (p2 >= p3).any():
        raise _Bad(_bad(rows_line[erow], p2 >= p3, "feature entry is not field\\x02id\\x03value (\\x03 before \\x02)"))
    # 4. num_features
    num, ok = parse_int_spans(b, *head[n_head - 1])
    if not ok.all():
        raise _Bad(_bad(rows_line, ~ok, "num_features is not a non-negative integer"))
    if check_num and (num != nent).any():
        raise _Bad(_bad(rows_line, num != nent,
                        lambda i: f"num_features = {num[i]} but the feature list has {nent[i]} entries "
                                  "(pass --nocheck_num_features to accept)"))
    # 5. kept fields: last entry of each
    flen = p2 - estart
    fm, fmask, _ = span_matrix(b, estart, np.minimum(p2, estart + 8), 8)
    code = np.where(flen <= 8, np.ascontiguousarray(fm).view("<u8").ravel(), 0)
    pos = np.minimum(np.searchsorted(_SORTED_CODES, code), NF - 1)
    kept = _SORTED_CODES[pos] == code
    ent = np.flatnonzero(kept)
    fidx = _CODE_ORDER[pos[kept]]
    flat = erow[ent] * NF + fidx
    uniq, first_rev = np.unique(flat[::-1], return_index=True)
    chosen = ent[len(flat) - 1 - first_rev]
    crow_, cfield = uniq // NF, uniq % NF
    # Every entry of a kept field is validated, not only the last (the one used): a cheap
    # vectorised character screen over all entries, the full parse for the chosen ones.
    ok = _int_like(b, p2[ent] + 1, p3[ent])
    if not ok.all():
        raise _Bad(_bad(rows_line[erow[ent]], ~ok,
                        lambda i: f"field {SPARSE_FIELDS[fidx[i]]}: feature id is not a non-negative integer"))
    dpos = np.full(NF, -1)
    dpos[DENSE_POS] = np.arange(len(DENSE_FIELDS))
    dent = ent[dpos[fidx] >= 0]
    ok = _float_like(b, p3[dent] + 1, eend[dent])
    if not ok.all():
        dfield = fidx[dpos[fidx] >= 0]
        raise _Bad(_bad(rows_line[erow[dent]], ~ok,
                        lambda i: f"field {SPARSE_FIELDS[dfield[i]]}: value is not a number"))
    idv, ok = parse_int_spans(b, p2[chosen] + 1, p3[chosen])
    if not ok.all():
        raise _Bad(_bad(rows_line[crow_], ~ok,
                        lambda i: f"field {SPARSE_FIELDS[cfield[i]]}: feature id is not a non-negative integer"))
    ids = np.full((n, NF), -1, np.int64)
    ids[crow_, cfield] = idv
    vals = np.zeros((n, len(DENSE_FIELDS)), np.float32)
    isd = dpos[cfield] >= 0
    dv, ok = parse_float_spans(b, p3[chosen[isd]] + 1, eend[chosen[isd]])
    if not ok.all():
        raise _Bad(_bad(rows_line[crow_[isd]], ~ok,
                        lambda i: f"field {SPARSE_FIELDS[cfield[isd][i]]}: value is not a number"))
    vals[crow_[isd], dpos[cfield[isd]]] = dv
    return {"line": rows_line, "head": head, "buf": b, "ids": ids, "vals": vals, "num_entries": nent}


def _drop_lines(block: bytes, lines: Sequence[int]) -> tuple[bytes, np.ndarray]:
    """The block without the given lines (blanked, so line numbers stay), and nothing else."""
    parts = block.split(b"\n")
    for i in lines:
        parts[i] = b""
    return b"\n".join(parts), np.asarray(sorted(lines))


def parse_block_checked(block: bytes, n_head: int, check_num: bool) -> tuple[dict[str, Any], dict[int, str]]:
    """``parse_feature_block`` that blanks malformed lines and retries; returns (rows, bad lines)."""
    bad: dict[int, str] = {}
    for _ in range(64):
        try:
            return parse_feature_block(block, n_head, check_num), bad
        except _Bad as e:
            bad.update(e.lines)
            block, _ = _drop_lines(block, list(e.lines))
    raise DataError("too many malformed lines in one block")


# ------------------------------------------------------------------ units of work

def _cpu_s() -> float:
    return time.process_time()


def _rss_mb() -> float:
    """Peak resident memory of this process so far (Linux: ru_maxrss is in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _LineError(Exception):
    """A malformed line in a byte range: (path, range start byte, line index within the range, message)."""


def _raise_line_error(e: _LineError) -> None:
    path, start, line, msg = e.args
    lineno = count_newlines(path, start) + line + 1
    with open(path, "rb") as f:
        f.seek(start)
        for _ in range(line):
            f.readline()
        text = f.readline()[:160].decode("latin-1")
    raise DataError(f"{path}:{lineno}: {msg}; line was {text!r}") from None


def _blocks(path: str, start: int, end: int, block_bytes: int, n_head: int, check_num: bool, skip_bad: bool,
            stats: dict):
    """Parsed blocks of a byte range; malformed lines raise _LineError or are counted."""
    line0 = 0
    with open(path, "rb") as f:
        for block in iter_line_blocks(f, start, end, block_bytes):
            rows, bad = parse_block_checked(block, n_head, check_num)
            if bad:
                first = min(bad)
                if not skip_bad:
                    raise _LineError(path, start, line0 + first, bad[first])
                stats["bad_rows"] = stats.get("bad_rows", 0) + len(bad)
                stats.setdefault("first_bad", f"line {line0 + first + 1} of range at byte {start}: {bad[first]}")
            rows["line0"] = line0
            line0 += block.count(b"\n")
            stats["lines"] = line0
            yield rows


def common_unit(path: str, start: int, end: int, out_path: str, block_bytes: int, check_num: bool,
                skip_bad: bool) -> dict:
    """Parses a byte range of a common_features file into (keys, ids, vals) arrays (.npz)."""
    stats: dict[str, Any] = {}
    cpu0 = _cpu_s()
    keys, ids, vals = [], [], []
    try:
        for rows in _blocks(path, start, end, block_bytes, 2, check_num, skip_bad, stats):
            k0, k1 = rows["head"][0]
            if ((k1 - k0) < 1).any():
                bad = np.flatnonzero((k1 - k0) < 1)[0]
                raise _LineError(path, start, rows["line0"] + int(rows["line"][bad]), "empty common_feature_index")
            keys.append(gather_spans(rows["buf"], k0, k1))
            ids.append(rows["ids"])
            vals.append(rows["vals"])
    except _LineError as e:
        return {"error": e.args}
    w = max([k.dtype.itemsize for k in keys] + [1])
    savez_atomic(out_path, keys=np.concatenate(keys).astype(f"S{w}") if keys else np.zeros(0, "S1"),
                 ids=np.concatenate(ids) if ids else np.zeros((0, NF), np.int64),
                 vals=np.concatenate(vals) if vals else np.zeros((0, len(DENSE_FIELDS)), np.float32))
    stats["rows"] = int(sum(len(k) for k in keys))
    stats["max_rss_mb"] = _rss_mb()
    stats["cpu_s"] = round(_cpu_s() - cpu0, 3)
    return stats


def merge_common(parts: Sequence[str], prefix: str) -> dict:
    """Sorted on-disk index of a common_features file: ``<prefix>.keys.npy`` (sorted keys),
    ``.ids.npy`` [K, P] (only the P fields present in common rows), ``.vals.npy``,
    ``.fields.npy`` (their positions). A repeated key keeps its last row."""
    z = [np.load(p) for p in parts]
    keys = np.concatenate([x["keys"] for x in z]) if z else np.zeros(0, "S1")
    ids = np.concatenate([x["ids"] for x in z]) if z else np.zeros((0, NF), np.int64)
    vals = np.concatenate([x["vals"] for x in z]) if z else np.zeros((0, len(DENSE_FIELDS)), np.float32)
    del z
    n = len(keys)
    rev_unique, first_rev = np.unique(keys[::-1], return_index=True)
    last = n - 1 - first_rev  # file order: the last row of a repeated key wins
    present = np.flatnonzero((ids[last] >= 0).any(axis=0)) if n else np.zeros(0, np.int64)
    np.save(prefix + ".keys.npy", rev_unique)
    np.save(prefix + ".ids.npy", np.ascontiguousarray(ids[last][:, present]))
    np.save(prefix + ".vals.npy", np.ascontiguousarray(vals[last]))
    np.save(prefix + ".fields.npy", present)
    return {"keys": int(len(rev_unique)), "repeated_keys": int(n - len(rev_unique)),
            "fields_in_common": [SPARSE_FIELDS[i] for i in present]}


class _CommonIndex:
    def __init__(self, prefix: str):
        self.keys = np.load(prefix + ".keys.npy", mmap_mode="r")
        self.ids = np.load(prefix + ".ids.npy", mmap_mode="r")
        self.vals = np.load(prefix + ".vals.npy", mmap_mode="r")
        self.fields = np.load(prefix + ".fields.npy")
        self.width = self.keys.dtype.itemsize

    def join(self, buf: np.ndarray, k0: np.ndarray, k1: np.ndarray, ids: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """Merges common rows into (ids, vals) in place (common wins); returns the found mask."""
        n = len(k0)
        if len(self.keys) == 0 or n == 0:
            return np.zeros(n, bool)
        fits = (k1 - k0) <= self.width
        skeys = gather_spans(buf, k0, np.where(fits, k1, k0), self.width)
        pos = np.minimum(np.searchsorted(self.keys, skeys), len(self.keys) - 1)
        found = fits & (np.asarray(self.keys[pos]) == skeys)
        rows = np.flatnonzero(found)
        cids = np.asarray(self.ids[pos[rows]])
        for j, fpos in enumerate(self.fields):
            col = cids[:, j]
            has = col >= 0
            ids[rows[has], fpos] = col[has]
        cv = np.asarray(self.vals[pos[rows]])
        for j, fpos in enumerate(DENSE_POS):
            if fpos in self.fields:
                has = cids[:, list(self.fields).index(fpos)] >= 0
                vals[rows[has], j] = cv[has, j]
        return found


def _samples(role: str, path: str, start: int, end: int, work: str, opt: dict, stats: dict):
    """Parsed, filtered and joined sample rows of a byte range, block by block."""
    common = _CommonIndex(os.path.join(work, f"common_{role}"))
    for rows in _blocks(path, start, end, opt["block_bytes"], 5, opt["check_num_features"], opt["skip_bad_rows"],
                        stats):
        buf, head = rows["buf"], rows["head"]
        sid, ok = parse_int_spans(buf, *head[0])
        click = buf[head[1][0]].astype(np.int64) - 48
        buy = buf[head[2][0]].astype(np.int64) - 48
        okc = ((head[1][1] - head[1][0]) == 1) & ((head[2][1] - head[2][0]) == 1) & (click >= 0) & (click <= 1) \
            & (buy >= 0) & (buy <= 1)
        keyok = (head[3][1] - head[3][0]) >= 1
        good = ok & okc & keyok
        if not good.all():
            i = int(np.flatnonzero(~good)[0])
            msg = ("sample_id is not a non-negative integer" if not ok[i] else
                   "click and buy must be 0 or 1" if not okc[i] else "empty common_feature_index")
            if not opt["skip_bad_rows"]:
                line = int(rows["line"][i])
                raise _LineError(path, start, rows["line0"] + line, msg)
            stats["bad_rows"] = stats.get("bad_rows", 0) + int((~good).sum())
        inconsistent = (click == 0) & (buy == 1)
        stats["dropped_click0_buy1"] = stats.get("dropped_click0_buy1", 0) + int((good & inconsistent).sum())
        keep = good & ~inconsistent if opt["drop_click0_buy1"] else good
        idx = np.flatnonzero(keep)
        ids, vals = rows["ids"][idx], rows["vals"][idx]
        found = common.join(buf, head[3][0][idx], head[3][1][idx], ids, vals)
        stats["no_common_features"] = stats.get("no_common_features", 0) + int((~found).sum())
        dom = ids[:, DOMAIN_POS]
        if (dom < 0).any():
            i = int(np.flatnonzero(dom < 0)[0])
            if not opt["skip_bad_rows"]:
                raise _LineError(path, start, rows["line0"] + int(rows["line"][idx[i]]),
                                 f"field {DOMAIN_FIELD} (the scenario) is missing")
            stats["bad_rows"] = stats.get("bad_rows", 0) + int((dom < 0).sum())
            sel = dom >= 0
            idx, ids, vals = idx[sel], ids[sel], vals[sel]
        yield {"line": rows["line0"] + rows["line"][idx], "sample_id": sid[idx], "click": click[idx],
               "buy": buy[idx], "ids": ids, "vals": vals}


def stats_unit(role: str, path: str, start: int, end: int, work: str, opt: dict, out_path: str) -> dict:
    """Pass 1 over a byte range: id frequencies per field, domain first appearances, dense min/max."""
    stats: dict[str, Any] = {}
    cpu0 = _cpu_s()
    counts = [ValueCounts() for _ in SPARSE_FIELDS]
    dom_vals, dom_first = [], []
    dmin = np.full(len(DENSE_FIELDS), np.inf)
    dmax = np.full(len(DENSE_FIELDS), -np.inf)
    rows_n = 0
    try:
        for s in _samples(role, path, start, end, work, opt, stats):
            rows_n += len(s["ids"])
            for j in range(NF):
                col = s["ids"][:, j]
                counts[j].add(col[col >= 0])
            u, first = np.unique(s["ids"][:, DOMAIN_POS], return_index=True)
            dom_vals.append(u)
            dom_first.append(s["line"][first])
            if len(s["vals"]):
                dmin = np.minimum(dmin, s["vals"].min(axis=0))
                dmax = np.maximum(dmax, s["vals"].max(axis=0))
    except _LineError as e:
        return {"error": e.args}
    arrays = {}
    for j, c in enumerate(counts):
        v, n = c.result()
        arrays[f"v{j}"], arrays[f"c{j}"] = v.astype(np.int64), n
    dv = np.concatenate(dom_vals) if dom_vals else np.zeros(0, np.int64)
    df = np.concatenate(dom_first) if dom_first else np.zeros(0, np.int64)
    savez_atomic(out_path, dom_vals=dv, dom_first=df, dmin=dmin, dmax=dmax, **arrays)
    stats["rows"] = rows_n
    stats["max_rss_mb"] = _rss_mb()
    stats["cpu_s"] = round(_cpu_s() - cpu0, 3)
    return stats


def write_unit(role: str, path: str, start: int, end: int, work: str, opt: dict, index: int) -> dict:
    """Pass 2 over a byte range: writes shard ``index`` of every (domain, split) of the file."""
    stats: dict[str, Any] = {}
    cpu0 = _cpu_s()
    z = np.load(os.path.join(work, "vocab.npz"))
    vocabs = [Vocab(z[f"v{j}"], z[f"c{j}"], 1) for j in range(NF)]
    domain_values = z["domains"]
    dlo, dhi = z["dmin"], z["dmax"]
    feats = opt["sparse_features"]
    dense = opt["dense"] != "none"
    writer = ShardSetWriter(os.path.join(work, "out"), index, opt["num_shards"], len(domain_values),
                            ["train"] if role == "train" else ["valid", "test"],
                            [f"f{f}" for f in feats], [f"d{f}" for f in DENSE_FIELDS] if dense else [],
                            opt["label_keys"])
    sorted_dom = np.argsort(domain_values)
    try:
        for s in _samples(role, path, start, end, work, opt, stats):
            keep = np.ones(len(s["ids"]), bool)
            if opt["task"] == "cvr":
                keep &= s["click"] == 1
            raw_dom = s["ids"][:, DOMAIN_POS]
            p = np.minimum(np.searchsorted(domain_values[sorted_dom], raw_dom), len(domain_values) - 1)
            known = domain_values[sorted_dom][p] == raw_dom
            if not known.all():
                i = int(np.flatnonzero(~known)[0])
                if not opt["skip_bad_rows"]:
                    raise _LineError(path, start, int(s["line"][i]),
                                     f"field {DOMAIN_FIELD} has value {raw_dom[i]}, which the train file never has "
                                     f"(domains: {domain_values.tolist()})")
                stats["bad_rows"] = stats.get("bad_rows", 0) + int((~known).sum())
                keep &= known
            idx = np.flatnonzero(keep)
            if not len(idx):
                continue
            domain = sorted_dom[p[idx]].astype(np.int64)
            cols = {}
            for f in feats:
                j = SPARSE_FIELDS.index(f)
                cols[f"f{f}"] = vocabs[j].encode(s["ids"][idx, j])
            if dense:
                v = s["vals"][idx]
                if opt["dense"] == "minmax":
                    v = (v - dlo) / np.where(dhi > dlo, dhi - dlo, 1.0)
                for j, f in enumerate(DENSE_FIELDS):
                    cols[f"d{f}"] = v[:, j].astype(np.float32)
            if role == "train":
                split = np.zeros(len(idx), np.int8)
            else:
                split = np.where(split_uniform(s["sample_id"][idx], opt["seed"]) < opt["valid_frac"], 1, 2
                                 ).astype(np.int8)
            labels = {"click": s["click"][idx].astype(np.float32), "purchase": s["buy"][idx].astype(np.float32)}
            writer.write(cols, domain, split, labels)
    except _LineError as e:
        writer.abort()
        return {"error": e.args}
    except BaseException:
        writer.abort()
        raise
    stats["counts"] = writer.close()
    stats["max_rss_mb"] = _rss_mb()
    stats["cpu_s"] = round(_cpu_s() - cpu0, 3)
    return stats


# ------------------------------------------------------------------ driver

def _run(stage: str, units: list[tuple], fn, work: WorkDir, runner: UnitRunner, progress=log,
         peak: dict | None = None) -> list[dict]:
    """Runs the units of a stage not yet marked done; returns every unit's stats in order."""
    names = [f"{stage}-{u[0]}-{u[-1]:05d}" for u in units]
    todo = [(u, n) for u, n in zip(units, names) if work.done(n) is None]
    if len(todo) < len(units):
        progress(f"[{stage}] {len(units) - len(todo)}/{len(units)} units already done (resuming)")
    t0 = time.time()
    state = {"done": 0, "lines": 0}

    def on_result(i: int, res: dict) -> None:
        if "error" in res:
            _raise_line_error(_LineError(*res["error"]))
        work.mark(todo[i][1], res)
        state["done"] += 1
        state["lines"] += res.get("lines", 0)
        dt = max(time.time() - t0, 1e-9)
        progress(f"[{stage}] {todo[i][1]} done ({state['done']}/{len(todo)}): {res.get('lines', 0):,} lines; "
                 f"{state['lines'] / dt:,.0f} lines/s")

    runner.run(fn, [u for u, _ in todo], on_result)
    results = [work.done(n) for n in names]
    if peak is not None:
        peak["unit"] = max([peak.get("unit", 0.0)] + [r.get("max_rss_mb", 0.0) for r in results])
        peak[f"cpu_s_{stage.split('-')[0]}"] = peak.get(f"cpu_s_{stage.split('-')[0]}", 0.0) + sum(
            r.get("cpu_s", 0.0) for r in results)
    return results


def prepare(
    output_dir: str,
    *,
    raw_path: str,
    task: str = "ctr",
    min_freq: int = 10,
    drop_click0_buy1: bool = True,
    domain_as_feature: bool = True,
    dense: str = "minmax",
    dense_fit: str = "train",
    valid_frac: float = 0.5,
    seed: int = 2022,
    num_shards: int = 16,
    workers: int = 0,
    block_mb: float = 8.0,
    check_num_features: bool = True,
    skip_bad_rows: bool = False,
    keep_work: bool = False,
    input_format: str = "raw",
) -> dict:
    """Prepares Ali-CCP TFRecords (torch-rechub / HAMUR recipe); returns the schema.

    Args:
      output_dir: destination (appears only when complete).
      raw_path: folder (or archive) with the four raw CSV files, see the module doc.
      task: "ctr" (label click, all impressions), "cvr" (label purchase, clicked
        impressions) or "ctcvr" (label purchase, all impressions).
      min_freq: ids seen fewer times in the train file map to 0.
      drop_click0_buy1: drop the inconsistent click = 0, buy = 1 rows (rechub).
      domain_as_feature: keep field 301 as sparse feature ``f301`` too (HAMUR: yes).
      dense: "minmax" (scaled 8 dense fields), "raw" (unscaled) or "none" (HierRec).
      dense_fit: "train" (min/max of the train file) or "all" (train + test, rechub).
      valid_frac: fraction of the test file that becomes the valid split.
      seed: valid/test split seed (rechub 2022).
      num_shards: byte ranges per input file = TFRecord shards per (domain, split);
        also the unit of resumption and parallelism.
      workers: processes (0 = all CPU cores).
      block_mb: lines parsed per NumPy block (bounds the memory of a worker).
      check_num_features: require num_features to equal the number of entries.
      skip_bad_rows: skip and count malformed lines instead of failing.
      keep_work: keep the work directory (intermediate index, markers) after success.
      input_format: "raw" (the Tianchi files) or "rechub_csv" (torch-rechub's
        preprocessed ``ali_ccp_{train,val,test}[_sample].csv``, see ``prepare_rechub_csv``;
        only task, skip_bad_rows, num_shards, block_mb and keep_work apply).
    """
    if input_format == "rechub_csv":
        return prepare_rechub_csv(output_dir, raw_path=raw_path, task=task, num_shards=num_shards,
                                  block_mb=block_mb, skip_bad_rows=skip_bad_rows, keep_work=keep_work)
    if input_format != "raw":
        raise DataError(f"--input_format={input_format!r}: expected raw or rechub_csv")
    if task not in TASKS:
        raise DataError(f"--task={task!r}: expected one of {list(TASKS)}")
    if dense not in ("minmax", "raw", "none"):
        raise DataError(f"--dense={dense!r}: expected minmax, raw or none")
    if dense_fit not in ("train", "all"):
        raise DataError(f"--dense_fit={dense_fit!r}: expected train or all")
    if not 0.0 <= valid_frac <= 1.0:
        raise DataError(f"--valid_frac={valid_frac}: expected a fraction in [0, 1]")
    if num_shards < 1 or min_freq < 1:
        raise DataError("--num_shards and --min_freq must be >= 1")
    workers = workers or os.cpu_count() or 1
    src = StreamSource(raw_path)
    names = [n for pair in FILES.values() for n in pair]
    identities = {n: src.identity(n) for n in names}
    primary = TASKS[task][0]
    label_keys = [primary] + [k for k in ("click", "purchase") if k != primary]
    sparse_features = [f for f in SPARSE_FIELDS if domain_as_feature or f != DOMAIN_FIELD]
    options = dict(task=task, min_freq=min_freq, drop_click0_buy1=drop_click0_buy1,
                   domain_as_feature=domain_as_feature, dense=dense, dense_fit=dense_fit, valid_frac=valid_frac,
                   seed=seed, num_shards=num_shards, check_num_features=check_num_features,
                   skip_bad_rows=skip_bad_rows)
    fp = fingerprint({"aliccp": FORMAT_VERSION, "options": options, "sources": identities})
    done = existing_output(output_dir, fp)
    if done is not None:
        log(f"reusing finished output in {output_dir} (same inputs and options)")
        return done
    t_start = time.time()
    work = WorkDir(output_dir, fp)
    runner = UnitRunner(workers)
    peak: dict[str, float] = {}
    paths: dict[str, str] = {}
    try:
        paths = src.materialize(names, os.path.join(work.path, "raw"))
        opt = dict(options, block_bytes=int(block_mb * (1 << 20)), label_keys=label_keys,
                   sparse_features=sparse_features)
        # 1. common-feature index per file
        for role, (_, cname) in FILES.items():
            prefix = work.file(f"common_{role}")
            if work.done(f"common-{role}-merged") is None:
                ranges = byte_ranges(paths[cname], num_shards)
                units = [(role, paths[cname], s, e, work.file("common_parts", f"{role}-{i:05d}.npz"),
                          opt["block_bytes"], check_num_features, skip_bad_rows, i)
                         for i, (s, e) in enumerate(ranges)]
                _run(f"common-{role}", units, _common_unit_entry, work, runner, peak=peak)
                info = merge_common([u[4] for u in units], prefix)
                work.mark(f"common-{role}-merged", info)
                log(f"[common-{role}] index: {info['keys']:,} keys; fields {info['fields_in_common']}")
        # 2. pass 1: vocabularies, domains, dense ranges
        stats_roles = ["train"] + (["test"] if dense_fit == "all" and dense == "minmax" else [])
        pass1 = {}
        for role in stats_roles:
            sname = FILES[role][0]
            ranges = byte_ranges(paths[sname], num_shards)
            units = [(role, paths[sname], s, e, work.path, opt, work.file("stats", f"{role}-{i:05d}.npz"), i)
                     for i, (s, e) in enumerate(ranges)]
            pass1[role] = (units, _run(f"stats-{role}", units, _stats_unit_entry, work, runner, peak=peak))
        vocab_info = work.done("vocab")
        if vocab_info is None:
            vocab_info = _build_vocab(work, pass1, min_freq, paths[FILES["train"][0]])
        # 3. pass 2: shards
        counts = _empty_counts(len(vocab_info["domains"]), label_keys)
        totals: dict[str, int] = {}
        for role in ("train", "test"):
            sname = FILES[role][0]
            ranges = byte_ranges(paths[sname], num_shards)
            units = [(role, paths[sname], s, e, work.path, opt, i) for i, (s, e) in enumerate(ranges)]
            for res in _run(f"write-{role}", units, _write_unit_entry, work, runner, peak=peak):
                merge_counts(counts, res["counts"])
                for k in ("lines", "bad_rows", "dropped_click0_buy1", "no_common_features"):
                    totals[f"{role}_{k}"] = totals.get(f"{role}_{k}", 0) + int(res.get(k, 0))
        features = [FeatureDef(f"f{f}", "categorical", vocab_size=vocab_info["sizes"][f],
                               group=GROUPS[f], is_id=f in ("101", "205")) for f in sparse_features]
        if dense != "none":
            features += [FeatureDef(f"d{f}", "dense", group=GROUPS[f]) for f in DENSE_FIELDS]
        z = np.load(work.file("vocab.npz"))
        os.makedirs(os.path.join(work.out, "vocab"), exist_ok=True)
        for f in sparse_features:
            j = SPARSE_FIELDS.index(f)
            write_vocab_file(os.path.join(work.out, "vocab", f"f{f}.txt"), Vocab(z[f"v{j}"], z[f"c{j}"], 1).values)
        elapsed = time.time() - t_start
        metadata = {
            "source": os.path.abspath(raw_path), "source_files": identities, "options": options,
            "task": task, "task_text": TASKS[task][1],
            "domain_field": DOMAIN_FIELD, "domain_raw_values": vocab_info["domains"],
            "normalizers": ({f"d{f}": {"minmax": [vocab_info["dmin"][j], vocab_info["dmax"][j]]}
                             for j, f in enumerate(DENSE_FIELDS)} if dense == "minmax" else {}),
            "field_semantics": {f"f{k}": v for k, v in FIELD_SEMANTICS.items()},
            "vocab_from": "train", "min_freq": min_freq,
            "common_index": {r: work.done(f"common-{r}-merged") for r in FILES},
            "row_totals": totals,
            "skipped_bad_rows": sum(v for k, v in totals.items() if k.endswith("bad_rows")),
            "peak_rss_mb": {"parent": _rss_mb(), "largest_unit": peak.get("unit", 0.0)},
            "worker_cpu_seconds": {k[6:]: round(v, 1) for k, v in peak.items() if k.startswith("cpu_s_")},
            "prepare_seconds_last_run": round(elapsed, 1),
        }
        return finish_streamed_dataset(
            work, dataset="aliccp", features=features,
            domain_names=[f"{DOMAIN_FIELD}={v}" for v in vocab_info["domains"]], label_keys=label_keys,
            counts=counts, num_shards=num_shards, fp=fp, metadata=metadata, keep_work=keep_work)
    except DataError as e:
        raise _with_user_paths(e, src, paths) from e
    finally:
        runner.close()
        work.release()


def _with_user_paths(e: DataError, src: StreamSource, paths: dict[str, str]) -> DataError:
    """The error with every extracted copy's path replaced by the user's file (line numbers agree)."""
    msg = str(e)
    for name, p in paths.items():
        if p != src.plain_path(name):
            msg = msg.replace(p, src.where(name))
    return DataError(msg)


RECHUB_HEADER = ("click", "purchase") + SPARSE_FIELDS + tuple(f"D{f}" for f in DENSE_FIELDS)
RECHUB_FILES = {"train": "ali_ccp_train", "valid": "ali_ccp_val", "test": "ali_ccp_test"}
# HAMUR / SWR: domain_indicator = {1: 0, 2: 1, 3: 2}[encoded 301].
RECHUB_DOMAINS = (1, 2, 3)


def prepare_rechub_csv(output_dir: str, *, raw_path: str, task: str = "ctr", num_shards: int = 4,
                       block_mb: float = 16.0, skip_bad_rows: bool = False, keep_work: bool = False) -> dict:
    """Ali-CCP from torch-rechub's preprocessed CSVs (what HAMUR / SWR train on).

    Files ``ali_ccp_{train,val,test}.csv`` (or the ``_sample`` versions), header
    ``click,purchase,101,...,150_14,D109_14,...,D853``: ids already encoded by rechub
    (first appearance, frequency >= 10, 0 = OOV) and dense values already min-max scaled.
    Ids are kept as they are (``vocab_size = max + 1`` over the three files, as HAMUR);
    domain = HAMUR's map of the encoded 301 value {1: 0, 2: 1, 3: 2}; the files give the
    splits. ``vocab/<f>.txt`` lists the rechub ids (their raw values are in rechub's
    ``features_map.pkl``, not read here).
    """
    if task not in TASKS:
        raise DataError(f"--task={task!r}: expected one of {list(TASKS)}")
    src = StreamSource(raw_path)
    names = {}
    for split, stem in RECHUB_FILES.items():
        for cand in (f"{stem}.csv", f"{stem}_sample.csv"):
            if src.has(cand):
                names[split] = cand
                break
        else:
            raise DataError(f"{raw_path}: no {stem}.csv (nor {stem}_sample.csv); expected torch-rechub's "
                            "preprocessed Ali-CCP files")
    identities = {n: src.identity(n) for n in names.values()}
    primary = TASKS[task][0]
    label_keys = [primary] + [k for k in ("click", "purchase") if k != primary]
    options = dict(input_format="rechub_csv", task=task, num_shards=num_shards, skip_bad_rows=skip_bad_rows)
    fp = fingerprint({"aliccp": FORMAT_VERSION, "options": options, "sources": identities})
    done = existing_output(output_dir, fp)
    if done is not None:
        log(f"reusing finished output in {output_dir} (same inputs and options)")
        return done
    block_bytes = int(block_mb * (1 << 20))
    dom_lut = np.full(max(RECHUB_DOMAINS) + 1, -1, np.int64)
    dom_lut[list(RECHUB_DOMAINS)] = np.arange(len(RECHUB_DOMAINS))

    def blocks(split: str, stats: dict):
        where = src.where(names[split])
        header, line0 = None, 0
        with src.open(names[split]) as f:
            for block in iter_line_blocks(f, block_bytes=block_bytes):
                if header is None:
                    cut = block.index(b"\n") + 1
                    header = block[:cut].decode().strip().split(",")
                    if tuple(header) != RECHUB_HEADER:
                        raise DataError(f"{where}:1: header {header[:6]}... is not rechub's "
                                        f"{','.join(RECHUB_HEADER[:6])},...")
                    block, line0 = block[cut:], 1
                buf = np.frombuffer(block, np.uint8)
                lines, cols, bad = split_delimited(buf, 44, len(RECHUB_HEADER))
                span = dict(zip(RECHUB_HEADER, cols))
                keep = np.ones(len(lines), bool)
                out = {}
                for c in RECHUB_HEADER:
                    if c.startswith("D"):
                        v, ok = parse_float_spans(buf, *span[c])
                    else:
                        v, ok = parse_int_spans(buf, *span[c])
                        if c in ("click", "purchase"):
                            ok &= v <= 1
                    for i in np.flatnonzero(~ok & keep)[:1000]:
                        bad.setdefault(int(lines[i]),
                                       f"column {c} is not a{' 0/1' if c in ('click', 'purchase') else 'n'} "
                                       f"{'number' if c.startswith('D') else 'integer'}")
                    keep &= ok
                    out[c] = v
                dom = dom_lut[np.clip(out["301"], 0, len(dom_lut) - 1)]
                dom = np.where(out["301"] < len(dom_lut), dom, -1)
                for i in np.flatnonzero((dom < 0) & keep)[:1000]:
                    bad.setdefault(int(lines[i]), f"encoded 301 must be one of {RECHUB_DOMAINS} (HAMUR's domains)")
                keep &= dom >= 0
                if bad:
                    j = min(bad)
                    if not skip_bad_rows:
                        text = block.split(b"\n")[j][:160].decode("latin-1")
                        raise DataError(f"{where}:{line0 + j + 1}: {bad[j]}; line was {text!r}")
                    stats["bad_rows"] = stats.get("bad_rows", 0) + len(bad)
                line0 += block.count(b"\n")
                idx = np.flatnonzero(keep)
                yield {c: v[idx] for c, v in out.items()}, dom[idx]

    t0 = time.time()
    work = WorkDir(output_dir, fp)
    try:
        p1 = work.done("rechub-pass1")
        if p1 is None:
            vmax = {f: 0 for f in SPARSE_FIELDS}
            for split in RECHUB_FILES:
                for cols, _ in blocks(split, {}):
                    for f in SPARSE_FIELDS:
                        if len(cols[f]):
                            vmax[f] = max(vmax[f], int(cols[f].max()))
            p1 = {"vmax": vmax}
            work.mark("rechub-pass1", p1)
        writer = StreamingWriter(work.out, num_shards, len(RECHUB_DOMAINS), [f"f{f}" for f in SPARSE_FIELDS],
                                 [f"d{f}" for f in DENSE_FIELDS], label_keys)
        stats: dict[str, Any] = {}
        try:
            for s_id, split in enumerate(RECHUB_FILES):
                for cols, dom in blocks(split, stats):
                    keep = cols["click"] == 1 if task == "cvr" else np.ones(len(dom), bool)
                    idx = np.flatnonzero(keep)
                    feats = {f"f{f}": cols[f][idx] for f in SPARSE_FIELDS}
                    feats.update({f"d{f}": cols[f"D{f}"][idx].astype(np.float32) for f in DENSE_FIELDS})
                    writer.write(feats, dom[idx], np.full(len(idx), s_id, np.int8),
                                 {"click": cols["click"][idx].astype(np.float32),
                                  "purchase": cols["purchase"][idx].astype(np.float32)})
        except BaseException:
            writer.abort()
            raise
        counts = writer.close()
        os.makedirs(os.path.join(work.out, "vocab"), exist_ok=True)
        for f in SPARSE_FIELDS:
            write_vocab_file(os.path.join(work.out, "vocab", f"f{f}.txt"), range(1, p1["vmax"][f] + 1))
        features = [FeatureDef(f"f{f}", "categorical", vocab_size=p1["vmax"][f] + 1, group=GROUPS[f],
                               is_id=f in ("101", "205")) for f in SPARSE_FIELDS]
        features += [FeatureDef(f"d{f}", "dense", group=GROUPS[f]) for f in DENSE_FIELDS]
        metadata = {"source": os.path.abspath(raw_path), "source_files": identities, "options": options,
                    "task": task, "task_text": TASKS[task][1], "domain_field": DOMAIN_FIELD,
                    "domain_raw_values": "rechub-encoded 301 = 1, 2, 3",
                    "field_semantics": {f"f{k}": v for k, v in FIELD_SEMANTICS.items()},
                    "vocab_from": "rechub encoding (train, min frequency 10)",
                    "skipped_bad_rows": int(stats.get("bad_rows", 0)),
                    "prepare_seconds_last_run": round(time.time() - t0, 1)}
        return finish_streamed_dataset(work, dataset="aliccp", features=features,
                                       domain_names=[f"301=rechub {v}" for v in RECHUB_DOMAINS],
                                       label_keys=label_keys, counts=counts, num_shards=num_shards, fp=fp,
                                       metadata=metadata, keep_work=keep_work)
    finally:
        work.release()


def _build_vocab(work: WorkDir, pass1: dict, min_freq: int, train_path: str) -> dict:
    """Merges the pass-1 tables of every range: vocabularies (one field at a time, so the
    parent holds one field's distinct ids at once), domain order, dense min/max."""
    train_units, train_res = pass1["train"]
    dom_vals, dom_first = [], []
    dmin = np.full(len(DENSE_FIELDS), np.inf)
    dmax = np.full(len(DENSE_FIELDS), -np.inf)
    line_offset = 0
    for u, r in zip(train_units, train_res):
        z = np.load(u[6])
        dom_vals.append(z["dom_vals"])
        dom_first.append(z["dom_first"] + line_offset)  # ranges are in file order
        line_offset += int(r.get("lines", 0))
    for role, (us, _) in pass1.items():
        for u in us:
            z = np.load(u[6])
            dmin = np.minimum(dmin, z["dmin"])
            dmax = np.maximum(dmax, z["dmax"])
    dv = np.concatenate(dom_vals) if dom_vals else np.zeros(0, np.int64)
    df = np.concatenate(dom_first) if dom_first else np.zeros(0, np.int64)
    if len(dv) == 0:
        raise DataError(f"{train_path}: no usable training rows")
    seen: list[int] = []
    for v in dv[np.argsort(df, kind="stable")]:
        if int(v) not in seen:
            seen.append(int(v))
    arrays, sizes = {}, {}
    for j, f in enumerate(SPARSE_FIELDS):
        counts = ValueCounts()
        for u in train_units:
            z = np.load(u[6])
            counts.add(z[f"v{j}"], z[f"c{j}"])
        v, c = counts.result()
        voc = Vocab(v, c, min_freq)
        arrays[f"v{j}"], arrays[f"c{j}"] = voc.values, voc.counts
        sizes[f] = len(voc)
    dmin = np.where(np.isfinite(dmin), dmin, 0.0)
    dmax = np.where(np.isfinite(dmax), dmax, 0.0)
    savez_atomic(work.file("vocab.npz"), domains=np.array(seen, np.int64), dmin=dmin, dmax=dmax, **arrays)
    info = {"domains": seen, "sizes": sizes, "dmin": dmin.tolist(), "dmax": dmax.tolist()}
    work.mark("vocab", info)
    log(f"[vocab] domains (field {DOMAIN_FIELD}, first appearance): {seen}; sizes "
        + ", ".join(f"{f}:{s}" for f, s in sizes.items()))
    return info


# Unit entry points: first element = role, last = index (names the marker).
def _common_unit_entry(role, path, start, end, out_path, block_bytes, check_num, skip_bad, index):
    return common_unit(path, start, end, out_path, block_bytes, check_num, skip_bad)


def _stats_unit_entry(role, path, start, end, work, opt, out_path, index):
    return stats_unit(role, path, start, end, work, opt, out_path)


def _write_unit_entry(role, path, start, end, work, opt, index):
    return write_unit(role, path, start, end, work, opt, index)


# ------------------------------------------------------------------ CLI

FLAGS = flags.FLAGS


def define_flags() -> None:
    define_streaming_flags(raw_path_help="Folder (or archive) with sample_skeleton_*/common_features_* files.",
                           num_shards=16, num_shards_help="Byte ranges per file = shards per (domain, split); "
                           "unit of resumption.", block_mb=8.0,
                           block_mb_help="MiB of lines parsed per block (bounds worker memory).")
    flags.DEFINE_enum("task", "ctr", list(TASKS), "ctr: label click; cvr: label purchase on clicked rows; "
                      "ctcvr: label purchase (= click and buy) on all rows.")
    flags.DEFINE_integer("min_freq", 10, "Ids seen fewer times in the train file map to 0.")
    flags.DEFINE_boolean("drop_click0_buy1", True, "Drop inconsistent rows with click = 0 and buy = 1.")
    flags.DEFINE_boolean("domain_as_feature", True, "Also keep field 301 as the sparse feature f301 (HAMUR).")
    flags.DEFINE_enum("dense", "minmax", ["minmax", "raw", "none"], "The 8 dense fields: scaled, raw, or dropped.")
    flags.DEFINE_enum("dense_fit", "train", ["train", "all"], "Rows whose min/max scale the dense fields.")
    flags.DEFINE_float("valid_frac", 0.5, "Fraction of the test file that becomes the valid split.")
    flags.DEFINE_integer("seed", 2022, "Valid/test split seed.")
    flags.DEFINE_integer("workers", 0, "Worker processes (0 = number of CPU cores).")
    flags.DEFINE_boolean("check_num_features", True, "Require num_features to equal the number of entries.")
    flags.DEFINE_enum("input_format", "raw", ["raw", "rechub_csv"], "raw Tianchi files, or torch-rechub's "
                      "preprocessed ali_ccp_{train,val,test}.csv (ids and dense values kept as they are).")


def _prepare_from_flags(f: flags.FlagValues) -> None:
    prepare(f.output_dir, raw_path=f.raw_path, input_format=f.input_format, task=f.task,
            min_freq=f.min_freq,
            drop_click0_buy1=f.drop_click0_buy1, domain_as_feature=f.domain_as_feature,
            dense=f.dense, dense_fit=f.dense_fit, valid_frac=f.valid_frac, seed=f.seed,
            num_shards=f.num_shards, workers=f.workers, block_mb=f.block_mb,
            check_num_features=f.check_num_features, skip_bad_rows=f.skip_bad_rows,
            keep_work=f.keep_work)


def cli() -> None:
    run_cli(define_flags, _prepare_from_flags, required=("raw_path", "output_dir"))


if __name__ == "__main__":
    cli()
