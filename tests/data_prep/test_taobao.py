"""Taobao_10 (MLoRA) on a tiny format-faithful fixture written here.

Click log with a header and themes in a known first-appearance order; embedding files of
dimension 4 (space-separated strings, one with a header and quoted vectors), with some
users/items missing. Expected values are computed from the fixture tables below.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import numpy as np
import pytest

from data_prep import common, taobao
from data_prep.common import DataError

# user, theme, item, reach_time.  First appearance: T05, T30, T10, T20, T40.
CLICKS = [
    ("900", "T05", "101", 100),  # user 900 has no embedding: T05 disappears
    ("1", "T30", "101", 105), ("2", "T30", "104", 101), ("1", "T30", "102", 110), ("3", "T30", "105", 102),
    ("3", "T30", "106", 120), ("1", "T30", "101", 130),  # duplicate click (u1, i101)
    ("6", "T30", "110", 103), ("6", "T30", "111", 140), ("3", "T30", "107", 104), ("2", "T30", "112", 150),
    ("3", "T30", "108", 106), ("6", "T30", "109", 107), ("1", "T30", "103", 108),
    ("4", "T10", "107", 109), ("1", "T10", "108", 111), ("4", "T10", "999", 112),  # item 999: no embedding
    ("5", "T10", "109", 113), ("4", "T10", "108", 114), ("5", "T10", "120", 115), ("5", "T10", "121", 116),
    ("2", "T20", "104", 117), ("3", "T20", "105", 118), ("2", "T20", "130", 119),
    ("2", "T40", "106", 121), ("6", "T40", "131", 122),
]
USERS = ["1", "2", "3", "4", "5", "6"]
ITEMS = ["101", "102", "103", "104", "105", "106", "107", "108", "109", "110", "111", "112", "120", "121",
         "130", "131"]
MLORA_RATIOS = [0.22, 0.23, 0.32, 0.23]


def _vec(key: str, salt: float) -> list[float]:
    k = int(key)
    return [round(salt + k / 1000 + j / 10, 4) for j in range(4)]


def write_raw(base, clicks=CLICKS, item_lines_extra=()):
    base.mkdir(parents=True, exist_ok=True)
    with open(base / taobao.CLICK_FILE, "w") as f:
        f.write("user_id,theme_id,item_id,leaf_cate_id,cate_level1_id,reach_time\n")
        for u, t, i, ts in clicks:
            f.write(f"{u},{t},{i},{len(i) + 50},{len(t) % 3},{ts}\n")
    with open(base / taobao.USER_EMB_FILE, "w") as f:  # header + quoted vectors
        f.write("user_id,emb\n")
        for u in USERS:
            f.write(f'{u},"{" ".join(map(str, _vec(u, 1.0)))}"\n')
    with open(base / taobao.ITEM_EMB_FILE, "w") as f:  # no header
        for i in ITEMS + ["555"]:  # 555 is never clicked
            f.write(f"{i},{' '.join(map(str, _vec(i, -1.0)))}\n")
        for line in item_lines_extra:
            f.write(line)
    return str(base)


def _records(d):
    from mdr_tf.data import load_arrays
    from mdr_tf.schema import Schema

    schema = Schema.load(str(d))
    vocab = {}
    for f in schema.categorical:
        with open(os.path.join(str(d), "vocab", f"{f.name}.txt"), encoding="utf-8") as fh:
            vocab[f.name] = fh.read().split("\n")[:-1]
    out = []
    for split in common.SPLITS:
        x, y = load_arrays(schema, split)
        for i in range(len(y)):
            out.append({"split": split, "label": float(y[i]), "domain": int(x["domain_id"][i]),
                        "user": vocab["user_id"][x["user_id"][i]], "item": vocab["item_id"][x["item_id"][i]]})
    return schema, out, vocab


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_raw(tmp_path_factory.mktemp("taobao") / "raw")


@pytest.fixture(scope="module")
def built(tmp_path_factory, raw):
    out = tmp_path_factory.mktemp("tb") / "out"
    schema = taobao.prepare(str(out), raw_path=raw)
    return schema, out


def _positives(theme):
    """Deduplicated clicks of a theme whose user and item both have embeddings."""
    return sorted({(u, i) for u, t, i, _ in CLICKS if t == theme and u in USERS and i in ITEMS})


def test_first_appearing_themes_are_the_domains(tmp_path, raw, built):
    schema, _ = built
    assert schema["domain_names"] == ["T30", "T10", "T20", "T40"]  # T05 has no click left
    assert schema["clicks_without_embedding"] == 2 and schema["duplicate_clicks_dropped"] == 1
    s2 = taobao.prepare(str(tmp_path / "two"), raw_path=raw, theme_num=2)
    assert s2["domain_names"] == ["T30", "T10"] and s2["num_domains"] == 2


def test_negative_sampling_counts_and_exclusions(built):
    schema, out = built
    assert schema["neg_ratios"] == MLORA_RATIOS
    _, recs, _ = _records(out)
    for k, theme in enumerate(schema["domain_names"]):
        pos = _positives(theme)
        pool = {i for _, i in pos}
        mine = collections.defaultdict(set)
        for u, i in pos:
            mine[u].add(i)
        want = {u: min(int(len(v) / MLORA_RATIOS[k]), len(pool) - len(v)) for u, v in mine.items()}
        dom = [r for r in recs if r["domain"] == k]
        assert sorted((r["user"], r["item"]) for r in dom if r["label"] == 1.0) == pos
        negs = [(r["user"], r["item"]) for r in dom if r["label"] == 0.0]
        assert dict(collections.Counter(u for u, _ in negs)) == {u: c for u, c in want.items() if c}
        assert len(set(negs)) == len(negs) and all(i in pool and i not in mine[u] for u, i in negs)
    # T30: user 3 has 4 clicks -> int(4 / 0.22) = 18 wanted; 12-item pool leaves 8 (capped)
    assert schema["negative_sampling"]["T30"]["users_capped_by_pool"] >= 1


def test_stratified_split_proportions(built):
    schema, out = built
    _, recs, _ = _records(out)
    for k in range(schema["num_domains"]):
        for lab in (0.0, 1.0):
            n = sum(r["domain"] == k and r["label"] == lab for r in recs)
            got = [sum(r["domain"] == k and r["label"] == lab and r["split"] == s for r in recs)
                   for s in common.SPLITS]
            assert got == [round(0.6 * n), round(0.2 * n), n - round(0.6 * n) - round(0.2 * n)]


def test_pretrained_embeddings_line_up_with_vocab(built):
    schema, out = built
    _, _, vocab = _records(out)
    pre = schema["pretrained_embeddings"]
    assert set(pre) == {"user_id", "item_id"} and schema["embedding_trainable"] is False
    for name, salt in (("user_id", 1.0), ("item_id", -1.0)):
        path = os.path.join(str(out), pre[name]["path"])
        assert pre[name]["path"] == f"pretrained/{name[:4]}_emb.npy" and os.path.isfile(path)
        mat = np.load(path)
        assert mat.dtype == np.float32 and list(mat.shape) == pre[name]["shape"] == [len(vocab[name]), 4]
        assert common.sha256_of_file(path) == pre[name]["sha256"]
        assert not mat[0].any()  # row 0 = OOV = zeros
        for i, key in enumerate(vocab[name][1:], 1):
            np.testing.assert_allclose(mat[i], _vec(key, salt), rtol=0, atol=1e-6)
    assert "555" not in vocab["item_id"]


def test_reproducible_reuse_and_seed(tmp_path, raw, built):
    schema, out = built

    def shards(d):
        return {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
                for r, _, fs in os.walk(d) for f in fs if f.endswith((".tfrecord", ".npy"))}

    again = tmp_path / "again"
    assert taobao.prepare(str(again), raw_path=raw)["fingerprint"] == schema["fingerprint"]
    assert shards(again) == shards(out)
    mtime = (again / common.SCHEMA_FILE).stat().st_mtime_ns
    taobao.prepare(str(again), raw_path=raw)
    assert (again / common.SCHEMA_FILE).stat().st_mtime_ns == mtime  # reused
    os.remove(again / "pretrained" / "item_emb.npy")  # incomplete output is rebuilt, not reused
    taobao.prepare(str(again), raw_path=raw)
    assert (again / "pretrained" / "item_emb.npy").exists()
    other = tmp_path / "other"
    taobao.prepare(str(other), raw_path=raw, seed=9)
    negs = lambda d: {(r["user"], r["item"]) for r in _records(d)[1] if r["label"] == 0}  # noqa: E731
    assert negs(other) != negs(out)


def test_keep_clicks_without_embeddings(tmp_path, raw):
    s = taobao.prepare(str(tmp_path / "o"), raw_path=raw, require_embeddings=False)
    assert s["domain_names"][0] == "T05"
    _, recs, vocab = _records(tmp_path / "o")
    assert s["pretrained_embeddings"]["user_id"]["ids_without_embedding"] == 1
    assert s["pretrained_embeddings"]["item_id"]["ids_without_embedding"] == 1
    mat = np.load(tmp_path / "o" / "pretrained" / "user_emb.npy")
    assert not mat[vocab["user_id"].index("900")].any()


def test_time_split_orders_positives(tmp_path, raw):
    s = taobao.prepare(str(tmp_path / "o"), raw_path=raw, split_mode="time")
    _, recs, _ = _records(tmp_path / "o")
    first_time = {}
    for u, t, i, ts in CLICKS:
        first_time.setdefault((t, u, i), ts)
    for k, theme in enumerate(s["domain_names"]):
        pos = [r for r in recs if r["domain"] == k and r["label"] == 1.0]
        times = {sp: [first_time[(theme, r["user"], r["item"])] for r in pos if r["split"] == sp]
                 for sp in common.SPLITS}
        assert len(times["train"]) == round(0.6 * len(pos))
        if times["train"] and (times["valid"] or times["test"]):
            assert max(times["train"]) < min(times["valid"] + times["test"])


def test_errors(tmp_path):
    raw = write_raw(tmp_path / "dim", item_lines_extra=["999,0.5 0.5 0.5\n"])
    with pytest.raises(DataError, match=r"item_embedding\.csv:18: 3 values, expected 4"):
        taobao.prepare(str(tmp_path / "o"), raw_path=raw)
    s = taobao.prepare(str(tmp_path / "o"), raw_path=raw, skip_bad_rows=True)
    assert s["skipped_bad_rows"] == 1
    raw = write_raw(tmp_path / "click", clicks=CLICKS[:3] + [("7", "T30", "", 1)] + CLICKS[3:])
    with pytest.raises(DataError, match=r"theme_click_log\.csv:5: expected non-empty user_id, theme_id, item_id"):
        taobao.prepare(str(tmp_path / "o2"), raw_path=raw)
    os.remove(os.path.join(raw, taobao.ITEM_EMB_FILE))
    with pytest.raises(DataError, match="no file 'item_embedding.csv'"):
        taobao.prepare(str(tmp_path / "o3"), raw_path=raw)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_failure_leaves_no_output(tmp_path, raw, monkeypatch):
    import builtins

    def failing_open(path, mode="r", *a, **k):  # the TFRecords and schema are written, the .npy fails
        if "w" in mode and str(path).endswith(".npy"):
            raise OSError("disk full (simulated)")
        return builtins.open(path, mode, *a, **k)

    monkeypatch.setattr(taobao, "open", failing_open, raising=False)
    with pytest.raises(OSError, match="simulated"):
        taobao.prepare(str(tmp_path / "o"), raw_path=raw)
    assert os.listdir(tmp_path) == []  # no output dir, no temp sibling


def test_cli_help():
    proc = subprocess.run([sys.executable, "-m", "data_prep.taobao", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in proc.stderr
    for flag in ("--raw_path", "--output_dir", "--theme_num", "--split_mode", "--[no]require_embeddings"):
        assert flag in proc.stdout
