"""KuaiRand-1K (Kuaishou, CC BY-SA 4.0 per its repository) -> TFRecords by scenario (``tab``).

Inputs, as downloaded (``KuaiRand-1K.tar.gz`` or its extracted ``data/`` folder; a zip or
single .gz files work too): the log file(s) ``log_standard_4_22_to_5_08_1k.csv`` (default;
``--log_files`` adds ``log_standard_4_08_to_4_21_1k.csv`` / ``log_random_4_22_to_5_08_1k.csv``),
``user_features_1k.csv`` and ``video_features_basic_1k.csv`` (``--variant=pure`` reads
the ``_pure`` files). ``video_features_statistic_*`` is not needed.

Raw format (datasets.md §8): comma-separated with a header. Logs: ``user_id, video_id,
date, hourmin, time_ms, is_click, ..., is_rand, tab``. User features: ids, string
degrees and ``*_range`` buckets (quoted when they hold commas), counts, and
``onehot_feat0..17`` (empty = NaN). Video features: ``video_id, author_id, video_type,
upload_dt, upload_type, visible_status, video_duration, server_width, server_height,
music_id, music_type, tag``.

Recipe (Scenario-Wise-Rec ``load_data_1k.py`` / HierRec ``data_process.py``):
  * log rows inner-joined with the user and the video table (rows whose user or video
    is missing are dropped and counted);
  * scenario = ``tab``. ``--tabs`` selects scenarios, ``--tab_ids`` says in which id
    space: ``raw`` (HierRec: raw tabs 0,1,2,3,6, default) or ``first_appearance`` (SWR
    re-indexes tab by first appearance in the joined log and keeps 1,0,4,2,6). Domain
    ids 0..K-1 follow the sorted selected values (HierRec's order; SWR's LabelEncoder);
  * 37 fields: user_id, video_id, tab, 12 user fields, onehot_feat0..17 and 4 video
    fields (video_type, visible_status, server_width, server_height); SWR's 4 dense
    columns follow_user_num, fans_user_num, friend_user_num, register_days are min-max
    scaled (``--dense=none``: categorical, as HierRec treats every column);
  * label ``is_click``; random 80/10/10 split (seeded hash of the row position; SWR:
    unseeded shuffle + random_split) or ``--split_mode=contiguous`` (HierRec);
  * vocabularies over all selected rows (both papers encode on all data;
    ``--fit_on=train`` for train-only), ids by frequency; empty values (NaN) -> id 0
    (SWR fills ``onehot_feat*`` NaNs with fixed values instead).

Pass 1 streams the logs once into compact per-row arrays in the work directory (user
and video row index, tab, label: 11 bytes per row); vocabularies come from
per-user/per-video row counts; pass 2 streams those arrays and writes the shards. The
memory is bounded by the tables (about 40 bytes per video) and the block size.

Example:
  python -m data_prep.kuairand --raw_path=/data/KuaiRand-1K --output_dir=data/kuairand_hierrec
  python -m data_prep.kuairand --raw_path=... --tabs=1,0,4,2,6 --tab_ids=first_appearance  # SWR
"""

from __future__ import annotations

import csv
import io
import os
import time
from typing import Any, Sequence

import numpy as np
from absl import flags

from data_prep.common import (check_split_ratios, DataError, FeatureDef, StreamingWriter, StreamSource, ValueCounts,
                              Vocab, WorkDir, existing_output, finish_streamed_dataset, fingerprint, iter_line_blocks,
                              log, parse_int_spans, split_delimited, split_uniform, write_vocab_file, run_cli)
from data_prep.common import define_streaming_flags

FORMAT_VERSION = 1
VARIANTS = {"1k": "1k", "pure": "pure"}
LOG_COLUMNS = ("user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
               "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
               "comment_stay_time", "is_profile_enter", "is_rand", "tab")
