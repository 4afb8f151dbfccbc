"""IJCAI-18 Alimama sponsored-search conversion data ("IAAC", Tianchi) -> TFRecords by scenario.

Inputs, as downloaded (login needed; not redistributable): the round-1 training file
``round1_ijcai_18_train_20180301.txt`` or the round-2 ``round2_train.txt`` (plain, .gz,
or inside the downloaded .zip / .tar.gz; a folder holding them works too). The test
files carry no ``is_trade`` label and are not used.

Raw format (datasets.md §6): space-separated, one header line naming the 27 columns,
``-1`` = missing; nested fields ``item_category_list`` (``c0;c1[;c2]``),
``item_property_list`` (``p0;p1;...``) and ``predict_category_property``
(``catA:p1,p2;catB:-1;...``). Label ``is_trade`` (CVR).

Recipe (defaults follow Ant's MMLRec benchmark, ``configs_msl/config_IAAC.json``, the
closest public code to MI-DPG, which uses this data; MI-DPG's own choices are unknown):
  * scenarios = ``user_gender_id`` values (-1, 0, 1, 2 -> 4 domains, sorted) — MMLRec;
    ``--domain_field`` picks another column (e.g. ``context_page_id`` or
    ``item_category_1``), ``--top_k_domains`` keeps the k most frequent values;
  * features: MMLRec's 18 sparse columns + the scenario column, and 4 dense columns
    (shop review rate / service / delivery / description scores, min-max scaled on
    train; the missing marker -1 is left out of the range and written as -1.0). Our deviation
    (a flag): ``context_timestamp`` is replaced by the derived ``context_hour`` (a raw-timestamp
    category is unseen in any later day);
  * nested fields (``--list_mode``): ``whole`` (MMLRec: each whole string is one
    category) or ``split`` (``item_category_1/2``, the first ``max_list_items``
    properties and predicted categories as separate categorical features);
  * ``-1`` in a categorical feature maps to id 0 (missing) — but it stays a value of
    the scenario column (MMLRec's 4th gender domain);
  * split by day (``context_timestamp`` + ``tz_offset_hours``, Beijing time by default):
    the last day is test, the day before valid, the rest train (MMLRec used separately
    provided train/test csv files whose split is unpublished);
  * repeated ``instance_id`` rows: only the first is kept (as competition scripts do);
  * vocabularies from train days only (unseen ids -> 0), ids by frequency.

Two streamed passes (pass 1: days, frequencies, dense ranges, duplicate ids; pass 2:
shards), vectorised per block: memory is bounded by the block size, the
vocabularies and one small array per row (instance ids for the duplicate check).

Example:
  python -m data_prep.ijcai18 --raw_path=/data/ijcai18 --round=1 --output_dir=data/iaac_gender
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np
from absl import flags

from data_prep.common import (SPLITS, DataError, FeatureDef, StreamingWriter, StreamSource, ValueCounts, Vocab,
                              WorkDir, existing_output, finish_streamed_dataset, fingerprint, gather_spans,
                              iter_line_blocks, log, parse_float_spans, parse_int_spans, split_delimited,
                              write_vocab_file, run_cli)
from data_prep.common import define_streaming_flags, savez_atomic

FORMAT_VERSION = 2  # 2: the dense missing marker -1 is kept as -1.0, not min-max scaled
TRAIN_FILES = {"1": ("round1_ijcai_18_train_20180301.txt",), "2": ("round2_train.txt",)}
COLUMNS = ("instance_id", "item_id", "item_category_list", "item_property_list", "item_brand_id", "item_city_id",
           "item_price_level", "item_sales_level", "item_collected_level", "item_pv_level", "user_id",
           "user_gender_id", "user_age_level", "user_occupation_id", "user_star_level", "context_id",
           "context_timestamp", "context_page_id", "predict_category_property", "shop_id", "shop_review_num_level",
           "shop_review_positive_rate", "shop_star_level", "shop_score_service", "shop_score_delivery",
           "shop_score_description", "is_trade")
#: The missing marker of the dense shop columns (their real values are rates / scores >= 0).
#: It is excluded from the min-max range and written as -1.0 (outside the [0, 1] of scaled
#: train values), with ``--dense=raw`` as well.
MISSING_DENSE = -1.0
DENSE = ("shop_review_positive_rate", "shop_score_service", "shop_score_delivery", "shop_score_description")
NESTED = ("item_category_list", "item_property_list", "predict_category_property")
# MMLRec's sparse feature columns, context_timestamp replaced by context_hour (ours).
MMLREC_FEATURES = ("item_category_list", "item_property_list", "item_brand_id", "item_city_id", "item_price_level",
                   "item_sales_level", "item_collected_level", "item_pv_level", "user_age_level",
                   "user_occupation_id", "user_star_level", "context_id", "context_hour", "context_page_id",
                   "predict_category_property", "shop_id", "shop_review_num_level", "shop_star_level")
RAW_CATEGORICAL = tuple(c for c in COLUMNS if c not in DENSE + ("is_trade", "instance_id"))
GROUPS = {"item": ("item_id", "item_category_list", "item_property_list", "item_brand_id", "item_city_id",
                   "item_price_level", "item_sales_level", "item_collected_level", "item_pv_level",
                   "item_category_1", "item_category_2"),
          "user": ("user_id", "user_gender_id", "user_age_level", "user_occupation_id", "user_star_level"),
          "context": ("context_id", "context_timestamp", "context_page_id", "predict_category_property",
                      "context_hour"),
          "shop": ("shop_id", "shop_review_num_level", "shop_star_level") + DENSE}
LIST_MODES = ("whole", "split")


def _group(name: str) -> str:
    if name.startswith("item_property_"):
        return "item"
    if name.startswith("predict_category_"):
        return "context"
    for g, names in GROUPS.items():
        if name in names:
            return "item" if g == "shop" else g
    return "context"


def derived_features(list_mode: str, max_list_items: int) -> tuple[str, ...]:
    """Feature names that replace the nested columns in ``split`` mode."""
    if list_mode == "whole":
        return ()
    return (("item_category_1", "item_category_2")
            + tuple(f"item_property_{k}" for k in range(max_list_items))
            + tuple(f"predict_category_{k}" for k in range(max_list_items)))


def default_features(list_mode: str = "whole", max_list_items: int = 3) -> tuple[str, ...]:
    if list_mode == "whole":
        return MMLREC_FEATURES
    out = []
    for f in MMLREC_FEATURES:
        if f == "item_category_list":
            out += ["item_category_1", "item_category_2"]
        elif f == "item_property_list":
            out += [f"item_property_{k}" for k in range(max_list_items)]
        elif f == "predict_category_property":
            out += [f"predict_category_{k}" for k in range(max_list_items)]
        else:
            out.append(f)
    return tuple(out)


def _nth_items(buf: np.ndarray, start: np.ndarray, end: np.ndarray, sep: int, k: int,
               stop: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Spans of the first ``k`` ``sep``-separated items of each span (empty span = absent).
    With ``stop``, each item ends at its first ``stop`` byte (``catA:p1,p2`` -> ``catA``)."""
    n = len(start)
    pos = np.flatnonzero(buf == sep)
    row = np.searchsorted(end, pos)
    inside = (row < n) & (pos >= start[np.minimum(row, n - 1)])
    pos, row = pos[inside], row[inside]
    first = np.searchsorted(row, np.arange(n))  # index in pos of each row's first separator
    cnt = np.bincount(row, minlength=n)[:n]
    out = []
    item_start = start.copy()
    for j in range(k):
        has_sep = cnt > j
        item_end = np.where(has_sep, pos[np.minimum(first + j, len(pos) - 1)], end) if len(pos) else end
        present = (cnt >= j) & (end > start)
        s, e = np.where(present, item_start, 0), np.where(present, item_end, 0)
        if stop is not None and len(s):
            sp = np.flatnonzero(buf == stop)
            if len(sp):
                nxt = sp[np.minimum(np.searchsorted(sp, s), len(sp) - 1)]
                e = np.where((nxt >= s) & (nxt < e), nxt, e)
        out.append((s, e))
        item_start = np.where(has_sep, item_end + 1, end)
    return out


