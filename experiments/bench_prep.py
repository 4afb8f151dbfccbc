"""Throughput and memory of the Ali-CCP preprocessor on synthetic raw files (not a test).

Writes ``sample_skeleton_{train,test}.csv`` / ``common_features_{train,test}.csv`` in the
raw Ali-CCP format with a realistic shape (14 entries per sample row, about 300 entries
per common-feature row, one common row per ~58 samples as in the real train file;
numbers are fixed-width so that rows are assembled as byte matrices), runs ``data_prep.aliccp.prepare``
on them and reports rows/s, peak RSS of the parent and of the largest worker, and the output size. Also
compares the columnar tf.Example encoder with building ``tf.train.Example`` protos row by row.

Example:
  python -m experiments.bench_prep --rows=3000000 --dir=/tmp/aliccp_bench --workers=2
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from typing import Sequence

import numpy as np
from absl import app, flags


def _const(b: bytes, n: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(b, np.uint8), (n, len(b)))


def _digits(x: np.ndarray, width: int) -> np.ndarray:
    """[n, width] ASCII digits of non-negative ints, zero-padded (the parser accepts them)."""
    x = np.asarray(x, np.int64).copy()
    out = np.empty((len(x), width), np.uint8)
    for j in range(width - 1, -1, -1):
        out[:, j] = 48 + x % 10
        x //= 10
    return out


def _value(x: np.ndarray) -> np.ndarray:
    """[n, 7] "d.ddddd" for floats in [0, 10)."""
    return np.concatenate([_digits(x.astype(np.int64), 1), _const(b".", len(x)),
                           _digits((x % 1 * 1e5).astype(np.int64), 5)], axis=1)


def _feature_list(entries: Sequence[tuple[str, np.ndarray, int, np.ndarray | None]], n: int) -> list[np.ndarray]:
    """Column blocks of ``field\x02id\x03value`` entries joined by \x01 (fixed width per column)."""
    blocks = []
    for k, (field, ids, width, vals) in enumerate(entries):
        blocks.append(_const((b"\x01" if k else b"") + field.encode() + b"\x02", n))
        blocks.append(_digits(ids, width))
        blocks.append(_const(b"\x03", n))
        blocks.append(_const(b"1.0", n) if vals is None else _value(vals))
    return blocks


def write_raw(root: str, rows: int, seed: int = 0, test_frac: float = 0.5, chunk: int = 100_000) -> dict:
    """Synthetic raw Ali-CCP files (fixed-width numbers, so rows are assembled as byte
    matrices); returns their sizes. Reuses files already there."""
    os.makedirs(root, exist_ok=True)
    done = os.path.join(root, "_complete.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    rng = np.random.default_rng(seed)
    info = {}
    for role, n in (("train", rows), ("test", int(rows * test_frac))):
        n_keys = max(1, n // 58)
        keys = np.array([hashlib.md5(f"{role}{i}".encode()).hexdigest().encode() for i in range(n_keys)], "S32")
        with open(os.path.join(root, f"common_features_{role}.csv"), "wb") as f:
            for lo in range(0, n_keys, 2000):
                m = min(2000, n_keys - lo)
                ent = [(fld, rng.integers(1, hi, m), w, None) for fld, hi, w in (
                    ("101", 400_000, 6), ("121", 100, 2), ("122", 15, 2), ("124", 3, 1), ("125", 8, 1),
                    ("126", 4, 1), ("127", 4, 1), ("128", 3, 1), ("129", 5, 1))]
                for fld, k, hi in (("109_14", 100, 50_000), ("110_14", 100, 300_000), ("127_14", 80, 100_000),
                                   ("150_14", 11, 100_000)):
                    ent += [(fld, rng.integers(1, hi, m), 6, rng.random(m) * 5) for _ in range(k)]
                body = np.concatenate(
                    [keys[lo:lo + m].view(np.uint8).reshape(m, 32), _const(f",{len(ent)},".encode(), m)]
                    + _feature_list(ent, m) + [_const(b"\n", m)], axis=1)
                f.write(body.tobytes())
        with open(os.path.join(root, f"sample_skeleton_{role}.csv"), "wb") as f:
            for lo in range(0, n, chunk):
                m = min(chunk, n - lo)
                click = (rng.random(m) < 0.04).astype(np.int64)
                buy = (click & (rng.random(m) < 0.15)).astype(np.int64)
                buy[rng.random(m) < 1e-4] = 1  # a few inconsistent click = 0, buy = 1 rows
                ent = []
                for fld, hi, w in (("205", 4_000_000, 7), ("206", 6_000, 4), ("207", 300_000, 6),
                                   ("210", 100_000, 6), ("210", 100_000, 6), ("216", 150_000, 6),
                                   ("508", 2_000_000, 7), ("509", 3_000_000, 7), ("702", 2_000_000, 7),
                                   ("853", 2_000_000, 7), ("999", 1000, 4), ("998", 1000, 4), ("997", 1000, 4)):
                    ids = np.minimum(rng.zipf(1.3, m), hi)  # Zipf-like popularity: min_freq matters
                    ent.append((fld, ids, w, rng.random(m) * 4 if fld in ("508", "509", "702", "853") else None))
                ent.append(("301", rng.choice([9351665, 9351666, 9351667], m, p=[0.38, 0.01, 0.61]), 7, None))
                key = keys[rng.integers(0, n_keys, m)]
                body = np.concatenate(
                    [_digits(lo + np.arange(m), 10), _const(b",", m), _digits(click, 1), _const(b",", m),
                     _digits(buy, 1), _const(b",", m), key.view(np.uint8).reshape(m, 32),
                     _const(f",{len(ent)},".encode(), m)] + _feature_list(ent, m) + [_const(b"\n", m)], axis=1)
                f.write(body.tobytes())
        info[role] = {"rows": n, "common_rows": n_keys,
                      "skeleton_bytes": os.path.getsize(os.path.join(root, f"sample_skeleton_{role}.csv")),
                      "common_bytes": os.path.getsize(os.path.join(root, f"common_features_{role}.csv"))}
    with open(done, "w") as f:
        json.dump(info, f)
    return info


def bench_encoder(n: int = 20_000) -> dict:
    """Rows per CPU-second of the columnar encoder + TFRecord framing vs per-row
    ``tf.train.Example`` protos (``common._serialize_rows``), Ali-CCP's 34 columns."""
    from data_prep.common import _serialize_rows, encode_examples, frame_tfrecords

    rng = np.random.default_rng(0)
    cat = {f"f{i}": rng.integers(0, 2_000_000, n) for i in range(23)}
    dense = {f"d{i}": rng.random(n).astype(np.float32) for i in range(8)}
    dom = rng.integers(0, 3, n)
    labels = {"click": np.zeros(n, np.float32), "purchase": np.zeros(n, np.float32)}
    t = time.process_time()  # CPU time: robust on a shared machine
    rec = encode_examples(list(cat.items()) + [("domain_id", dom)], list(dense.items()) + list(labels.items()))
    frame_tfrecords(rec)
    columnar = n / (time.process_time() - t)
    m = min(n, 5000)
    t = time.process_time()
    for _ in _serialize_rows({k: v[:m] for k, v in cat.items()}, {k: v[:m] for k, v in dense.items()}, dom[:m],
                             {k: v[:m] for k, v in labels.items()}):
        pass
    per_row = m / (time.process_time() - t)
    return {"columnar_rows_per_s": round(columnar), "tf_example_rows_per_s": round(per_row),
            "speedup": round(columnar / per_row, 1)}