USER_CATEGORICAL = ("user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range"
                    ) + tuple(f"onehot_feat{i}" for i in range(18))
USER_COUNTS = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
VIDEO_COLUMNS = ("author_id", "video_type", "upload_dt", "upload_type", "visible_status", "video_duration",
                 "server_width", "server_height", "music_id", "music_type", "tag")
SWR_VIDEO_FEATURES = ("video_type", "visible_status", "server_width", "server_height")
HIERREC_TABS = (0, 1, 2, 3, 6)
# Compact per-row arrays written by pass 1 (user row, video row, tab, label): 11 bytes a row.
_DTYPES = {"uidx": np.int32, "vidx": np.int32, "tab": np.int16, "click": np.int8}


def default_log_files(variant: str) -> tuple[str, ...]:
    return (f"log_standard_4_22_to_5_08_{VARIANTS[variant]}.csv",)


class _Table:
    """A feature table keyed by an integer id: sorted keys and byte-string columns."""

    def __init__(self, keys: np.ndarray, columns: dict[str, np.ndarray], where: str):
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.columns = {k: v[order] for k, v in columns.items()}
        self.where = where
        dup = np.flatnonzero(self.keys[1:] == self.keys[:-1])
        if len(dup):
            raise DataError(f"{where}: id {self.keys[dup[0]]} appears more than once")

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Row index of each id, -1 when absent."""
        if len(self.keys) == 0:
            return np.full(len(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.keys, ids), len(self.keys) - 1)
        return np.where(self.keys[pos] == ids, pos, -1)


def read_table(src: StreamSource, name: str, key: str, columns: Sequence[str], skip_bad: bool,
               chunk: int = 500_000) -> tuple[_Table, int]:
    """Reads the ``key`` column (integers) and ``columns`` (as bytes; '' = missing) of a CSV file."""
    where = src.where(name)
    keys: list[np.ndarray] = []
    cols: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    bad = 0
    with src.open(name) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{where}: empty file") from None
        missing = [c for c in (key,) + tuple(columns) if c not in header]
        if missing:
            raise DataError(f"{where}:1: header lacks columns {missing}")
        ki = header.index(key)
        idx = [header.index(c) for c in columns]
        nf = len(header)
        buf_k: list[int] = []
        buf_c: list[list[str]] = [[] for _ in columns]
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            err = None
            if len(row) != nf:
                err = f"expected {nf} comma-separated fields (header), found {len(row)}"
            else:
                try:
                    k = int(row[ki])
                except ValueError:
                    err = f"{key} = {row[ki]!r} is not an integer"
            if err:
                if not skip_bad:
                    raise DataError(f"{where}:{reader.line_num}: {err}; line was {','.join(row)[:160]!r}")
                bad += 1
                continue
            buf_k.append(k)
            for j, i in enumerate(idx):
                buf_c[j].append(row[i].strip())
            if len(buf_k) >= chunk:
                keys.append(np.array(buf_k, np.int64))
                for c, b in zip(columns, buf_c):
                    cols[c].append(np.array([x.encode() for x in b], dtype="S"))
                buf_k, buf_c = [], [[] for _ in columns]
        keys.append(np.array(buf_k, np.int64))
        for c, b in zip(columns, buf_c):
            cols[c].append(np.array([x.encode() for x in b], dtype="S") if b else np.zeros(0, "S1"))
    table = _Table(np.concatenate(keys), {c: np.concatenate(v) for c, v in cols.items()}, where)
    return table, bad


def _nan(values: np.ndarray) -> np.ndarray:
    low = np.char.lower(values)
    return (values == b"") | (low == b"nan") | (low == b"null")


def prepare(
    output_dir: str,
    *,
    raw_path: str,
    variant: str = "1k",
    log_files: Sequence[str] | None = None,
    tabs: Sequence[int] = HIERREC_TABS,
    tab_ids: str = "raw",
    video_features: Sequence[str] = SWR_VIDEO_FEATURES,
    dense: str = "minmax",
    domain_as_feature: bool = True,
    split_mode: str = "random",
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 2022,
    fit_on: str = "all",
    min_freq: int = 1,
    num_shards: int = 4,
    block_mb: float = 16.0,
    skip_bad_rows: bool = False,
    keep_work: bool = False,
) -> dict:
    """Prepares KuaiRand TFRecords with ``tab`` as scenario; returns the schema.

    Args:
      output_dir: destination (appears only when complete).
      raw_path: folder or archive holding the KuaiRand files.
      variant: "1k" or "pure" (file-name suffix).
      log_files: log file names, read in order (default: the 4_22 to 5_08 standard log).
      tabs: scenario values to keep, in the id space of ``tab_ids``; domain ids follow
        their sorted order.
      tab_ids: "raw" (HierRec) or "first_appearance" (SWR: tab re-indexed 0.. by first
        appearance in the joined log).
      video_features: columns of the video table used as features.
      dense: "minmax" (SWR's 4 count columns scaled) or "none" (categorical, HierRec).
      domain_as_feature: also feed ``tab`` as a sparse feature (SWR and HierRec do).
      split_mode: "random" (seeded) or "contiguous" (file order, HierRec).
      split_ratios: train/valid/test fractions.
      seed: random split seed.
      fit_on: "all" (vocabularies and min/max over all selected rows, as both papers)
        or "train".
      min_freq: values seen fewer times map to 0.
      num_shards: shards per (domain, split).
      block_mb: MiB of log lines parsed per block.
      skip_bad_rows: skip and count malformed lines instead of failing.
      keep_work: keep the work directory after success.
    """
    if variant not in VARIANTS:
        raise DataError(f"--variant={variant!r}: expected one of {list(VARIANTS)} (27K: pass --log_files etc.)")
    if tab_ids not in ("raw", "first_appearance"):
        raise DataError(f"--tab_ids={tab_ids!r}: expected raw or first_appearance")
    if dense not in ("minmax", "none"):
        raise DataError(f"--dense={dense!r}: expected minmax or none")
    if split_mode not in ("random", "contiguous"):
        raise DataError(f"--split_mode={split_mode!r}: expected random or contiguous")
    if fit_on not in ("all", "train"):
        raise DataError(f"--fit_on={fit_on!r}: expected all or train")
    ratios = check_split_ratios(split_ratios)
    unknown = [v for v in video_features if v not in VIDEO_COLUMNS]
    if unknown:
        raise DataError(f"--video_features: unknown {unknown}; expected a subset of {list(VIDEO_COLUMNS)}")
    tabs = [int(t) for t in tabs]
    if not tabs or len(set(tabs)) != len(tabs):
        raise DataError(f"--tabs={tabs}: expected distinct scenario values")
    logs = tuple(log_files) if log_files else default_log_files(variant)
    suffix = VARIANTS[variant]
    user_file, video_file = f"user_features_{suffix}.csv", f"video_features_basic_{suffix}.csv"
    src = StreamSource(raw_path)
    identities = {n: src.identity(n) for n in logs + (user_file, video_file)}
    options = dict(logs=list(logs), user_file=user_file, video_file=video_file, tabs=tabs, tab_ids=tab_ids,
                   video_features=list(video_features), dense=dense, domain_as_feature=domain_as_feature,
                   split_mode=split_mode, split_ratios=ratios, seed=seed, fit_on=fit_on, min_freq=min_freq,
                   num_shards=num_shards, skip_bad_rows=skip_bad_rows)
    fp = fingerprint({"kuairand": FORMAT_VERSION, "options": options, "sources": identities})
    done = existing_output(output_dir, fp)
    if done is not None:
        log(f"reusing finished output in {output_dir} (same inputs and options)")
        return done
    t0 = time.time()
    user_cols = USER_CATEGORICAL + USER_COUNTS
    work = WorkDir(output_dir, fp)
    try:
        log(f"reading {src.where(user_file)} and {src.where(video_file)} ...")
        users, bad_u = read_table(src, user_file, "user_id", user_cols, skip_bad_rows)
        videos, bad_v = read_table(src, video_file, "video_id", tuple(video_features), skip_bad_rows)
        log(f"{len(users):,} users, {len(videos):,} videos")
        p1 = work.done("logs")
        if p1 is None:
            p1 = _read_logs(work, src, logs, users, videos, int(block_mb * (1 << 20)), skip_bad_rows)
        n = p1["rows"]
        if n == 0:
            raise DataError(f"no log row of {list(logs)} joins a user and a video")
        uidx, vidx, tab, click = (np.memmap(work.file(f"{k}.bin"), dtype=_DTYPES[k], mode="r", shape=(n,))
                                  for k in ("uidx", "vidx", "tab", "click"))
        # Scenario ids.
        raw_tabs = [int(t) for t in p1["tab_first_appearance"]]
        if tab_ids == "raw":
            selected_raw = [t for t in sorted(tabs)]
            remap = {t: i for i, t in enumerate(raw_tabs)}
        else:
            remap = {t: i for i, t in enumerate(raw_tabs)}
            back = {i: t for t, i in remap.items()}
            missing = [t for t in tabs if t not in back]
            if missing:
                raise DataError(f"--tabs {missing}: no such first-appearance id (the log has {len(raw_tabs)} tabs)")
            selected_raw = [back[t] for t in sorted(tabs)]
        absent = [t for t in selected_raw if t not in remap]
        if absent:
            raise DataError(f"--tabs: raw tab(s) {absent} never occur in the joined log (tabs: {sorted(raw_tabs)})")
        lut = np.full(max(raw_tabs + selected_raw) + 1, -1, np.int64)
        lut[selected_raw] = np.arange(len(selected_raw))
        chunk = 1 << 20
        # Split per row, then per-user / per-video row counts for the vocabularies.
        n_sel = 0
        for lo in range(0, n, chunk):
            n_sel += int((lut[np.asarray(tab[lo:lo + chunk])] >= 0).sum())
        bounds = np.round(np.cumsum(ratios)[:2] * n_sel).astype(np.int64)

        def rows(lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """(selected row positions, domain ids, split ids) of chunk [lo, lo + chunk)."""
            t = np.asarray(tab[lo:lo + chunk])
            dom = lut[t]
            sel = np.flatnonzero(dom >= 0)
            if split_mode == "random":
                u = split_uniform(lo + sel, seed)
                split = np.where(u < ratios[0], 0, np.where(u < ratios[0] + ratios[1], 1, 2)).astype(np.int8)
            else:
                rank = rows.seen + np.arange(len(sel))
                split = np.where(rank < bounds[0], 0, np.where(rank < bounds[1], 1, 2)).astype(np.int8)
            rows.seen += len(sel)
            return sel, dom[sel], split

        rows.seen = 0
        ucount = np.zeros(len(users), np.int64)
        vcount = np.zeros(len(videos), np.int64)
        tcount = np.zeros(len(selected_raw), np.int64)
        for lo in range(0, n, chunk):
            sel, dom, split = rows(lo)
            fit = split == 0 if fit_on == "train" else np.ones(len(sel), bool)
            ucount += np.bincount(np.asarray(uidx[lo:lo + chunk])[sel[fit]], minlength=len(users))
            vcount += np.bincount(np.asarray(vidx[lo:lo + chunk])[sel[fit]], minlength=len(videos))
            tcount += np.bincount(dom[fit], minlength=len(selected_raw))
        # Vocabularies from row counts; tables pre-encoded to ids.
        vocabs: dict[str, Vocab] = {}
        ucodes: dict[str, np.ndarray] = {}
        vcodes: dict[str, np.ndarray] = {}

        def table_vocab(name: str, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
            keep = (counts > 0) & ~_nan(values)
            vc = ValueCounts()
            u, inv = np.unique(values[keep], return_inverse=True)
            vc.add(u, np.bincount(inv.ravel(), weights=counts[keep], minlength=len(u)).astype(np.int64))
            vocabs[name] = Vocab(*vc.result(), min_freq)
            return np.where(_nan(values), 0, vocabs[name].encode(values))

        ucodes["user_id"] = table_vocab("user_id", users.keys.astype(str).astype("S"), ucount)
        vcodes["video_id"] = table_vocab("video_id", videos.keys.astype(str).astype("S"), vcount)
        user_cat = USER_CATEGORICAL + (USER_COUNTS if dense == "none" else ())
        for c in user_cat:
            ucodes[c] = table_vocab(c, users.columns[c], ucount)
        for c in video_features:
            vcodes[c] = table_vocab(c, videos.columns[c], vcount)
        dense_cols: dict[str, np.ndarray] = {}
        normalizers = {}
        if dense == "minmax":
            for c in USER_COUNTS:
                raw = users.columns[c]
                try:
                    v = np.where(_nan(raw), b"0", raw).astype(np.float64)
                except ValueError:
                    raise DataError(f"{users.where}: column {c} holds a non-numeric value; "
                                    "pass --dense=none to treat it as categorical") from None
                seen = v[ucount > 0]
                lo_, hi_ = (float(seen.min()), float(seen.max())) if len(seen) else (0.0, 0.0)
                dense_cols[c] = ((v - lo_) / (hi_ - lo_ if hi_ > lo_ else 1.0)).astype(np.float32)
                normalizers[c] = {"minmax": [lo_, hi_]}
        tab_values = np.array([str(t).encode() for t in selected_raw])
        vocabs["tab"] = Vocab(tab_values, np.maximum(tcount, 1), 1)
        tab_codes = vocabs["tab"].encode(tab_values)
        # Pass 2: shards.
        features = ["user_id", "video_id"] + (["tab"] if domain_as_feature else []) + list(user_cat) + list(
            video_features)
        dense_names = list(dense_cols)
        writer = StreamingWriter(work.out, num_shards, len(selected_raw), features, dense_names, ["is_click"])
        log(f"[write] {n_sel:,} rows in tabs {selected_raw} ...")
        rows.seen = 0
        try:
            for lo in range(0, n, chunk):
                sel, dom, split = rows(lo)
                if not len(sel):
                    continue
                u = np.asarray(uidx[lo:lo + chunk])[sel]
                v = np.asarray(vidx[lo:lo + chunk])[sel]
                cols = {f: ucodes[f][u] for f in ucodes}
                cols.update({f: vcodes[f][v] for f in vcodes})
                cols["tab"] = tab_codes[dom]
                cols.update({c: dense_cols[c][u] for c in dense_names})
                writer.write(cols, dom, split, {"is_click": np.asarray(click[lo:lo + chunk])[sel].astype(np.float32)})
                if lo and lo % (8 * chunk) == 0:
                    log(f"[write] {lo:,}/{n:,} joined rows")
        except BaseException:
            writer.abort()
            raise
        counts = writer.close()
        os.makedirs(os.path.join(work.out, "vocab"), exist_ok=True)
        for f in features:
            write_vocab_file(os.path.join(work.out, "vocab", f"{f}.txt"), vocabs[f].values)
        group = {f: "user" for f in ("user_id",) + USER_CATEGORICAL + USER_COUNTS}
        group.update({f: "item" for f in ("video_id",) + VIDEO_COLUMNS})
        group["tab"] = "domain"
        feats = [FeatureDef(f, "categorical", vocab_size=len(vocabs[f]), group=group[f],
                            is_id=f in ("user_id", "video_id")) for f in features]
        feats += [FeatureDef(c, "dense", group="user") for c in dense_names]
        metadata = {
            "source": os.path.abspath(raw_path), "source_files": identities, "options": options,
            "task": "ctr", "task_text": "every logged impression; label is_click",
            "domain_field": "tab", "domain_raw_tabs": selected_raw,
            "domain_first_appearance_ids": [remap[t] for t in selected_raw],
            "tab_first_appearance_order": raw_tabs,
            "normalizers": normalizers, "vocab_from": fit_on, "min_freq": min_freq,
            "log_lines": p1["lines"], "rows_joined": n, "rows_selected": n_sel,
            "dropped_no_user": p1["no_user"], "dropped_no_video": p1["no_video"],
            "skipped_bad_rows": p1["bad_rows"] + bad_u + bad_v,
            "prepare_seconds_last_run": round(time.time() - t0, 1),
        }
        return finish_streamed_dataset(
            work, dataset=f"kuairand-{variant}", features=feats, domain_names=[f"tab={t}" for t in selected_raw],
            label_keys=["is_click"], counts=counts, num_shards=num_shards, fp=fp, metadata=metadata,
            keep_work=keep_work)
    finally:
        work.release()


def _read_logs(work: WorkDir, src: StreamSource, logs: Sequence[str], users: _Table, videos: _Table,
               block_bytes: int, skip_bad: bool) -> dict:
    """Pass 1: joined log rows -> compact arrays (user row, video row, tab, is_click) in the work dir."""
    outs = {k: open(work.file(f"{k}.bin"), "wb") for k in _DTYPES}
    dtypes = _DTYPES
    info: dict[str, Any] = {"rows": 0, "lines": 0, "no_user": 0, "no_video": 0, "bad_rows": 0}
    first: dict[int, int] = {}
    t0 = time.time()
    for name in logs:
        where = src.where(name)
        log(f"[pass 1] reading {where} ...")
        header = None
        line0 = 0
        with src.open(name) as f:
            for block in iter_line_blocks(f, block_bytes=block_bytes):
                if header is None:
                    cut = block.index(b"\n") + 1
                    header = block[:cut].decode("utf-8").strip().split(",")
                    missing = [c for c in ("user_id", "video_id", "is_click", "tab") if c not in header]
                    if missing:
                        raise DataError(f"{where}:1: header lacks columns {missing}; expected the KuaiRand log "
                                        f"columns {list(LOG_COLUMNS)}")
                    block = block[cut:]
                    line0 = 1
                buf = np.frombuffer(block, np.uint8)
                lines, cols, bad = split_delimited(buf, 44, len(header))
                span = dict(zip(header, cols))
                keep = np.ones(len(lines), bool)
                vals = {}
                for c in ("user_id", "video_id", "is_click", "tab"):
                    v, ok = parse_int_spans(buf, *span[c])
                    for i in np.flatnonzero(~ok & keep)[:1000]:
                        bad.setdefault(int(lines[i]), f"{c} is not a non-negative integer")
                    keep &= ok
                    vals[c] = v
                badc = (vals["is_click"] > 1) & keep
                for i in np.flatnonzero(badc)[:1000]:
                    bad.setdefault(int(lines[i]), "is_click must be 0 or 1")
                keep &= ~badc
                if bad:
                    j = min(bad)
                    if not skip_bad:
                        text = block.split(b"\n")[j][:160].decode("utf-8", "replace")
                        raise DataError(f"{where}:{line0 + j + 1}: {bad[j]}; line was {text!r}")
                    info["bad_rows"] += len(bad)
                u = users.lookup(vals["user_id"])
                v = videos.lookup(vals["video_id"])
                info["no_user"] += int((keep & (u < 0)).sum())
                info["no_video"] += int((keep & (u >= 0) & (v < 0)).sum())
                keep &= (u >= 0) & (v >= 0)
                idx = np.flatnonzero(keep)
                t = vals["tab"][idx]
                for tv in np.unique(t):
                    first.setdefault(int(tv), info["rows"] + int(np.argmax(t == tv)))
                for k, arr in (("uidx", u[idx]), ("vidx", v[idx]), ("tab", t), ("click", vals["is_click"][idx])):
                    arr.astype(dtypes[k]).tofile(outs[k])
                info["rows"] += len(idx)
                n_lines = block.count(b"\n")
                line0 += n_lines
                info["lines"] += n_lines
                if info["lines"] // 2_000_000 != (info["lines"] - n_lines) // 2_000_000:
                    log(f"[pass 1] {info['lines']:,} lines ({info['lines'] / (time.time() - t0):,.0f} lines/s)")
        if header is None:
            raise DataError(f"{where}: empty file; expected a header line with the KuaiRand log columns "
                            f"{list(LOG_COLUMNS)} and log rows")
    for f in outs.values():
        f.close()
    info["tab_first_appearance"] = [t for t, _ in sorted(first.items(), key=lambda kv: kv[1])]
    work.mark("logs", info)
    log(f"[pass 1] {info['lines']:,} log lines -> {info['rows']:,} joined rows in {time.time() - t0:.1f}s "
        f"({info['no_user']} without user, {info['no_video']} without video); tabs by first appearance "
        f"{info['tab_first_appearance']}")
    return info


FLAGS = flags.FLAGS


def define_flags() -> None:
    define_streaming_flags(raw_path_help="Folder or archive with the KuaiRand files.", num_shards=4, block_mb=16.0,
                           block_mb_help="MiB of log lines parsed per block.")
    flags.DEFINE_enum("variant", "1k", list(VARIANTS), "KuaiRand variant (file-name suffix).")
    flags.DEFINE_list("log_files", None, "Log files, in order (default: log_standard_4_22_to_5_08_<variant>.csv).")
    flags.DEFINE_list("tabs", [str(t) for t in HIERREC_TABS], "Scenario tabs to keep (HierRec: 0,1,2,3,6 raw; "
                      "SWR: 1,0,4,2,6 first_appearance).")
    flags.DEFINE_enum("tab_ids", "raw", ["raw", "first_appearance"], "Id space of --tabs.")
    flags.DEFINE_list("video_features", list(SWR_VIDEO_FEATURES), "Video table columns used as features.")
    flags.DEFINE_enum("dense", "minmax", ["minmax", "none"], "SWR's 4 user count columns: scaled or categorical.")
    flags.DEFINE_boolean("domain_as_feature", True, "Also feed tab as a sparse feature.")
    flags.DEFINE_enum("split_mode", "random", ["random", "contiguous"], "Random (seeded) or file-order split.")
    flags.DEFINE_list("split_ratios", ["0.8", "0.1", "0.1"], "train,valid,test fractions.")
    flags.DEFINE_integer("seed", 2022, "Random split seed.")
    flags.DEFINE_enum("fit_on", "all", ["all", "train"], "Rows defining vocabularies and min/max.")
    flags.DEFINE_integer("min_freq", 1, "Values seen fewer times map to 0.")


def _prepare_from_flags(f: flags.FlagValues) -> None:
    prepare(f.output_dir, raw_path=f.raw_path, variant=f.variant, log_files=f.log_files,
            tabs=[int(t) for t in f.tabs], tab_ids=f.tab_ids, video_features=f.video_features,
            dense=f.dense, domain_as_feature=f.domain_as_feature, split_mode=f.split_mode,
            split_ratios=[float(x) for x in f.split_ratios], seed=f.seed, fit_on=f.fit_on,
            min_freq=f.min_freq, num_shards=f.num_shards, block_mb=f.block_mb,
            skip_bad_rows=f.skip_bad_rows, keep_work=f.keep_work)


def cli() -> None:
    run_cli(define_flags, _prepare_from_flags, required=("raw_path", "output_dir"))


if __name__ == "__main__":
    cli()