class _Parsed:
    """Columns of one block (byte spans into ``buf``) and the derived values."""

    def __init__(self, block: bytes, header: list[str], tz_offset: int):
        self.buf = np.frombuffer(block, np.uint8)
        self.lines, cols, self.bad = split_delimited(self.buf, 32, len(header))
        self.spans = dict(zip(header, cols))
        self.n = len(self.lines)
        self.tz = tz_offset
        self.keep = np.ones(self.n, bool)

    def fail(self, mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask & self.keep)[:1000]:
            self.bad.setdefault(int(self.lines[i]), reason)
        self.keep &= ~mask

    def raw(self, name: str) -> np.ndarray:
        return gather_spans(self.buf, *self.spans[name])

    def check(self) -> None:
        ts, ok = parse_int_spans(self.buf, *self.spans["context_timestamp"])
        self.fail(~ok, "context_timestamp is not an integer (Unix seconds)")
        self.ts = ts
        label, ok = parse_int_spans(self.buf, *self.spans["is_trade"])
        self.fail(~ok | (label < 0) | (label > 1), "is_trade must be 0 or 1")
        self.label = label.astype(np.float32)
        self.dense = {}
        for c in DENSE:
            v, ok = parse_float_spans(self.buf, *self.spans[c])
            self.fail(~ok, f"{c} is not a number")
            self.dense[c] = v
        empty = np.zeros(self.n, bool)
        for c in COLUMNS:
            s, e = self.spans[c]
            empty |= e <= s
        self.fail(empty, "empty field (missing values are written -1)")
        self.day = (ts + self.tz * 3600) // 86400
        self.hour = ((ts + self.tz * 3600) % 86400) // 3600

    def feature(self, name: str) -> np.ndarray:
        """Raw values (bytes) of a categorical feature, derived ones included."""
        if name in self.spans:
            return self.raw(name)
        if name == "context_hour":
            return self.hour.astype("S2")
        if name in ("item_category_1", "item_category_2"):
            j = int(name[-1])
            s, e = _nth_items(self.buf, *self.spans["item_category_list"], ord(";"), j + 1)[j]
            return gather_spans(self.buf, s, e)
        if name.startswith("item_property_"):
            j = int(name.rsplit("_", 1)[1])
            s, e = _nth_items(self.buf, *self.spans["item_property_list"], ord(";"), j + 1)[j]
            return gather_spans(self.buf, s, e)
        if name.startswith("predict_category_"):
            j = int(name.rsplit("_", 1)[1])
            s, e = _nth_items(self.buf, *self.spans["predict_category_property"], ord(";"), j + 1, ord(":"))[j]
            return gather_spans(self.buf, s, e)
        return self.raw(name)


