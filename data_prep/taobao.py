"""Taobao theme clicks (Tianchi dataset 9716, "CloudTheme") -> MLoRA's Taobao_10.

Raw files (one folder): ``theme_click_log.csv`` (``user_id, theme_id, item_id,
leaf_cate_id, cate_level1_id, reach_time``; a header row is detected, else this column
order is assumed), ``user_embedding.csv`` and ``item_embedding.csv`` (``id, "v1 v2 ... v128"``:
the id and a space-separated float string; optional header).

Recipe (MLoRA ``config_10``, datasets.md §7):
  1. themes are ordered by first appearance in the whole click log;
  2. clicks whose user or item has no pretrained embedding are dropped
     (``--require_embeddings``, default true);
  3. the first ``--theme_num`` (10) themes in that order that still have clicks are the
     domains 0..K-1;
  4. per theme: duplicate (user, item) clicks dropped, every click a positive, and per
     user ``int(n / r_k)`` negatives from the theme's items the user did not click, with
     r_k the k-th draw of ``random.Random(123).uniform(0.2, 0.5)`` rounded to 2 decimals
     (same sampler as ``data_prep.amazon``; seeded numpy generator, reproducible);
  5. split stratified per (theme, label) 60/20/20 with seed 123, or ``--split_mode=time``
     (MLoRA ``config_10_time``: positives by ``reach_time``, the first 60% train, the rest
     split randomly 50/50 into valid/test; negatives split randomly 60/20/20).

Pretrained embeddings are written as ``pretrained/user_emb.npy`` and
``pretrained/item_emb.npy`` (float32 ``[vocab_size, dim]``, row i = vector of vocabulary
entry i, row 0 = zeros = OOV) next to ``schema.json``, whose ``pretrained_embeddings``
records their paths, shapes and sha256. MLoRA loads them frozen (``emb_trainable=false``).

Example:
  python -m data_prep.taobao --raw_path=raw/taobao_theme --output_dir=data/taobao10
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from typing import Any, Sequence

import numpy as np
import pandas as pd
from absl import flags

from data_prep.amazon import add_negatives, draw_ratios
from data_prep.common import (check_split_ratios, AtomicDir, DataError, FeatureDef, encode_categorical, existing_output,
                              fingerprint, log, random_split, sha256_of_file, stratified_split, write_dataset, run_cli)

CLICK_FILE = "theme_click_log.csv"
USER_EMB_FILE = "user_embedding.csv"
ITEM_EMB_FILE = "item_embedding.csv"
CLICK_COLUMNS = ("user_id", "theme_id", "item_id", "leaf_cate_id", "cate_level1_id", "reach_time")
SPLIT_MODES = ("stratified", "time")


def _path(raw_path: str, name: str) -> str:
    if not os.path.isdir(raw_path):
        raise DataError(f"{raw_path}: no such directory (expected the folder holding {CLICK_FILE})")
    below = [os.path.join(raw_path, d, name) for d in sorted(os.listdir(raw_path))]
    for cand in [os.path.join(raw_path, name)] + below:
        if os.path.isfile(cand):
            return cand
    raise DataError(f"{raw_path}: no file {name!r} (in this folder or one level below)")


def _lines(path: str) -> list[str]:
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: byte offset {e.start} is not valid UTF-8") from None
    return text.lstrip("\ufeff").replace("\r\n", "\n").split("\n")


def read_clicks(path: str, skip_bad: bool = False) -> tuple[pd.DataFrame, int]:
    """Reads user_id, theme_id, item_id, reach_time (strings) of the click log."""
    lines = _lines(path)
    rows = csv.reader(lines)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: empty file")
    header = [c.strip() for c in first]
    if "user_id" in header:
        missing = [c for c in ("user_id", "theme_id", "item_id") if c not in header]
        if missing:
            raise DataError(f"{path}:1: header {header} lacks column(s) {missing}")
        idx = {c: header.index(c) for c in CLICK_COLUMNS if c in header}
        start = 1
    else:
        idx = {c: i for i, c in enumerate(CLICK_COLUMNS)}
        start = 0
    need = max(idx[c] for c in ("user_id", "theme_id", "item_id")) + 1
    cols: dict[str, list[str]] = {"user": [], "theme": [], "item": [], "time": []}
    t = idx.get("reach_time")
    bad = 0
    for lineno, row in enumerate(csv.reader(lines[start:]), start + 1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        vals = [row[idx[c]].strip() if idx[c] < len(row) else "" for c in ("user_id", "theme_id", "item_id")]
        if len(row) < need or not all(vals):
            if skip_bad:
                bad += 1
                continue
            raise DataError(f"{path}:{lineno}: expected non-empty user_id, theme_id, item_id "
                            f"(columns {[idx[c] for c in ('user_id', 'theme_id', 'item_id')]}); row was {row[:8]}")
        cols["user"].append(vals[0])
        cols["theme"].append(vals[1])
        cols["item"].append(vals[2])
        cols["time"].append(row[t].strip() if t is not None and t < len(row) else "")
    if not cols["user"] and not bad:
        raise DataError(f"{path}: no click rows (empty file?); expected user_id,theme_id,item_id,... lines")
    return pd.DataFrame(cols), bad


def _split_emb_line(line: str) -> tuple[str, str]:
    key, sep, vec = line.partition(",")
    if not sep:
        raise ValueError("expected 'id,<space-separated floats>'")
    return key.strip().strip('"'), vec.strip().strip('"')


def embedding_ids(path: str, strict: bool = False, rejected: set[str] | None = None) -> tuple[set[str], bool]:
    """Ids present in an embedding file (first pass, cheap); and whether line 1 is a header.

    With ``strict`` (``--skip_bad_rows``), only ids whose vector line is valid count; the
    ids of malformed lines go into ``rejected``.
    """
    lines = _lines(path)
    ids: set[str] = set()
    header = False
    dim = None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            key, vec = _split_emb_line(line)
            if lineno == 1:
                try:
                    float(vec.split()[0])
                except (ValueError, IndexError):
                    header = True
                    continue
            # Only ids whose line read_embeddings accepts count as having an embedding (a line
            # skipped under --skip_bad_rows must not keep its clicks with a zero vector).
            if strict:
                try:
                    v = np.array(vec.split(), dtype=np.float32)
                except ValueError:
                    v = np.zeros(0, np.float32)
                if v.size == 0 or not np.isfinite(v).all() or v.size != (dim or v.size):
                    if rejected is not None:
                        rejected.add(key)
                    continue
                dim = v.size
        except ValueError:
            continue  # reported by read_embeddings
        ids.add(key)
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: empty file; expected 'id,<space-separated floats>' lines")
    return ids, header


def read_embeddings(path: str, wanted: dict[str, int], header: bool, skip_bad: bool = False
                    ) -> tuple[np.ndarray, int, int]:
    """Matrix [len(wanted)+1, dim] with row wanted[id] = vector; row 0 and missing ids = zeros.

    Returns (matrix, dim, skipped lines). Every parsed line must have the same dimension.
    """
    lines = _lines(path)
    vecs: dict[int, np.ndarray] = {}
    dim = None
    bad = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or (header and lineno == 1):
            continue
        try:
            key, vec = _split_emb_line(line)
            if key not in wanted:
                continue
            v = np.array(vec.split(), dtype=np.float32)
            if v.size == 0:
                raise ValueError("empty vector")
            if not np.isfinite(v).all():
                raise ValueError("non-finite value")
            if dim is None:
                dim = v.size
            elif v.size != dim:
                raise ValueError(f"{v.size} values, expected {dim} like the lines before")
        except ValueError as e:
            if skip_bad:
                bad += 1
                continue
            raise DataError(f"{path}:{lineno}: {e}; line was {line[:100]!r}") from None
        if wanted[key] in vecs:
            raise DataError(f"{path}:{lineno}: duplicate id {key!r}")
        vecs[wanted[key]] = v
    if dim is None:
        raise DataError(f"{path}: no embedding for any of the {len(wanted)} ids needed")
    mat = np.zeros((len(wanted) + 1, dim), np.float32)
    for row, v in vecs.items():
        mat[row] = v
    return mat, dim, bad


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def time_split(label: np.ndarray, domain: np.ndarray, time: np.ndarray, ratios: Sequence[float], seed: int
               ) -> np.ndarray:
    """MLoRA time variant: per domain, positives by time (first ratios[0] train, rest random
    valid/test in proportion), negatives split randomly."""
    split = np.empty(len(label), np.int8)
    rng = np.random.default_rng(seed)
    rest = ratios[1] / max(ratios[1] + ratios[2], 1e-12)
    for d in np.unique(domain):
        pos = np.flatnonzero((domain == d) & (label > 0.5))
        pos = pos[np.argsort(time[pos], kind="stable")]
        n_train = int(round(ratios[0] * len(pos)))
        split[pos[:n_train]] = 0
        tail = pos[n_train:][rng.permutation(len(pos) - n_train)]
        n_valid = int(round(rest * len(tail)))
        split[tail[:n_valid]] = 1
        split[tail[n_valid:]] = 2
        neg = np.flatnonzero((domain == d) & (label <= 0.5))
        split[neg] = random_split(len(neg), ratios, int(rng.integers(2**31)))
    return split


def _time_key(values: pd.Series, where: str) -> np.ndarray:
    num = pd.to_numeric(values, errors="coerce")
    if num.notna().all():
        return num.to_numpy(np.float64)
    dt = pd.to_datetime(values, errors="coerce")
    if dt.isna().any():
        bad = values[dt.isna() & num.isna()]
        raise DataError(f"{where}: reach_time {bad.iloc[0]!r} is neither a number nor a date (needed for "
                        "--split_mode=time)")
    return dt.astype("int64").to_numpy(np.float64)


def prepare(
    output_dir: str,
    *,
    raw_path: str,
    theme_num: int = 10,
    require_embeddings: bool = True,
    neg_ratio_range: Sequence[float] = (0.2, 0.5),
    neg_ratio_seed: int = 123,
    neg_ratios: Sequence[float] | None = None,
    split_mode: str = "stratified",
    split_ratios: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 123,
    num_shards: int = 1,
    skip_bad_rows: bool = False,
) -> dict:
    """Prepares Taobao_10 (MLoRA); returns the schema (reusing a finished identical output).

    Args:
      output_dir: destination (schema.json, vocab/, pretrained/, domain_<k>/).
      raw_path: folder with theme_click_log.csv, user_embedding.csv, item_embedding.csv.
      theme_num: number of themes (domains), first by appearance in the click log.
      require_embeddings: drop clicks whose user or item has no pretrained embedding
        (MLoRA); when False they are kept with a zero embedding row.
      neg_ratio_range, neg_ratio_seed, neg_ratios: per-theme negative ratios (see amazon).
      split_mode: "stratified" (per theme and label) or "time" (MLoRA config_10_time).
      split_ratios: train/valid/test fractions.
      seed: split and negative-sampling seed.
      num_shards: TFRecord shards per (domain, split).
      skip_bad_rows: skip and count malformed lines instead of failing.
    """
    if split_mode not in SPLIT_MODES:
        raise DataError(f"--split_mode={split_mode!r}: expected one of {list(SPLIT_MODES)}")
    split_ratios = check_split_ratios(split_ratios)
    if theme_num < 1:
        raise DataError(f"--theme_num={theme_num}: expected >= 1")
    files = {n: _path(raw_path, n) for n in (CLICK_FILE, USER_EMB_FILE, ITEM_EMB_FILE)}
    checksums = {n: sha256_of_file(p) for n, p in files.items()}
    options = dict(theme_num=theme_num, require_embeddings=require_embeddings,
                   neg_ratio_range=[float(x) for x in neg_ratio_range], neg_ratio_seed=neg_ratio_seed,
                   neg_ratios=None if neg_ratios is None else [float(x) for x in neg_ratios], split_mode=split_mode,
                   split_ratios=split_ratios, seed=seed, num_shards=num_shards, skip_bad_rows=skip_bad_rows)
    fp = fingerprint({"dataset": "taobao", "options": options, "checksums": checksums})
    done = existing_output(output_dir, fp)
    if done is not None and all(os.path.isfile(os.path.join(output_dir, e["path"]))
                                for e in done.get("pretrained_embeddings", {}).values()):
        log(f"reusing finished output in {output_dir} (same inputs and options)")
        return done

    log(f"reading {files[CLICK_FILE]}")
    clicks, bad = read_clicks(files[CLICK_FILE], skip_bad_rows)
    meta: dict[str, Any] = {"skipped_bad_rows": bad, "clicks_read": int(len(clicks))}
    theme_rank = {t: i for i, t in enumerate(pd.unique(clicks["theme"]))}  # first appearance, whole log
    rej_u: set[str] = set()
    rej_i: set[str] = set()
    user_ids, user_hdr = embedding_ids(files[USER_EMB_FILE], skip_bad_rows and require_embeddings, rej_u)
    item_ids, item_hdr = embedding_ids(files[ITEM_EMB_FILE], skip_bad_rows and require_embeddings, rej_i)
    # Malformed embedding lines of clicked ids, skipped here (their clicks go as "no embedding").
    meta["skipped_bad_rows"] += len(rej_u & set(clicks["user"])) + len(rej_i & set(clicks["item"]))
    has = clicks["user"].isin(user_ids) & clicks["item"].isin(item_ids)
    meta["clicks_without_embedding"] = int((~has).sum())
    if require_embeddings:
        clicks = clicks[has.to_numpy()].reset_index(drop=True)
    themes = sorted(clicks["theme"].unique().tolist(), key=theme_rank.__getitem__)[:theme_num]
    if not themes:
        raise DataError(f"{files[CLICK_FILE]}: no clicks left (users/items without embeddings are dropped)")
    if len(themes) < theme_num:
        log(f"warning: only {len(themes)} themes available (asked for {theme_num})")
    tindex = {t: k for k, t in enumerate(themes)}
    clicks = clicks[clicks["theme"].isin(tindex)].reset_index(drop=True)
    before = len(clicks)
    clicks = clicks.drop_duplicates(["theme", "user", "item"], ignore_index=True)
    meta["duplicate_clicks_dropped"] = before - len(clicks)
    frame = pd.DataFrame({"user": clicks["user"], "item": clicks["item"], "rating": np.float32(np.nan),
                          "domain": clicks["theme"].map(tindex).astype(np.int64)})
    num_domains = len(themes)
    if neg_ratios is not None:
        ratios = [float(x) for x in neg_ratios]
        if len(ratios) != num_domains or min(ratios) <= 0:
            raise DataError(f"--neg_ratios={ratios}: expected {num_domains} positive values")
    else:
        ratios = draw_ratios(num_domains, neg_ratio_range, neg_ratio_seed)
    log(f"themes {themes}; sampling negatives with ratios {ratios}")
    n_pos = len(frame)
    frame, stats = add_negatives(frame, ratios, seed)
    domain = frame["domain"].to_numpy(np.int64)
    label = frame["label"].to_numpy(np.float32)
    if split_mode == "stratified":
        split = stratified_split(label, domain, split_ratios, seed)
    else:
        tkey = np.zeros(len(frame))
        tkey[:n_pos] = _time_key(clicks["time"], files[CLICK_FILE])  # positives come first in `frame`
        split = time_split(label, domain, tkey, split_ratios, seed)
    columns, vocabs, pretrained = {}, {}, {}
    for name, col, path, hdr in (("user_id", "user", files[USER_EMB_FILE], user_hdr),
                                 ("item_id", "item", files[ITEM_EMB_FILE], item_hdr)):
        columns[name], vocabs[name] = encode_categorical(frame[col], name)
        wanted = {v: i for i, v in enumerate(vocabs[name]) if i > 0}
        mat, dim, b = read_embeddings(path, wanted, hdr, skip_bad_rows)
        meta["skipped_bad_rows"] += b
        data = _npy_bytes(mat)
        missing = int((~np.any(mat[1:] != 0, axis=1)).sum())
        pretrained[name] = {"path": f"pretrained/{name.split('_')[0]}_emb.npy", "shape": list(mat.shape),
                            "dtype": "float32", "sha256": hashlib.sha256(data).hexdigest(), "oov_row": 0,
                            "ids_without_embedding": missing, "source": os.path.basename(path), "_bytes": data}
    feats = [FeatureDef("user_id", "categorical", len(vocabs["user_id"]), "user", True),
             FeatureDef("item_id", "categorical", len(vocabs["item_id"]), "item", True)]
    meta.update(
        themes=[str(t) for t in themes], neg_ratios=ratios,
        negative_sampling={str(themes[k]): st for k, st in enumerate(stats)},
        pretrained_embeddings={k: {kk: vv for kk, vv in v.items() if kk != "_bytes"} for k, v in pretrained.items()},
        embedding_trainable=False)
    with AtomicDir(output_dir) as tmp:
        schema = write_dataset(
            tmp, dataset="taobao-theme", features=feats, columns=columns, domain=domain,
            domain_names=[str(t) for t in themes], labels={"label": label}, split=split, vocabs=vocabs, fp=fp,
            num_shards=num_shards,
            metadata={"source": os.path.abspath(raw_path), "checksums": checksums, "options": options, **meta,
                      "label_rule_text": "click = 1, sampled non-clicked theme items = 0"})
        os.makedirs(os.path.join(tmp, "pretrained"))
        for v in pretrained.values():
            with open(os.path.join(tmp, v["path"]), "wb") as f:
                f.write(v["_bytes"])
    return schema


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("raw_path", None, "Folder with theme_click_log.csv, user_embedding.csv, item_embedding.csv.")
    flags.DEFINE_string("output_dir", None, "Output directory.")
    flags.DEFINE_integer("theme_num", 10, "Number of themes (domains), first by appearance in the click log.")
    flags.DEFINE_boolean("require_embeddings", True, "Drop clicks whose user or item has no pretrained embedding.")
    flags.DEFINE_list("neg_ratio_range", ["0.2", "0.5"], "Per-theme ratio r ~ U[lo, hi]; negatives = int(n/r).")
    flags.DEFINE_integer("neg_ratio_seed", 123, "Seed of the ratio draws (Python random; MLoRA: 123).")
    flags.DEFINE_list("neg_ratios", None, "Explicit per-theme ratios (override the draws).")
    flags.DEFINE_enum("split_mode", "stratified", list(SPLIT_MODES), "stratified (config_10) or time (config_10_time).")
    flags.DEFINE_list("split_ratios", ["0.6", "0.2", "0.2"], "train,valid,test fractions.")
    flags.DEFINE_integer("seed", 123, "Split and negative-sampling seed.")
    flags.DEFINE_integer("num_shards", 1, "TFRecord shards per domain and split.")
    flags.DEFINE_boolean("skip_bad_rows", False, "Skip and count malformed lines instead of failing.")


def _prepare_from_flags(f: flags.FlagValues) -> None:
    prepare(f.output_dir, raw_path=f.raw_path, theme_num=f.theme_num,
            require_embeddings=f.require_embeddings,
            neg_ratio_range=[float(x) for x in f.neg_ratio_range], neg_ratio_seed=f.neg_ratio_seed,
            neg_ratios=None if f.neg_ratios is None else [float(x) for x in f.neg_ratios],
            split_mode=f.split_mode, split_ratios=[float(x) for x in f.split_ratios], seed=f.seed,
            num_shards=f.num_shards, skip_bad_rows=f.skip_bad_rows)


def cli() -> None:
    run_cli(define_flags, _prepare_from_flags, required=("raw_path", "output_dir"))


if __name__ == "__main__":
    cli()