FLAGS = flags.FLAGS
def bench_entry_screen(lines: int = 4000, reps: int = 5, seed: int = 0) -> dict:
    """CPU time of ``aliccp.parse_feature_block`` with and without the every-entry screen.

    A common-features-like block (behaviour lists of 5..60 entries in each of the four
    ``*_14`` fields, ~130 entries a line); the screen is switched off by making
    ``_int_like`` / ``_float_like`` accept everything; interleaved, median of ``reps``.
    """
    from data_prep import aliccp

    rng = np.random.default_rng(seed)
    out = []
    for r in range(lines):
        ents = [("101", 1000 + r, "1"), ("121", 11, "1"), ("124", 1, "1")]
        for f in ("109_14", "110_14", "127_14", "150_14"):
            ents += [(f, int(rng.integers(1, 10**6)), f"{rng.random():.4f}") for _ in range(int(rng.integers(5, 60)))]
        out.append(f"k{r},{len(ents)}," + "\x01".join(f"{f}\x02{i}\x03{v}" for f, i, v in ents))
    block = ("\n".join(out) + "\n").encode()
    real = (aliccp._int_like, aliccp._float_like)
    times: dict[str, list[float]] = {"screen": [], "no_screen": []}
    try:
        for _ in range(reps):
            for name in times:
                aliccp._int_like, aliccp._float_like = real if name == "screen" else (
                    lambda b, s, e: np.ones(len(s), bool),) * 2
                t0 = time.process_time()
                aliccp.parse_feature_block(block, 2, True)
                times[name].append(time.process_time() - t0)
    finally:
        aliccp._int_like, aliccp._float_like = real
    a, b = float(np.median(times["screen"])), float(np.median(times["no_screen"]))
    return {"block_mb": round(len(block) / 2**20, 1), "lines": lines, "cpu_s_screen": round(a, 3),
            "cpu_s_no_screen": round(b, 3), "ratio": round(a / b, 2), "load_average": os.getloadavg()}