def _read(src: StreamSource, files: Sequence[str], block_bytes: int, tz: int, skip_bad: bool, stats: dict):
    """Parsed blocks of the training files, in order; checks the header and every line."""
    for name in files:
        where = src.where(name)
        header = None
        line0 = 0
        with src.open(name) as f:
            for block in iter_line_blocks(f, block_bytes=block_bytes):
                if header is None:
                    cut = block.index(b"\n") + 1
                    header = block[:cut].decode("utf-8", "replace").split()
                    missing = [c for c in COLUMNS if c not in header]
                    if missing:
                        hint = " (a test file? they have no is_trade label)" if missing == ["is_trade"] else ""
                        raise DataError(f"{where}:1: header lacks columns {missing}{hint}; "
                                        f"expected the 27 IJCAI-18 columns")
                    block = block[cut:]
                    line0 = 1
                p = _Parsed(block, header, tz)
                p.check()
                if p.bad:
                    first = min(p.bad)
                    if not skip_bad:
                        text = block.split(b"\n")[first][:160].decode("utf-8", "replace")
                        raise DataError(f"{where}:{line0 + first + 1}: {p.bad[first]}; line was {text!r}")
                    stats["bad_rows"] = stats.get("bad_rows", 0) + len(p.bad)
                line0 += block.count(b"\n")
                stats["lines"] = stats.get("lines", 0) + block.count(b"\n")
                yield p


