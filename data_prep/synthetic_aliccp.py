"""Ali-CCP-sized synthetic data, generated in constant memory (scale runs only, never results).

Same field layout as ``data_prep.aliccp`` (23 sparse fields ``f101 … f150_14`` with the
position field ``301`` as the domain, 8 dense fields ``d109_14 … d853``, labels
``click`` and ``purchase``), 3 domains with the SWR row shares of Ali-CCP
(32.24 M / 0.64 M / 52.44 M of 85.3 M), and the Ali-CCP split shares (train file 42.3 M
rows, test file 43.0 M halved into valid and test).

Vocabulary sizes: Ali-CCP's per-field sizes after the rechub ``min_freq=10`` filter are
not published (docs/operations.md lists what is known); ``VOCAB`` holds **estimates**:
user and item ids from the SWR per-domain user/item counts (datasets.md §4.2), the
profile fields from their semantics, the rest order-of-magnitude guesses. Ids follow a
power law (``id = 1 + floor(V * u**skew)``) so a few ids are frequent, as in real logs.

Labels: ``logit = b_d + w_user + flip_d * w_item + w_cat + 0.5 * (dense_0 - 0.5)``, with
``b_d`` set for a ~4 % click rate; ``purchase = click AND u < 0.02``.

Rows are generated shard by shard (``num_shards`` units, each in chunks of
``chunk_rows`` rows, seeded by ``(seed, shard)``), so memory is one chunk and a rerun
after an interruption continues at the first unfinished shard. ``columnar=True`` also
writes the columnar shards (``mdr_tf.columnar``) of ``columnar_splits`` (default: train
only, as before; add valid and test so that evaluation of a split too large for memory
reads them, ``mdr_tf.training.evaluation``) next to the TFRecords.
``tfrecord_splits`` (default: all three) can leave out the valid and test TFRecords when
their columnar shards are written instead: about 3/4 less disk and half the generation
CPU for those splits, but then only the columnar readers (evaluation,
``make_dataset`` of a split too large for memory) can read them.

Example:
  python -m data_prep.synthetic_aliccp --output_dir=data/synthetic_aliccp85m --num_rows=85316519 --num_shards=16 \
      --columnar_splits=train,valid,test
"""

from __future__ import annotations

import os
import resource
import time
from typing import Sequence

import numpy as np
from absl import app, flags

from data_prep.aliccp import DENSE_FIELDS, GROUPS, SPARSE_FIELDS
from data_prep.common import (SPLITS, FeatureDef, ShardSetWriter, WorkDir, _empty_counts, existing_output,
                              finish_streamed_dataset, fingerprint, log, merge_counts, shard_name,
                              write_vocab_file)

# Estimated vocabulary sizes (ids 1..V; id 0 = OOV). See the module docstring.
VOCAB = {"101": 240_000, "121": 98, "122": 13, "124": 2, "125": 7, "126": 3, "127": 3, "128": 2, "129": 4,
         "205": 470_000, "206": 6_500, "207": 240_000, "210": 90_000, "216": 120_000,
         "508": 150_000, "509": 300_000, "702": 300_000, "853": 150_000, "301": 3,
         "109_14": 6_500, "110_14": 200_000, "127_14": 110_000, "150_14": 60_000}
DOMAIN_ROWS = (32_236_951, 639_897, 52_439_671)  # SWR per-domain rows (datasets.md §4.2)
SPLIT_SHARES = (42.3 / 85.3, 21.5 / 85.3, 21.5 / 85.3)
SKEW = 2.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 10**6])
    return {"101": rng.normal(0, 0.6, VOCAB["101"] + 1).astype(np.float32),
            "205": rng.normal(0, 0.6, VOCAB["205"] + 1).astype(np.float32),
            "206": rng.normal(0, 0.4, VOCAB["206"] + 1).astype(np.float32),
            "base": np.array([-3.4, -2.6, -3.1], np.float32), "flip": np.array([1.0, -1.0, 1.0], np.float32)}


