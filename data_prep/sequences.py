"""Behaviour sequences for TEM4CTR / DIN, and the ``ml100k_seq`` recipe.

Vectorised (NumPy, no per-row Python) construction of, for every target interaction:

- ``click``: the last ``L`` clicks of the user strictly before the target's time
  (events in the same second as the target are excluded), oldest first, left-padded;
- ``unclick``: for each of those clicks, its time-aligned window: the ``R`` nearest
  unclicks before it and the ``R`` nearest after it in the user's log order (time, then
  file order for events of the same second), every member strictly before the target's
  time; ``[L, 2R]``, before-slots right-aligned next to the click, after-slots
  left-aligned.

Everything is stored as fixed-length int64 lists with a mask (1 = event, 0 = padding,
id 0 exactly on padding) and the events' timestamps (``<name>_ts``), a ``sequence``
feature kind in ``schema.json`` (``mdr_tf.schema.SequenceFeature``).

TEM4CTR's official preprocessing (zhy99426/TEM4CTR ``preprocess_*_align.py``) orders by
log position, so events of the target's second can leak into its history; it also
replaces the item of label-0 targets by a random item. We do neither
(docs/models/tem4ctr.md).

Example:
  python -m data_prep.sequences --output_dir=data/ml100k_seq --history_length=30 --window=5
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np
from absl import flags

from data_prep.common import (SCHEMA_FILE, SPLITS, AtomicDir, DataError, FeatureDef, _varint,
                              _varint_matrix, check_split_ratios, encode_categorical, existing_output, fingerprint,
                              frame_tfrecords, log, random_split, run_cli, whole_array_schema,
                              write_json_atomic)

SPLIT_MODES = ("temporal", "random")


def build_sequences(user: np.ndarray, ts: np.ndarray, click: np.ndarray, item: np.ndarray, history_length: int,
                    window: int) -> dict[str, np.ndarray]:
    """Click histories and their time-aligned unclick windows for every row (vectorised).

    Args:
      user: [N] user key per interaction (any integers).
      ts: [N] timestamps (integers, e.g. Unix seconds).
      click: [N] bool, the interaction is a click (else an unclick).
      item: [N] item ids to store (0 is reserved for padding).
      history_length: L, clicks kept per target.
      window: R, unclicks kept on each side of a click.

    Returns:
      ``click_ids``, ``click_mask``, ``click_ts`` [N, L] and ``unclick_ids``,
      ``unclick_mask``, ``unclick_ts`` [N, L, 2R] (int64), rows in input order.
    """
    n = len(user)
    L, R = int(history_length), int(window)
    if L < 1 or R < 1:
        raise DataError(f"history length and window must be >= 1, got L={L}, R={R}")
    user = np.asarray(user, np.int64)
    ts = np.asarray(ts, np.int64)
    click = np.asarray(click, bool)
    item = np.asarray(item, np.int64)
    if n and item.min() < 1:
        raise DataError("item ids must be >= 1 (0 is the padding id)")
    order = np.lexsort((np.arange(n), ts, user))  # log order: user, time, file order
    u, t, c, it = user[order], ts[order], click[order], item[order]
    # Rank users so that (user, time) packs into one sortable int64 key.
    _, ur = np.unique(u, return_inverse=True)
    ur = ur.astype(np.int64)
    t0 = t - (t.min() if n else 0)
    if n and t0.max() >= 1 << 40:
        raise DataError("timestamps span more than 2^40 units")
    key = (ur << 40) | t0
    user_start = np.searchsorted(ur, ur, side="left")  # first sorted position of the row's user
    user_end = np.searchsorted(ur, ur, side="right")

    # --- clicks strictly before the target's time (same second excluded) ---
    cpos = np.flatnonzero(c)
    ckey = key[cpos]
    hi = np.searchsorted(ckey, key, side="left")            # clicks with key < target key
    lo = np.searchsorted(cpos, user_start, side="left")     # the user's first click
    j = hi[:, None] - L + np.arange(L)[None, :]             # [N, L], oldest → newest
    hvalid = j >= lo[:, None]
    jc = np.where(hvalid, j, 0)
    click_pos = cpos[jc] if len(cpos) else np.zeros_like(jc)

    # --- each click's window: R unclicks before / after it in log order ---
    upos = np.flatnonzero(~c)
    b = np.searchsorted(upos, cpos, side="left")             # unclicks before the click
    ulo = np.searchsorted(upos, user_start[cpos], side="left")
    uhi = np.searchsorted(upos, user_end[cpos], side="left")
    wj = np.concatenate([b[:, None] - R + np.arange(R)[None, :], b[:, None] + np.arange(R)[None, :]], axis=1)
    wvalid = (wj >= ulo[:, None]) & (wj < uhi[:, None])      # [C, 2R]
    wpos = upos[np.where(wvalid, wj, 0)] if len(upos) else np.zeros_like(wj)

    # --- gather per target, mask members not strictly before the target ---
    w_of = wpos[jc] if len(cpos) else np.zeros((n, L, 2 * R), np.int64)       # [N, L, 2R] sorted positions
    wv = (wvalid[jc] if len(cpos) else np.zeros((n, L, 2 * R), bool)) & hvalid[:, :, None]
    wv &= t[w_of] < t[:, None, None]
    out_sorted = {
        "click_mask": hvalid,
        "click_ids": np.where(hvalid, it[click_pos], 0),
        "click_ts": np.where(hvalid, t[click_pos], 0),
        "unclick_mask": wv,
        "unclick_ids": np.where(wv, it[w_of], 0),
        "unclick_ts": np.where(wv, t[w_of], 0),
    }
    inv = np.empty(n, np.int64)
    inv[order] = np.arange(n)
    return {k: v[inv].astype(np.int64) for k, v in out_sorted.items()}


def temporal_split(ts: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """0/1/2 = train/valid/test by global time: the earliest ``ratios[0]`` of the events
    train, the next ``ratios[1]`` valid, the latest test (ties in file order)."""
    n = len(ts)
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), ts))] = np.arange(n)
    n_train = int(round(ratios[0] * n))
    n_valid = int(round(ratios[1] * n))
    return np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2)).astype(np.int8)


def encode_list_examples(int_cols: Sequence[tuple[str, np.ndarray]],
                         float_cols: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """Serialises N ``tf.train.Example`` records column by column; int columns may be lists.

    ``int_cols`` values are [N] (one int64) or [N, K] (a fixed-length int64 list, packed);
    ``float_cols`` are [N] float32. Same technique as ``data_prep.common.encode_examples``
    (fixed-width varints per column, so every record has the same length), extended to
    lists; ``tf.io.parse_example`` reads the result (tested).

    Returns:
      [N, W] uint8: row i is the serialised example i.
    """
    n = len(int_cols[0][1]) if int_cols else len(float_cols[0][1])
    parts: list[np.ndarray] = []

    def entry(name: str, feature_tag: int, payload_len: int) -> bytes:
        key = name.encode()
        lst = 1 + len(_varint(payload_len)) + payload_len             # XList body
        feat = 1 + len(_varint(lst)) + lst                             # Feature body
        body = bytes([0x0A]) + _varint(len(key)) + key + bytes([0x12]) + _varint(feat)
        head = bytes([feature_tag]) + _varint(lst) + bytes([0x0A]) + _varint(payload_len)
        return bytes([0x0A]) + _varint(len(body) + feat) + body + head

    for name, values in int_cols:
        v = np.asarray(values)
        if len(v) != n:
            raise DataError(f"column {name!r} has {len(v)} rows, expected {n}")
        v = v.reshape(n, -1)
        k = v.shape[1]
        vm = _varint_matrix(v.reshape(-1)).reshape(n, -1) if n else np.zeros((0, k), np.uint8)
        prefix = entry(name, 0x1A, vm.shape[1])
        parts.append(np.broadcast_to(np.frombuffer(prefix, np.uint8), (n, len(prefix))))
        parts.append(vm)
    for name, values in float_cols:
        if len(values) != n:
            raise DataError(f"column {name!r} has {len(values)} rows, expected {n}")
        prefix = entry(name, 0x12, 4)
        parts.append(np.broadcast_to(np.frombuffer(prefix, np.uint8), (n, len(prefix))))
        parts.append(np.ascontiguousarray(np.asarray(values, dtype="<f4")).view(np.uint8).reshape(n, 4))
    body_len = sum(p.shape[1] for p in parts)
    head = np.frombuffer(b"\x0a" + _varint(body_len), np.uint8)
    return np.concatenate([np.broadcast_to(head, (n, len(head)))] + parts, axis=1)


def write_sequence_dataset(
    output_dir: str,
    *,
    dataset: str,
    features: Sequence[FeatureDef],
    columns: dict[str, np.ndarray],
    sequences: Sequence[dict[str, Any]],
    seq_columns: dict[str, np.ndarray],
    domain: np.ndarray,
    domain_names: Sequence[str],
    labels: dict[str, np.ndarray],
    split: np.ndarray,
    vocabs: dict[str, list[str]],
    fp: str,
    metadata: dict[str, Any],
    progress=log,
) -> dict:
    """``data_prep.common.write_dataset`` for datasets with behaviour sequences (vectorised, atomic).

    Args:
      sequences: ``SequenceFeature`` JSON dicts (name, shape, embed_with, has_timestamps).
      seq_columns: ``<name>_ids`` / ``<name>_mask`` (/ ``<name>_ts``) → [N, ...] ints.
      Others: as ``write_dataset`` (one shard per (domain, split)).
    """
    n = len(domain)
    for name, arr in list(columns.items()) + list(labels.items()) + list(seq_columns.items()):
        if len(arr) != n:
            raise DataError(f"column {name!r} has {len(arr)} rows, expected {n}")
    seq_keys = []
    for s in sequences:
        length = int(np.prod(s["shape"]))
        keys = [f"{s['name']}_ids", f"{s['name']}_mask"] + ([f"{s['name']}_ts"] if s.get("has_timestamps") else [])
        for k in keys:
            if k not in seq_columns or seq_columns[k].reshape(n, -1).shape[1] != length:
                raise DataError(f"sequence {s['name']!r}: column {k!r} missing or not of length {length}")
        ids, mask = seq_columns[keys[0]].reshape(n, -1), seq_columns[keys[1]].reshape(n, -1)
        if n and ((ids != 0) != (mask != 0)).any():
            raise DataError(f"sequence {s['name']!r}: padding (id 0) and mask 0 must coincide")
        seq_keys += keys
    num_domains = len(domain_names)
    label_names = list(labels)
    primary = labels[label_names[0]]
    t0 = time.time()
    counts: dict[str, dict[str, dict[str, int]]] = {}
    int_names = [f.name for f in features if f.kind == "categorical"]
    float_names = [f.name for f in features if f.kind == "dense"]
    with AtomicDir(output_dir) as tmp:
        os.makedirs(os.path.join(tmp, "vocab"))
        for name, vocab in vocabs.items():
            with open(os.path.join(tmp, "vocab", f"{name}.txt"), "w", encoding="utf-8") as f:
                for v in vocab:
                    f.write(str(v).replace("\n", " ") + "\n")
        written = 0
        for d in range(num_domains):
            os.makedirs(os.path.join(tmp, f"domain_{d}"))
            counts[str(d)] = {}
            for si, sname in enumerate(SPLITS):
                idx = np.flatnonzero((domain == d) & (split == si))
                counts[str(d)][sname] = {"examples": int(len(idx)), "positives": int((primary[idx] > 0.5).sum())}
                ints = [(k, columns[k][idx]) for k in int_names] + [("domain_id", domain[idx])]
                ints += [(k, seq_columns[k].reshape(n, -1)[idx]) for k in seq_keys]
                floats = [(k, columns[k][idx]) for k in float_names] + [(k, v[idx]) for k, v in labels.items()]
                data = frame_tfrecords(encode_list_examples(ints, floats)) if len(idx) else b""
                with open(os.path.join(tmp, f"domain_{d}", f"{sname}-00000-of-00001.tfrecord"), "wb") as f:
                    f.write(data)
                written += len(idx)
                progress(f"domain {d} ({domain_names[d]}) {sname}: {len(idx)} examples "
                         f"[{written}/{n} written, {time.time() - t0:.1f}s]")
        schema = whole_array_schema(dataset, fp, features, domain_names, label_names, 1, counts, primary,
                                    metadata, sequences=sequences)
        write_json_atomic(os.path.join(tmp, SCHEMA_FILE), schema)
    progress(f"wrote {n} examples to {output_dir} in {time.time() - t0:.1f}s")
    return schema


def prepare_ml100k_seq(
    output_dir: str,
    *,
    raw_path: str | None = None,
    history_length: int = 30,
    window: int = 5,
    split_mode: str = "temporal",
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 2022,
    timestamps: bool = True,
    verify: bool = True,
    cache_dir: str | None = None,
) -> dict:
    """MovieLens-100k with TEM4CTR behaviour sequences (``ml100k_seq``).

    Every rating is an exposure and a target: click = rating ≥ 4 (label 1), unclick =
    rating ≤ 3 (label 0). Domains: the age groups of ``ml100k`` (``age3``). Features: those
    of ``ml100k`` (user, item, gender, age, occupation, zip, genre) plus the sequences
    ``click`` [L] and ``unclick`` [L, 2R] (``build_sequences``).

    Args:
      output_dir: output folder.
      raw_path: GroupLens zip / folder; default: the recbole wheel copy.
      history_length: L (paper code: 30).
      window: R (paper code: 5).
      split_mode: "temporal" (default: train = earliest 80% of ratings by time, valid the
        next 10%, test the latest 10%) or "random" (seeded, as ``ml100k``; histories of a
        train row may then contain events of test rows — later ones never).
      split_ratios: train/valid/test fractions.
      seed: random-split seed.
      timestamps: store ``click_ts`` / ``unclick_ts`` (for audits; models ignore them).
      verify: check the official counts.
      cache_dir: download cache.
    """
    from data_prep import movielens as ml
    from data_prep.sources import DEFAULT_CACHE, RawSource, fetch_recbole_wheel

    if split_mode not in SPLIT_MODES:
        raise DataError(f"--split_mode={split_mode!r}: expected one of {SPLIT_MODES}")
    split_ratios = check_split_ratios(split_ratios)
    cache_dir = cache_dir or DEFAULT_CACHE
    t_start = time.time()
    if raw_path is None:
        src = RawSource(fetch_recbole_wheel(cache_dir), prefix_in_zip="recbole/dataset_example/ml-100k/")
        source_name = "recbole==1.2.1 wheel (recbole/dataset_example/ml-100k)"
    else:
        src = RawSource(raw_path)
        source_name = os.path.abspath(raw_path)
    log(f"reading MovieLens-100k from {source_name}")
    frame, meta = ml.read_ml100k(src)
    counts = ml.verify_counts(frame, "100k", src.path) if verify else {"ratings": len(frame)}
    options = dict(history_length=int(history_length), window=int(window), split_mode=split_mode,
                   split_ratios=list(split_ratios), seed=int(seed), timestamps=bool(timestamps),
                   click_rule="rating >= 4", domain_scheme="age3", recipe="ml100k_seq/1")
    fp = fingerprint({"options": options, "checksums": meta["checksums"]})
    done = existing_output(output_dir, fp)
    if done is not None:
        log(f"reusing finished output in {output_dir} (same inputs and options)")
        return done
    rating = frame["rating"].to_numpy()
    click = rating >= 4
    label = click.astype(np.float32)
    domain, domain_names = ml.domain_column(frame, "age3")
    split = (temporal_split(frame["ts"].to_numpy(), split_ratios) if split_mode == "temporal"
             else random_split(len(frame), split_ratios, seed))
    raw_cols = {"user_id": frame["user"], "item_id": frame["item"], "gender": frame["gender"],
                "occupation": frame["occupation"], "zip": frame["zip"], "genre": frame["genre"]}
    groups = {"user_id": "user", "item_id": "item", "gender": "user", "occupation": "user", "zip": "user",
              "genre": "item"}
    defs, columns, vocabs = [], {}, {}
    for name in ml.ALL_FEATURES:
        if name == "age":
            age = frame["age"].to_numpy(dtype=np.float32)
            lo, hi = float(age.min()), float(age.max())
            columns[name] = (age - lo) / max(hi - lo, 1e-12)
            defs.append(FeatureDef(name, "dense", group="domain"))
            meta.setdefault("normalizers", {})[name] = {"minmax": [lo, hi]}
            continue
        ids, vocab = encode_categorical(raw_cols[name], name)
        columns[name] = ids
        vocabs[name] = vocab
        defs.append(FeatureDef(name, "categorical", vocab_size=len(vocab), group=groups[name],
                               is_id=name in ("user_id", "item_id")))
    t_seq = time.time()
    seq = build_sequences(frame["user"].to_numpy(), frame["ts"].to_numpy(), click, columns["item_id"],
                          history_length, window)
    L, R = int(history_length), int(window)
    seq_cols = {k: v.reshape(len(frame), -1) for k, v in seq.items() if timestamps or not k.endswith("_ts")}
    log(f"built click histories (L={L}) and unclick windows (R={R}) in {time.time() - t_seq:.1f}s; "
        f"mean clicks per target {seq['click_mask'].sum(1).mean():.1f}, "
        f"mean unclicks per target {seq['unclick_mask'].sum((1, 2)).mean():.1f}")
    sequences = [{"name": "click", "shape": [L], "embed_with": "item_id", "has_timestamps": bool(timestamps)},
                 {"name": "unclick", "shape": [L, 2 * R], "embed_with": "item_id", "has_timestamps": bool(timestamps)}]
    schema = write_sequence_dataset(
        output_dir, dataset="movielens-100k-seq", features=defs, columns=columns, sequences=sequences,
        seq_columns=seq_cols, domain=domain, domain_names=domain_names, labels={"label": label}, split=split,
        vocabs=vocabs, fp=fp,
        metadata={"source": source_name, "source_counts": counts, "options": options, **meta,
                  "label_rule_text": "click = rating >= 4 (label 1); unclick = rating <= 3"})
    log(f"ml100k_seq prepared in {time.time() - t_start:.1f}s")
    return schema


def define_flags() -> None:
    flags.DEFINE_string("raw_path", None, "GroupLens ml-100k zip or folder (default: the recbole wheel copy).")
    flags.DEFINE_string("output_dir", None, "Output directory.")
    flags.DEFINE_integer("history_length", 30, "L: clicks kept per target (TEM4CTR code: 30).")
    flags.DEFINE_integer("window", 5, "R: unclicks kept before and after each click (TEM4CTR code: 5).")
    flags.DEFINE_enum("split_mode", "temporal", list(SPLIT_MODES), "temporal (by global time) or random.")
    flags.DEFINE_list("split_ratios", ["0.8", "0.1", "0.1"], "train,valid,test fractions.")
    flags.DEFINE_integer("seed", 2022, "Random-split seed.")
    flags.DEFINE_boolean("timestamps", True, "Store the events' timestamps (click_ts, unclick_ts).")
    flags.DEFINE_boolean("verify_counts", True, "Check the official number of ratings/users/items.")


def _prepare_from_flags(f: flags.FlagValues) -> None:
    prepare_ml100k_seq(f.output_dir, raw_path=f.raw_path, history_length=f.history_length, window=f.window,
                       split_mode=f.split_mode, split_ratios=[float(x) for x in f.split_ratios], seed=f.seed,
                       timestamps=f.timestamps, verify=f.verify_counts)


def cli() -> None:
    run_cli(define_flags, _prepare_from_flags, required=("output_dir",))


if __name__ == "__main__":
    cli()
