"""Ali-CCP preprocessing on tiny format-faithful raw files written here (no data is committed).

The expected output is computed by a plain-Python reference of the torch-rechub recipe
(row dicts, ``dict.update``, last entry wins, min-frequency vocabulary) and compared
with what the streamed, vectorised preprocessor wrote, decoded through the vocab files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
from collections import Counter

import numpy as np
import pytest

from data_prep import aliccp
from data_prep.common import DataError, encode_examples, frame_tfrecords, split_uniform

SEP1, SEP2, SEP3 = "\x01", "\x02", "\x03"
D301 = (9351667, 9351665, 9351666)  # first-appearance order in the train file (not sorted)


def _key(i: int) -> str:
    return hashlib.md5(f"user{i}".encode()).hexdigest()


def _fl(entries) -> str:
    return SEP1.join(f"{f}{SEP2}{i}{SEP3}{v}" for f, i, v in entries)


def write_fixture(root: str) -> dict:
    """Writes the four raw files; returns facts the tests check."""
    os.makedirs(root, exist_ok=True)
    # Common rows: user fields + behaviour lists (repeated fields: the last entry wins).
    commons = {
        0: [("101", 1000, 1), ("121", 11, 1), ("124", 1, 1), ("109_14", 500, 0.5), ("109_14", 501, 2.0),
            ("150_14", 700, 1.5)],
        1: [("101", 1001, 1), ("121", 11, 1), ("124", 2, 1), ("109_14", 502, 0.25)],
        2: [("101", 1002, 1), ("121", 12, 1), ("124", 1, 1), ("109_14", 500, 3.0), ("110_14", 600, 1.0)],
        3: [("101", 1003, 1), ("121", 12, 1)],  # no 124: missing -> 0
    }
    lines = {"train": [], "test": []}
    facts = {"inconsistent_train": 0, "inconsistent_test": 0}
    rng = np.random.default_rng(7)
    for role, n in (("train", 36), ("test", 14)):
        for r in range(n):
            sid = (0 if role == "train" else 10_000) + r
            user = r % 4
            item = 2000 + (r % 5)
            if role == "train" and r == 11:
                item = 2999  # seen once in train: below min_freq -> 0
            if role == "test" and r == 3:
                item = 3999  # never seen in train -> 0
            dom = D301[r % 3]
            entries = [("205", item, 1), ("206", 300 + item % 2, 1), ("207", 400 + item % 3, 1),
                       ("508", 800 + user, round(0.5 + r / 10, 2)), ("301", dom, 1), ("999", 5, 1)]
            if r % 4 != 1:
                entries.append(("216", 900 + item % 2, 1))  # rows with r % 4 == 1 lack 216 -> 0
            if r % 6 == 1:
                entries += [("210", 111, 1), ("210", 112, 1)]  # repeated field: the last entry (112) wins
            if r == 7:
                entries.append(("101", 4242, 1))  # the common row's 101 wins
            click = int(rng.random() < 0.5)
            buy = int(click and rng.random() < 0.4)
            if r in (5, 9):
                click, buy = 0, 1  # inconsistent: dropped
                facts[f"inconsistent_{role}"] += 1
            lines[role].append(f"{sid},{click},{buy},{_key(user)},{len(entries)},{_fl(entries)}")
    for role in ("train", "test"):
        with open(os.path.join(root, f"sample_skeleton_{role}.csv"), "w") as f:
            f.write("\n".join(lines[role]) + "\n")
        with open(os.path.join(root, f"common_features_{role}.csv"), "w") as f:
            for u, ent in commons.items():
                f.write(f"{_key(u)},{len(ent)},{_fl(ent)}\n")
    return facts


def reference(root: str, min_freq: int, task: str = "ctr") -> dict:
    """Plain-Python torch-rechub recipe: {(domain, split): sorted list of row tuples}."""
    def parse(line: str, n_head: int):
        parts = line.rstrip("\n").split(",")
        d = {}
        for e in parts[n_head].split(SEP1):
            f, rest = e.split(SEP2)
            i, v = rest.split(SEP3)
            d[f] = (i, v)  # last entry of a field wins
        return parts[:n_head], d

    rows = {}
    for role in ("train", "test"):
        common = {}
        with open(os.path.join(root, f"common_features_{role}.csv")) as f:
            for line in f:
                (key, _), d = parse(line, 2)
                common[key] = d
        out = []
        with open(os.path.join(root, f"sample_skeleton_{role}.csv")) as f:
            for line in f:
                (sid, click, buy, key, _), d = parse(line, 5)
                if click == "0" and buy == "1":
                    continue
                d.update(common.get(key, {}))  # common wins
                out.append((int(sid), int(click), int(buy), d))
        rows[role] = out
    counts = {f: Counter() for f in aliccp.SPARSE_FIELDS}
    for _, _, _, d in rows["train"]:
        for f in aliccp.SPARSE_FIELDS:
            if f in d:
                counts[f][d[f][0]] += 1
    dvals = [float(d[f][1]) if f in d else 0.0 for _, _, _, d in rows["train"] for f in aliccp.DENSE_FIELDS]
    dv = np.array(dvals, np.float64).reshape(-1, len(aliccp.DENSE_FIELDS))
    lo, hi = dv.min(0), dv.max(0)
    order = []
    for _, _, _, d in rows["train"]:
        if d["301"][0] not in order:
            order.append(d["301"][0])
    expected = {}
    for role in ("train", "test"):
        for sid, click, buy, d in rows[role]:
            if task == "cvr" and click != 1:
                continue
            feats = []
            for f in aliccp.SPARSE_FIELDS:
                raw = d[f][0] if f in d else None
                feats.append(raw if raw is not None and counts[f][raw] >= min_freq else "<OOV>")
            dense = []
            for j, f in enumerate(aliccp.DENSE_FIELDS):
                v = float(d[f][1]) if f in d else 0.0
                dense.append(round((v - lo[j]) / (hi[j] - lo[j]) if hi[j] > lo[j] else v - lo[j], 4))
            split = "train" if role == "train" else (
                "valid" if split_uniform(np.array([sid]), 2022)[0] < 0.5 else "test")
            label = (click, buy) if task == "ctr" else (buy, click)
            expected.setdefault((order.index(d["301"][0]), split), []).append(tuple(feats) + tuple(dense) + label)
    return {k: sorted(v) for k, v in expected.items()}, order


_READ_CACHE: dict = {}


def read_back(out: str) -> dict:
    """{(domain, split): sorted row tuples} decoded through vocab/*.txt, via mdr_tf's reader."""
    import json

    with open(os.path.join(out, "schema.json")) as fh:
        key = (out, json.load(fh)["fingerprint"])
    if key not in _READ_CACHE:
        _READ_CACHE[key] = _read_back(out)
    return _READ_CACHE[key]


def _read_back(out: str) -> dict:
    from mdr_tf.data import load_arrays
    from mdr_tf.schema import Schema

    schema = Schema.load(out)
    vocab = {}
    for f in schema.categorical:
        with open(os.path.join(out, "vocab", f"{f.name}.txt")) as fh:
            vocab[f.name] = [x.rstrip("\n") for x in fh]
        assert len(vocab[f.name]) == f.vocab_size
    got: dict = {}
    for split in ("train", "valid", "test"):
        x, y = load_arrays(schema, split)
        _, y2 = load_arrays(schema, split, label_key=schema.label_keys[1])
        for i in range(len(y)):
            feats = tuple(vocab[f"f{f}"][x[f"f{f}"][i]] for f in aliccp.SPARSE_FIELDS)
            dense = tuple(round(float(x[f"d{f}"][i]), 4) for f in aliccp.DENSE_FIELDS)
            got.setdefault((int(x["domain_id"][i]), split), []).append(feats + dense + (int(y[i]), int(y2[i])))
    return {k: sorted(v) for k, v in got.items()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[str, dict]:
    root = str(tmp_path_factory.mktemp("aliccp_raw") / "raw")
    return root, write_fixture(root)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("aliccp_out") / "ctr")
    schema = aliccp.prepare(out, raw_path=raw[0], min_freq=3, num_shards=2, workers=1)
    return out, schema


def test_matches_reference_recipe(raw, prepared):
    out, schema = prepared
    expected, order = reference(raw[0], min_freq=3)
    got = read_back(out)
    assert got == expected
    # Domains: field 301 values in order of first appearance in the train file.
    assert schema["domain_raw_values"] == [int(v) for v in order] == list(D301)
    assert schema["domain_names"] == [f"301={v}" for v in D301]
    # Exact per-domain counts and positives in schema.json.
    for (d, split), rows in expected.items():
        c = schema["counts"][str(d)][split]
        assert c["examples"] == len(rows)
        assert c["positives"] == sum(r[-2] for r in rows)
        assert c["label_positives"]["purchase"] == sum(r[-1] for r in rows)


def test_tricky_cases(raw, prepared):
    out, schema = prepared
    got = read_back(out)
    train = [r for (d, s), rows in got.items() if s == "train" for r in rows]
    test = [r for (d, s), rows in got.items() if s != "train" for r in rows]
    # 36 train rows - 2 inconsistent (click 0, buy 1); 14 test rows - 2.
    assert len(train) == 34 and len(test) == 12
    assert raw[1] == {"inconsistent_train": 2, "inconsistent_test": 2}
    assert schema["row_totals"]["train_dropped_click0_buy1"] == 2
    col = {f: i for i, f in enumerate(aliccp.SPARSE_FIELDS)}
    # Repeated 210 (111 then 112) -> 112; row 7's own 101=4242 is overridden by its common row.
    assert Counter(r[col["210"]] for r in train) == {"112": 6, "<OOV>": 28}
    assert all(r[col["101"]] in ("1000", "1001", "1002", "1003") for r in train)
    # Missing 216 (rows r % 4 == 1) and missing 124 (user 3) -> id 0 (<OOV>).
    assert sum(r[col["216"]] == "<OOV>" for r in train) == sum(1 for r in range(36) if r % 4 == 1 and r not in (5, 9))
    assert sum(r[col["124"]] == "<OOV>" for r in train) == sum(1 for r in range(36) if r % 4 == 3 and r not in (5, 9))
    # Item 2999 occurs once in train (< min_freq) and 3999 only in test -> 0; frequent items kept.
    items = Counter(r[col["205"]] for r in train)
    assert items["<OOV>"] == 1 and "2999" not in items and set(items) - {"<OOV>"} == {f"{2000 + i}" for i in range(5)}
    assert sum(r[col["205"]] == "<OOV>" for r in test) == 1
    # A common-feature key is shared by many samples: user 0's last 109_14 entry (501) everywhere.
    assert Counter(r[col["109_14"]] for r in train)["501"] == sum(1 for r in range(36) if r % 4 == 0)
    # Three domains, contiguous ids; valid + test come from the test file only.
    assert schema["num_domains"] == 3
    assert sum(schema["counts"][str(d)]["train"]["examples"] for d in range(3)) == 34
    assert sum(schema["counts"][str(d)][s]["examples"] for d in range(3) for s in ("valid", "test")) == 12
    assert schema["label_keys"] == ["click", "purchase"]
    assert 0 < sum(schema["counts"][str(d)]["valid"]["examples"] for d in range(3)) < 12


@pytest.mark.parametrize("task", ["cvr", "ctcvr"])
def test_tasks(raw, tmp_path, task):
    out = str(tmp_path / task)
    schema = aliccp.prepare(out, raw_path=raw[0], min_freq=3, num_shards=1, workers=1, task=task)
    assert schema["label_keys"] == ["purchase", "click"]
    got = read_back(out)
    rows = [r for v in got.values() for r in v]
    if task == "cvr":
        expected, _ = reference(raw[0], min_freq=3, task="cvr")
        assert got == expected
        assert all(r[-1] == 1 for r in rows)  # clicked impressions only
    else:
        assert len(rows) == 34 + 12
        assert all(r[-1] == 1 for r in rows if r[-2] == 1)  # purchase implies click
    assert schema["positive_rate"] == pytest.approx(np.mean([r[-2] for r in rows]))


def _corrupt(root: str, name: str, line_no: int, new: str) -> None:
    p = os.path.join(root, name)
    lines = open(p).read().split("\n")
    lines[line_no - 1] = new
    open(p, "w").write("\n".join(lines))


@pytest.mark.parametrize("bad,needle", [
    ("17,0,0,abc,2,205\x022000\x031\x01301\x02", "\\x03"),
    ("17,0,0,abc,1", "expected 6 comma-separated fields"),
    ("17,0,7,abc,1,205\x022000\x031", "click and buy must be 0 or 1"),
    ("17,0,0,abc,2,205\x02x20\x031\x01301\x029351667\x031", "feature id is not a non-negative integer"),
    ("17,0,0,abc,3,205\x022000\x031\x01301\x029351667\x031", "num_features = 3 but the feature list has 2"),
])
def test_malformed_line_names_file_and_line(raw, tmp_path, bad, needle):
    root = str(tmp_path / "raw")
    shutil.copytree(raw[0], root)
    _corrupt(root, "sample_skeleton_train.csv", 20, bad)
    with pytest.raises(DataError) as e:
        aliccp.prepare(str(tmp_path / "out"), raw_path=root, min_freq=3, num_shards=3, workers=1)
    assert "sample_skeleton_train.csv:20:" in str(e.value) and needle in str(e.value)
    assert not os.path.exists(tmp_path / "out")
    schema = aliccp.prepare(str(tmp_path / "out"), raw_path=root, min_freq=3, num_shards=3, workers=1,
                            skip_bad_rows=True)
    assert schema["skipped_bad_rows"] == 1
    assert sum(schema["counts"][str(d)]["train"]["examples"] for d in range(3)) == 33


def test_interrupted_run_resumes_and_rerun_reuses(raw, prepared, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    real = aliccp._write_unit_entry
    calls = []
    armed = True

    class Interrupted(Exception):
        pass

    def flaky(*unit):
        calls.append(unit[0])
        if len(calls) == 2 and armed:
            raise Interrupted("simulated interruption (e.g. Ctrl-C or a killed job)")
        return real(*unit)

    monkeypatch.setattr(aliccp, "_write_unit_entry", flaky)
    with pytest.raises(Interrupted):
        aliccp.prepare(out, raw_path=raw[0], min_freq=3, num_shards=2, workers=1)
    assert not os.path.exists(out)  # nothing half-written at the destination
    work = [p for p in os.listdir(tmp_path) if p.startswith("out.work-")]
    assert len(work) == 1
    assert not any(f.endswith(".tfrecord") for _, _, fs in os.walk(tmp_path / work[0] / "out" / "domain_0")
                   for f in fs if "-00001-" in f)
    # Rerun: the finished units (common index, pass 1, first shard) are not redone.
    monkeypatch.setattr(aliccp, "_stats_unit_entry", lambda *u: pytest.fail("pass 1 redone"))
    monkeypatch.setattr(aliccp, "_common_unit_entry", lambda *u: pytest.fail("common index redone"))
    calls.clear()
    armed = False
    schema = aliccp.prepare(out, raw_path=raw[0], min_freq=3, num_shards=2, workers=1)
    assert len(calls) == 3  # 4 write units, 1 finished before the interruption
    assert read_back(out) == read_back(prepared[0])
    assert [p for p in os.listdir(tmp_path) if ".work-" in p] == []
    # A finished output with the same inputs and options is reused untouched.
    monkeypatch.setattr(aliccp, "_write_unit_entry", lambda *u: pytest.fail("rewritten"))
    mtime = os.path.getmtime(os.path.join(out, "schema.json"))
    again = aliccp.prepare(out, raw_path=raw[0], min_freq=3, num_shards=2, workers=1)
    assert again["fingerprint"] == schema["fingerprint"]
    assert os.path.getmtime(os.path.join(out, "schema.json")) == mtime


def test_archives_and_parallel_workers(raw, prepared, tmp_path):
    """Train files inside sample_train.tar.gz, test files gzip-compressed; 2 worker processes."""
    root = tmp_path / "dl"
    root.mkdir()
    with tarfile.open(root / "sample_train.tar.gz", "w:gz") as t:
        for n in ("sample_skeleton_train.csv", "common_features_train.csv"):
            t.add(os.path.join(raw[0], n), arcname=f"train/{n}")
    for n in ("sample_skeleton_test.csv", "common_features_test.csv"):
        with open(os.path.join(raw[0], n), "rb") as f, gzip.open(root / f"{n}.gz", "wb") as g:
            g.write(f.read())
    out = str(tmp_path / "out")
    aliccp.prepare(out, raw_path=str(root), min_freq=3, num_shards=2, workers=2)
    assert read_back(out) == read_back(prepared[0])


def test_columnar_encoding_matches_tf_example():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    n = 300
    ints = [("f101", rng.integers(0, 5_000_000, n)), ("neg", rng.integers(-3, 3, n)),
            ("big", rng.integers(0, 2 ** 62, n)), ("domain_id", rng.integers(0, 3, n))]
    floats = [("d508", rng.random(n).astype(np.float32)), ("click", (rng.random(n) < 0.3).astype(np.float32))]
    rec = encode_examples(ints, floats)
    for i in (0, 17, n - 1):
        f = tf.train.Example.FromString(rec[i].tobytes()).features.feature
        for k, v in ints:
            assert f[k].int64_list.value[:] == [v[i]]
        for k, v in floats:
            assert f[k].float_list.value[:] == [v[i]]
    # Framing is byte-identical to tf.io.TFRecordWriter (length, masked CRC-32C of both).
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mdr_enc_{os.getpid()}.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for r in rec:
            w.write(r.tobytes())
    try:
        with open(path, "rb") as fh:
            assert fh.read() == frame_tfrecords(rec)
    finally:
        os.remove(path)


def test_rechub_preprocessed_csv(tmp_path):
    """torch-rechub's ali_ccp_{train,val,test}.csv: ids kept, HAMUR's domain map, files = splits."""
    rng = np.random.default_rng(1)
    header = aliccp.RECHUB_HEADER
    n = {"train": 30, "val": 10, "test": 10}
    expect = {}
    for split, k in n.items():
        rows = []
        for i in range(k):
            click = int(rng.random() < 0.5)
            ids = [int(rng.integers(0, 50)) for _ in aliccp.SPARSE_FIELDS]
            ids[aliccp.SPARSE_FIELDS.index("301")] = 1 + i % 3
            dense = [round(float(rng.random()), 4) for _ in aliccp.DENSE_FIELDS]
            rows.append([click, int(click and rng.random() < 0.5)] + ids + dense)
            name = {"val": "valid"}.get(split, split)
            expect.setdefault((i % 3, name), []).append((click, tuple(ids)))
        with open(tmp_path / f"ali_ccp_{split}_sample.csv", "w") as f:
            f.write(",".join(header) + "\n" + "\n".join(",".join(str(x) for x in r) for r in rows) + "\n")
    out = str(tmp_path / "out")
    schema = aliccp.prepare(out, raw_path=str(tmp_path), input_format="rechub_csv", num_shards=1)
    from mdr_tf.data import load_arrays
    from mdr_tf.schema import Schema

    s = Schema.load(out)
    assert s.feature("f205").vocab_size == 1 + max(r[1][aliccp.SPARSE_FIELDS.index("205")]
                                                   for v in expect.values() for r in v)
    for split in ("train", "valid", "test"):
        x, y = load_arrays(s, split)
        got = sorted((int(x["domain_id"][i]), int(y[i]), tuple(int(x[f"f{f}"][i]) for f in aliccp.SPARSE_FIELDS))
                     for i in range(len(y)))
        want = sorted((d, c, ids) for (d, sp), v in expect.items() if sp == split for c, ids in v)
        assert got == want
    assert schema["counts"]["0"]["train"]["examples"] == 10
    # A row outside HAMUR's three domains names file and line.
    with open(tmp_path / "ali_ccp_val_sample.csv", "a") as f:
        f.write(",".join(["0", "0"] + ["0"] * len(aliccp.SPARSE_FIELDS) + ["0.5"] * 8) + "\n")
    with pytest.raises(DataError, match=r"ali_ccp_val_sample.csv:12: encoded 301 must be one of"):
        aliccp.prepare(str(tmp_path / "bad"), raw_path=str(tmp_path), input_format="rechub_csv")