def chunk(rng: np.random.Generator, n: int, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One chunk of ``n`` rows: feature columns, ``domain``, ``split`` and the two labels."""
    p = np.asarray(DOMAIN_ROWS, np.float64)
    domain = rng.choice(3, size=n, p=p / p.sum()).astype(np.int64)
    split = rng.choice(3, size=n, p=np.asarray(SPLIT_SHARES) / sum(SPLIT_SHARES)).astype(np.int8)
    cols: dict[str, np.ndarray] = {}
    for f in SPARSE_FIELDS:
        if f == "301":
            cols["f301"] = domain + 1
            continue
        v = VOCAB[f]
        cols[f"f{f}"] = (1 + np.floor(v * rng.random(n) ** SKEW)).astype(np.int64).clip(1, v)
    for f in DENSE_FIELDS:
        cols[f"d{f}"] = rng.random(n, dtype=np.float32)
    logit = (w["base"][domain] + w["101"][cols["f101"]] + w["flip"][domain] * w["205"][cols["f205"]]
             + w["206"][cols["f206"]] + 0.5 * (cols[f"d{DENSE_FIELDS[0]}"] - 0.5))
    click = (rng.random(n, dtype=np.float32) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    purchase = (click * (rng.random(n, dtype=np.float32) < 0.02)).astype(np.float32)
    return {"columns": cols, "domain": domain, "split": split, "click": click, "purchase": purchase}


def _count_rows(counts: dict, c: dict, mask: np.ndarray) -> None:
    """Adds the rows of chunk ``c`` selected by ``mask`` to ``counts`` (as ``ShardSetWriter`` counts them)."""
    key = c["domain"][mask] * 3 + c["split"][mask]
    for k, lab in (("examples", None), ("positives", "click")):
        w = None if lab is None else (c[lab][mask] > 0.5)
        per = np.bincount(key, weights=w, minlength=9)
        for g in np.flatnonzero(per):
            d, s = divmod(int(g), 3)
            counts[str(d)][SPLITS[s]][k] += int(per[g])
    for lab in ("click", "purchase"):
        per = np.bincount(key, weights=c[lab][mask] > 0.5, minlength=9)
        for g in np.flatnonzero(per):
            d, s = divmod(int(g), 3)
            counts[str(d)][SPLITS[s]]["label_positives"][lab] += int(per[g])


def _unit(work: WorkDir, index: int, rows: int, opt: dict, w: dict) -> dict:
    """Writes shard ``index`` of every (domain, split) (+ its columnar shards); returns its counts."""
    from mdr_tf.columnar import ColumnarShardWriter, shard_dir

    int_feats = [f"f{f}" for f in SPARSE_FIELDS]
    float_feats = [f"d{f}" for f in DENSE_FIELDS]
    n_sh = opt["num_shards"]
    rec_splits = opt.get("tfrecord_splits", SPLITS)
    rec_ids = np.array([SPLITS.index(s) for s in rec_splits], np.int8)
    writer = ShardSetWriter(work.out, index, n_sh, 3, rec_splits, int_feats, float_feats, ["click", "purchase"])
    col_dtypes = {**{k: np.int32 for k in int_feats}, **{k: np.float32 for k in float_feats}, "domain_id": np.int32,
                  "click": np.float32, "purchase": np.float32}
    cw = ({(d, s): ColumnarShardWriter(shard_dir(work.out, d, s, index, n_sh), col_dtypes)
           for s in opt.get("columnar_splits", ("train",)) for d in range(3)} if opt["columnar"] else {})
    rng = np.random.default_rng([opt["seed"], index])
    counts_extra = _empty_counts(3, ["click", "purchase"])
    try:
        done = 0
        while done < rows:
            n = min(opt["chunk_rows"], rows - done)
            c = chunk(rng, n, w)
            keep = np.isin(c["split"], rec_ids)
            if keep.all():
                writer.write(c["columns"], c["domain"], c["split"], {"click": c["click"], "purchase": c["purchase"]})
            else:  # columnar-only splits: no TFRecords (their counts are added below)
                writer.write({k: v[keep] for k, v in c["columns"].items()}, c["domain"][keep], c["split"][keep],
                             {"click": c["click"][keep], "purchase": c["purchase"][keep]})
                _count_rows(counts_extra, c, ~keep)
            for (d, s), cwd in cw.items():
                sel = np.flatnonzero((c["domain"] == d) & (c["split"] == SPLITS.index(s)))
                cwd.append({**{k: v[sel] for k, v in c["columns"].items()}, "domain_id": c["domain"][sel],
                            "click": c["click"][sel], "purchase": c["purchase"][sel]})
            done += n
        counts = writer.close()
        merge_counts(counts, counts_extra)
        for (d, s), cwd in cw.items():
            if s in rec_splits:  # the TFRecord it mirrors (a columnar-only split has none)
                cwd.source = os.path.join(work.out, f"domain_{d}", shard_name(s, index, n_sh))
            cwd.close()
    except BaseException:
        writer.abort()
        for cwd in cw.values():
            cwd.abort()
        raise
    return {"counts": counts, "rows": rows}


def generate(output_dir: str, num_rows: int = 85_316_519, num_shards: int = 16, seed: int = 0,
             chunk_rows: int = 500_000, columnar: bool = True, progress=log,
             columnar_splits: Sequence[str] = ("train",), tfrecord_splits: Sequence[str] = SPLITS) -> dict:
    """Writes the dataset (resumable, constant memory); returns its schema. See the module docstring."""
    bad = sorted((set(columnar_splits) | set(tfrecord_splits)) - set(SPLITS))
    if bad:
        raise ValueError(f"unknown splits {bad}; expected some of {list(SPLITS)}")
    columnar_splits = [s for s in SPLITS if s in columnar_splits] if columnar else []
    tfrecord_splits = [s for s in SPLITS if s in tfrecord_splits]
    if "train" not in tfrecord_splits:
        raise ValueError("tfrecord_splits must hold 'train' (the canonical training data)")
    lost = [s for s in SPLITS if s not in tfrecord_splits and s not in columnar_splits]
    if lost:
        raise ValueError(f"splits {lost} would be written neither as TFRecords nor as columnar shards; "
                         "add them to columnar_splits")
    options = dict(num_rows=num_rows, num_shards=num_shards, seed=seed, vocab=VOCAB, skew=SKEW,
                   domain_rows=DOMAIN_ROWS, split_shares=SPLIT_SHARES, columnar=columnar, version=1)
    # Only non-default choices enter the fingerprint (a dataset written before these options keeps its key).
    if columnar and columnar_splits != ["train"]:
        options["columnar_splits"] = columnar_splits
    if tfrecord_splits != list(SPLITS):
        options["tfrecord_splits"] = tfrecord_splits
    fp = fingerprint({"synthetic_aliccp": options})
    done = existing_output(output_dir, fp)
    if done is not None:
        return done
    os.makedirs(os.path.dirname(os.path.abspath(output_dir)), exist_ok=True)
    work = WorkDir(output_dir, fp)
    try:
        opt = {"num_shards": num_shards, "seed": seed, "chunk_rows": chunk_rows, "columnar": columnar,
               "columnar_splits": columnar_splits, "tfrecord_splits": tfrecord_splits}
        w = _weights(seed)
        counts = _empty_counts(3, ["click", "purchase"])
        t0 = time.time()
        written = 0
        for i in range(num_shards):
            rows = num_rows // num_shards + (1 if i < num_rows % num_shards else 0)
            res = work.done(f"shard-{i}")
            if res is None:
                t = time.time()
                res = _unit(work, i, rows, opt, w)
                res["seconds"] = round(time.time() - t, 1)
                res["peak_rss_mb"] = round(_rss_mb(), 1)
                work.mark(f"shard-{i}", res)
            merge_counts(counts, res["counts"])
            written += rows
            el = time.time() - t0
            progress(f"shard {i + 1}/{num_shards}: {written:,}/{num_rows:,} rows, {el:.0f}s, peak RSS "
                     f"{_rss_mb():.0f} MB")
        vdir = os.path.join(work.out, "vocab")
        os.makedirs(vdir, exist_ok=True)
        for f in SPARSE_FIELDS:
            write_vocab_file(os.path.join(vdir, f"f{f}.txt"), (f"{f}:{i}" for i in range(1, VOCAB[f] + 1)))
        features = [FeatureDef(f"f{f}", "categorical", vocab_size=VOCAB[f] + 1, group=GROUPS[f],
                               is_id=f in ("101", "205")) for f in SPARSE_FIELDS]
        features += [FeatureDef(f"d{f}", "dense", group=GROUPS[f]) for f in DENSE_FIELDS]
        return finish_streamed_dataset(
            work, dataset="synthetic_aliccp", features=features, domain_names=["301=1", "301=2", "301=3"],
            label_keys=["click", "purchase"], counts=counts, num_shards=num_shards, fp=fp,
            metadata={"options": options, "synthetic": True, "task": "ctr",
                      "vocab_estimated": True, "peak_rss_mb": round(_rss_mb(), 1),
                      "tfrecord_splits": tfrecord_splits, "columnar_splits": columnar_splits},
            progress=progress, splits=tfrecord_splits)
    finally:
        work.release()


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
    del argv
    generate(FLAGS.output_dir, num_rows=FLAGS.num_rows, num_shards=FLAGS.num_shards, seed=FLAGS.seed,
             chunk_rows=FLAGS.chunk_rows, columnar=FLAGS.columnar, columnar_splits=FLAGS.columnar_splits,
             tfrecord_splits=FLAGS.tfrecord_splits)


if __name__ == "__main__":
    flags.DEFINE_string("output_dir", None, "Output directory.", required=True)
    flags.DEFINE_integer("num_rows", 85_316_519, "Rows (Ali-CCP after the rechub filter: 85,316,519).")
    flags.DEFINE_integer("num_shards", 16, "Shards per (domain, split); one unit of work each.")
    flags.DEFINE_integer("seed", 0, "Seed.")
    flags.DEFINE_integer("chunk_rows", 500_000, "Rows generated at a time (memory bound).")
    flags.DEFINE_boolean("columnar", True, "Also write columnar shards (of --columnar_splits).")
    flags.DEFINE_list("columnar_splits", ["train"], "Splits whose columnar shards are written (default: train, "
                      "as before; add valid,test for evaluation of splits too large for memory).")
    flags.DEFINE_list("tfrecord_splits", ["train", "valid", "test"], "Splits written as TFRecords; leaving out "
                      "valid,test (columnar only) saves disk and time, see the module docstring.")
    app.run(main)