def prepare(
    output_dir: str,
    *,
    raw_path: str,
    round_id: str = "1",
    train_files: Sequence[str] | None = None,
    domain_field: str = "user_gender_id",
    top_k_domains: int = 0,
    list_mode: str = "whole",
    max_list_items: int = 3,
    features: Sequence[str] | None = None,
    dense: str = "minmax",
    missing_as_oov: bool = True,
    domain_as_feature: bool = True,
    valid_days: int = 1,
    test_days: int = 1,
    tz_offset_hours: int = 8,
    min_freq: int = 1,
    dedup: bool = True,
    num_shards: int = 4,
    block_mb: float = 16.0,
    skip_bad_rows: bool = False,
    keep_work: bool = False,
) -> dict:
    """Prepares IJCAI-18 (IAAC) TFRecords; returns the schema.

    Args:
      output_dir: destination (appears only when complete).
      raw_path: file, folder or archive holding the training file(s).
      round_id: "1" or "2": the competition round whose training file is read (``TRAIN_FILES``).
      train_files: explicit file names instead (read in this order).
      domain_field: column (or derived feature, e.g. ``item_category_1``) whose values
        are the scenarios.
      top_k_domains: keep only the k most frequent scenario values of the train days
        (0 = all); rows of other values are dropped.
      list_mode: "whole" or "split" (see module doc).
      max_list_items: items kept per nested list in split mode.
      features: sparse features (default: MMLRec's list for ``list_mode``).
      dense: "minmax" (train min/max), "raw" or "none".
      missing_as_oov: "-1" of a categorical feature -> id 0.
      domain_as_feature: also feed the scenario column as a sparse feature (MMLRec).
      valid_days, test_days: trailing days for valid and test.
      tz_offset_hours: hours added to the Unix timestamp before taking days/hours.
      min_freq: values seen fewer times on train days map to 0.
      dedup: keep only the first row of a repeated instance_id.
      num_shards: shards per (domain, split).
      block_mb: MiB of lines parsed per block.
      skip_bad_rows: skip and count malformed lines instead of failing.
      keep_work: keep the work directory after success.
    """
    if list_mode not in LIST_MODES:
        raise DataError(f"--list_mode={list_mode!r}: expected one of {LIST_MODES}")
    if dense not in ("minmax", "raw", "none"):
        raise DataError(f"--dense={dense!r}: expected minmax, raw or none")
    files = tuple(train_files) if train_files else TRAIN_FILES.get(str(round_id))
    if files is None:
        raise DataError(f"--round={round_id!r}: expected 1 or 2 (or pass --train_files)")
    known = set(RAW_CATEGORICAL) | {"context_hour"} | set(derived_features("split", max_list_items))
    features = tuple(features) if features else default_features(list_mode, max_list_items)
    unknown = [f for f in features if f not in known]
    if unknown:
        raise DataError(f"--features: unknown {unknown}; expected raw categorical columns, context_hour, "
                        f"item_category_1/2, item_property_<k>, predict_category_<k> (k < {max_list_items})")
    if domain_field not in known:
        raise DataError(f"--domain_field={domain_field!r}: expected a categorical column or derived feature")
    if domain_as_feature and domain_field not in features:
        features = features + (domain_field,)
    src = StreamSource(raw_path)
    identities = {n: src.identity(n) for n in files}
    options = dict(files=list(files), domain_field=domain_field, top_k_domains=top_k_domains, list_mode=list_mode,
                   max_list_items=max_list_items, features=list(features), dense=dense,
                   missing_as_oov=missing_as_oov, valid_days=valid_days, test_days=test_days,
                   tz_offset_hours=tz_offset_hours, min_freq=min_freq, dedup=dedup, num_shards=num_shards,
                   skip_bad_rows=skip_bad_rows)
    fp = fingerprint({"ijcai18": FORMAT_VERSION, "options": options, "sources": identities})
    done = existing_output(output_dir, fp)
    if done is not None:
        log(f"reusing finished output in {output_dir} (same inputs and options)")
        return done
    block_bytes = int(block_mb * (1 << 20))
    t0 = time.time()
    work = WorkDir(output_dir, fp)
    try:
        p1 = work.done("pass1")
        if p1 is None:
            p1 = _pass1(work, src, files, features, domain_field, block_bytes, tz_offset_hours, skip_bad_rows,
                        valid_days, test_days, top_k_domains, min_freq, missing_as_oov, dedup)
        days = p1["days"]
        day_arr = np.array(days, np.int64)
        split_of_day = np.array(p1["day_split"], np.int8)
        domains = p1["domains"]
        z = np.load(work.file("pass1.npz"))
        vocabs = {f: Vocab(z[f"v_{f}"], z[f"c_{f}"], 1) for f in features}
        dom_bytes = np.array([d.encode() for d in domains], dtype=f"S{max(1, max(len(d) for d in domains))}")
        dom_order = np.argsort(dom_bytes)
        dom_sorted = dom_bytes[dom_order]
        keep_first = np.unpackbits(z["keep_first"], count=int(z["n_rows"])).astype(bool)
        dlo, dhi = np.array(p1["dmin"]), np.array(p1["dmax"])
        dense_names = list(DENSE) if dense != "none" else []
        writer = StreamingWriter(work.out, num_shards, len(domains), list(features), dense_names, ["is_trade"])
        stats: dict[str, Any] = {}
        row0 = 0
        log("[write] pass 2: writing shards ...")
        try:
            for p in _read(src, files, block_bytes, tz_offset_hours, True, stats):
                n = p.n
                keep = p.keep & keep_first[row0:row0 + n]
                row0 += n
                raw_dom = p.feature(domain_field)
                pos = np.minimum(np.searchsorted(dom_sorted, raw_dom.astype(dom_sorted.dtype)), len(domains) - 1)
                known_dom = (dom_sorted[pos] == raw_dom.astype(dom_sorted.dtype)) & (
                    np.char.str_len(raw_dom) <= dom_sorted.dtype.itemsize)
                keep &= known_dom
                domain = dom_order[pos]
                idx = np.flatnonzero(keep)
                if not len(idx):
                    continue
                cols = {}
                for f in features:
                    raw = p.feature(f)[idx]
                    cols[f] = np.where(_missing(raw, missing_as_oov and f != domain_field), 0, vocabs[f].encode(raw))
                for j, c in enumerate(dense_names):
                    v = p.dense[c][idx]
                    if dense == "minmax":  # real values scaled by their train range; missing stays -1
                        v = np.where(v == MISSING_DENSE, MISSING_DENSE,
                                     (v - dlo[j]) / (dhi[j] - dlo[j] if dhi[j] > dlo[j] else 1.0))
                    cols[c] = v.astype(np.float32)
                split = split_of_day[np.searchsorted(day_arr, p.day[idx])]
                writer.write(cols, domain[idx].astype(np.int64), split, {"is_trade": p.label[idx]})
                if row0 // 1_000_000 != (row0 - n) // 1_000_000:
                    log(f"[write] {row0:,}/{p1['rows']:,} rows")
        except BaseException:
            writer.abort()
            raise
        counts = writer.close()
        os.makedirs(os.path.join(work.out, "vocab"), exist_ok=True)
        for f in features:
            write_vocab_file(os.path.join(work.out, "vocab", f"{f}.txt"), vocabs[f].values)
        feats = [FeatureDef(f, "categorical", vocab_size=len(vocabs[f]),
                            group="domain" if f == domain_field else _group(f), is_id=f in ("user_id", "item_id"))
                 for f in features]
        feats += [FeatureDef(c, "dense", group="item") for c in dense_names]
        metadata = {
            "source": os.path.abspath(raw_path), "source_files": identities, "options": options,
            "task": "cvr", "task_text": "every impression (ad click in sponsored search); label is_trade",
            "domain_field": domain_field, "days": days,
            "day_splits": {str(d): SPLITS[s] for d, s in zip(days, p1["day_split"])},
            "normalizers": ({c: {"minmax": [p1["dmin"][j], p1["dmax"][j]]} for j, c in enumerate(DENSE)}
                            if dense == "minmax" else {}),
            "rows_read": p1["rows"], "duplicate_instance_rows": p1["duplicates"],
            "rows_outside_domains": p1["rows_outside_domains"], "skipped_bad_rows": p1["bad_rows"],
            "vocab_from": "train days", "min_freq": min_freq,
            "prepare_seconds_last_run": round(time.time() - t0, 1),
        }
        return finish_streamed_dataset(work, dataset="ijcai18", features=feats,
                                       domain_names=[f"{domain_field}={d}" for d in domains],
                                       label_keys=["is_trade"], counts=counts, num_shards=num_shards, fp=fp,
                                       metadata=metadata, keep_work=keep_work)
    finally:
        work.release()