flags.DEFINE_integer("rows", 3_000_000, "Train sample rows (the test file gets half as many).")
flags.DEFINE_string("dir", "/tmp/aliccp_bench", "Where the raw files and the output go.")
flags.DEFINE_integer("workers", 0, "Worker processes (0 = all cores).")
flags.DEFINE_integer("num_shards", 16, "Shards per (domain, split).")
flags.DEFINE_boolean("keep_output", False, "Keep the prepared output.")


def main(argv: Sequence[str]) -> None:
    del argv
    from data_prep import aliccp

    raw = os.path.join(FLAGS.dir, "raw")
    t = time.time()
    info = write_raw(raw, FLAGS.rows)
    gen_s = time.time() - t
    out = os.path.join(FLAGS.dir, "out")
    shutil.rmtree(out, ignore_errors=True)
    t = time.time()
    schema = aliccp.prepare(out, raw_path=raw, workers=FLAGS.workers, num_shards=FLAGS.num_shards)
    dt = time.time() - t
    rows = info["train"]["rows"] + info["test"]["rows"]
    out_bytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    raw_bytes = sum(v["skeleton_bytes"] + v["common_bytes"] for v in info.values())
    result = {
        "raw_rows": rows, "raw_bytes": raw_bytes, "generate_seconds": round(gen_s, 1),
        "examples_written": schema["num_examples"], "prepare_seconds": round(dt, 1),
        "raw_rows_per_s": round(rows / dt), "raw_mb_per_s": round(raw_bytes / dt / 2 ** 20, 1),
        "workers": FLAGS.workers or os.cpu_count(), "cpu_count": os.cpu_count(),
        "peak_rss_parent_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_largest_unit_mb": schema["peak_rss_mb"]["largest_unit"],
        "worker_cpu_seconds": schema["worker_cpu_seconds"],
        "raw_rows_per_cpu_second": round(rows / max(sum(schema["worker_cpu_seconds"].values()), 1e-9)),
        "output_bytes": out_bytes, "load_average": os.getloadavg(),
        "encoder": bench_encoder(),
    }
    print(json.dumps(result, indent=2))
    if not FLAGS.keep_output:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