def _missing(raw: np.ndarray, minus_one: bool) -> np.ndarray:
    """Absent list items (empty) and, with ``minus_one``, the raw missing marker -1."""
    m = raw == b""
    return m | (raw == b"-1") if minus_one else m


def _pass1(work: WorkDir, src: StreamSource, files, features, domain_field, block_bytes, tz, skip_bad, valid_days,
           test_days, top_k, min_freq, missing_as_oov, dedup) -> dict:
    """Days, per-day value frequencies, per-day domain frequencies, dense ranges, duplicates."""
    log(f"[pass 1] reading {', '.join(src.where(n) for n in files)} ...")
    stats: dict[str, Any] = {}
    per_day: dict[int, dict[str, ValueCounts]] = {}
    dom_counts: dict[int, ValueCounts] = {}
    dmin: dict[int, np.ndarray] = {}
    dmax: dict[int, np.ndarray] = {}
    ids, good = [], []
    t0 = time.time()
    for p in _read(src, files, block_bytes, tz, skip_bad, stats):
        ids.append(p.raw("instance_id"))
        good.append(p.keep.copy())
        k = p.keep
        dom = p.feature(domain_field)
        raw = {f: p.feature(f) for f in features}
        dv = np.stack([p.dense[c] for c in DENSE], axis=1)
        for d in np.unique(p.day[k]):
            sel = k & (p.day == d)
            dc = per_day.setdefault(int(d), {f: ValueCounts() for f in features})
            for f in features:
                v = raw[f][sel]
                dc[f].add(v[v != b""])
            dv_ = dom[sel]
            dom_counts.setdefault(int(d), ValueCounts()).add(dv_[dv_ != b""])
            real = dv[sel] != MISSING_DENSE  # -1 = missing: not part of the range
            lo = np.where(real, dv[sel], np.inf).min(axis=0)
            hi = np.where(real, dv[sel], -np.inf).max(axis=0)
            dmin[int(d)] = np.minimum(dmin.get(int(d), lo), lo)
            dmax[int(d)] = np.maximum(dmax.get(int(d), hi), hi)
        if stats.get("lines", 0) and stats["lines"] % 1_000_000 < p.n:
            log(f"[pass 1] {stats['lines']:,} lines ({stats['lines'] / (time.time() - t0):,.0f} lines/s)")
    if not per_day:
        raise DataError(f"{src.path}: no usable rows in {list(files)}")
    days = sorted(per_day)
    if len(days) < valid_days + test_days + 1:
        raise DataError(f"the data spans {len(days)} day(s) {days}; need more than valid_days + test_days = "
                        f"{valid_days + test_days}")
    split = [0] * (len(days) - valid_days - test_days) + [1] * valid_days + [2] * test_days
    train_days = [d for d, s in zip(days, split) if s == 0]
    # Scenario values: all (sorted) or the top-k by train frequency (then sorted).
    dc = ValueCounts()
    for d in days:
        dc.add(*dom_counts[d].result())
    dvals, dcnt = dc.result()
    tc = ValueCounts()
    for d in train_days:
        tc.add(*dom_counts[d].result())
    tv, tcnt = tc.result()
    if top_k:
        chosen = set(tv[np.argsort(-tcnt, kind="stable")[:top_k]].tolist())
        dvals = np.array([v for v in dvals if v in chosen], dtype=dvals.dtype)
    domains = sorted((v.decode() for v in dvals),
                     key=lambda s: (0, int(s), s) if s.lstrip("-").isdigit() else (1, 0, s))
    rows_outside = int(dcnt.sum() - sum(int(c) for v, c in zip(*dc.result()) if v.decode() in domains))
    arrays = {}
    for f in features:
        c = ValueCounts()
        for d in train_days:
            c.add(*per_day[d][f].result())
        v, n = c.result()
        keep = ~_missing(v, missing_as_oov and f != domain_field)
        v, n = v[keep], n[keep]
        voc = Vocab(v, n, min_freq)
        arrays[f"v_{f}"], arrays[f"c_{f}"] = voc.values, voc.counts
    all_ids = np.concatenate(ids) if ids else np.zeros(0, "S1")
    ok = np.concatenate(good) if good else np.zeros(0, bool)
    keep_first = ok.copy()
    duplicates = 0
    if dedup and ok.any():
        good_rows = np.flatnonzero(ok)
        _, first = np.unique(all_ids[good_rows], return_index=True)
        keep_first[:] = False
        keep_first[good_rows[first]] = True
        duplicates = int(len(good_rows) - len(first))
    savez_atomic(work.file("pass1.npz"), keep_first=np.packbits(keep_first), n_rows=len(all_ids), **arrays)
    lo = np.min([dmin[d] for d in train_days], axis=0)
    hi = np.max([dmax[d] for d in train_days], axis=0)
    none = ~np.isfinite(lo)  # a column missing on every train row: identity scaling
    lo, hi = np.where(none, 0.0, lo), np.where(none, 1.0, hi)
    info = {"days": days, "day_split": split, "domains": domains, "rows": int(len(all_ids)),
            "duplicates": duplicates, "rows_outside_domains": rows_outside, "bad_rows": int(stats.get("bad_rows", 0)),
            "dmin": lo.tolist(), "dmax": hi.tolist()}
    work.mark("pass1", info)
    log(f"[pass 1] {len(all_ids):,} rows in {time.time() - t0:.1f}s; days {days} -> "
        f"{[SPLITS[s] for s in split]}; scenarios {domain_field} = {domains}; {duplicates} duplicate instance ids")
    return info


FLAGS = flags.FLAGS


def define_flags() -> None:
    define_streaming_flags(raw_path_help="File, folder or archive with the IJCAI-18 training file(s).", num_shards=4,
                           block_mb=16.0)
    flags.DEFINE_enum("round", "1", ["1", "2"], "Competition round whose training file is read.")
    flags.DEFINE_list("train_files", None, "Explicit training file names (instead of --round).")
    flags.DEFINE_string("domain_field", "user_gender_id", "Column whose values are the scenarios (MMLRec: gender).")
    flags.DEFINE_integer("top_k_domains", 0, "Keep the k most frequent scenario values (0 = all).")
    flags.DEFINE_enum("list_mode", "whole", list(LIST_MODES), "Nested list fields: whole strings or split items.")
    flags.DEFINE_integer("max_list_items", 3, "Items kept per nested list (split mode).")
    flags.DEFINE_list("features", None, "Sparse features (default: MMLRec's, context_hour for the timestamp).")
    flags.DEFINE_enum("dense", "minmax", ["minmax", "raw", "none"], "The 4 shop score columns.")
    flags.DEFINE_boolean("missing_as_oov", True, "-1 in a categorical feature -> id 0.")
    flags.DEFINE_boolean("domain_as_feature", True, "Also feed the scenario column as a feature (MMLRec).")
    flags.DEFINE_integer("valid_days", 1, "Trailing days (before the test days) used as valid.")
    flags.DEFINE_integer("test_days", 1, "Trailing days used as test.")
    flags.DEFINE_integer("tz_offset_hours", 8, "Hours added to timestamps before taking days (Beijing: 8).")
    flags.DEFINE_integer("min_freq", 1, "Values seen fewer times on train days map to 0.")
    flags.DEFINE_boolean("dedup", True, "Keep only the first row of a repeated instance_id.")


def _prepare_from_flags(f: flags.FlagValues) -> None:
    prepare(f.output_dir, raw_path=f.raw_path, round_id=f.round, train_files=f.train_files,
            domain_field=f.domain_field, top_k_domains=f.top_k_domains, list_mode=f.list_mode,
            max_list_items=f.max_list_items, features=f.features, dense=f.dense,
            missing_as_oov=f.missing_as_oov, domain_as_feature=f.domain_as_feature,
            valid_days=f.valid_days, test_days=f.test_days, tz_offset_hours=f.tz_offset_hours,
            min_freq=f.min_freq, dedup=f.dedup, num_shards=f.num_shards, block_mb=f.block_mb,
            skip_bad_rows=f.skip_bad_rows, keep_work=f.keep_work)


def cli() -> None:
    run_cli(define_flags, _prepare_from_flags, required=("raw_path", "output_dir"))


if __name__ == "__main__":
    cli()
