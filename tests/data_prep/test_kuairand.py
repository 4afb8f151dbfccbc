"""KuaiRand-1K preprocessing on tiny format-faithful files written here (no data is committed).

A plain-Python reference (csv module, inner joins, tab selection, row-count
vocabularies) gives the expected rows, compared with the TFRecords read back through
``mdr_tf`` and decoded with the vocab files.
"""

from __future__ import annotations

import csv
import os
import tarfile
from collections import Counter

import numpy as np
import pytest

from data_prep import kuairand
from data_prep.common import DataError, split_uniform
from tests.helpers import read_back_rows

FIRST_APPEARANCE = [2, 0, 1, 6, 4, 10, 3]  # raw tabs in order of first appearance in the log
DEGREES = ["high_active", "full_active", "middle_active", "UNKNOWN"]


def write_fixture(data_dir: str, n_logs: int = 70) -> dict:
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(5)
    with open(os.path.join(data_dir, "user_features_1k.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("user_id",) + kuairand.USER_CATEGORICAL[:4] + (
            "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range", "friend_user_num",
            "friend_user_num_range", "register_days", "register_days_range")
            + tuple(f"onehot_feat{i}" for i in range(18)))
        for u in range(8):
            onehot = [str(int(rng.integers(0, 3))) if (u + i) % 5 else "" for i in range(18)]  # "" = NaN
            w.writerow([u, DEGREES[u % 4], u % 2, 0, u % 3 == 0, 5 * u, "(0,10]" if u < 3 else "(10,50]",
                        20 * u + 1, "[10,100)", u % 4, "0" if u % 4 == 0 else "[1,5)", 30 + 40 * u,
                        "31-60" if u < 4 else "61-90"] + onehot)
    with open(os.path.join(data_dir, "video_features_basic_1k.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("video_id",) + kuairand.VIDEO_COLUMNS)
        for v in range(100, 109):  # video 109 appears in logs only: inner-join loss
            w.writerow([v, 900 + v % 3, "AD" if v % 4 == 0 else "NORMAL", "2022-04-0" + str(1 + v % 5), "ShortImport",
                        "" if v % 5 == 0 else "1.0", 12345.0 + v, 720 if v % 2 else 1080, 1280, 55 + v % 2, 9.0,
                        "12,65" if v % 2 else "28"])
    tabs = FIRST_APPEARANCE + list(rng.choice([0, 1, 2, 3, 4, 6, 10], n_logs - len(FIRST_APPEARANCE),
                                              p=[.3, .2, .2, .1, .05, .1, .05]))
    rows = []
    with open(os.path.join(data_dir, "log_standard_4_22_to_5_08_1k.csv"), "w") as f:
        f.write(",".join(kuairand.LOG_COLUMNS) + "\n")
        for i, tab in enumerate(tabs):
            user = 9 if i in (11, 12) else int(rng.integers(0, 8))  # user 9: not in the user table
            video = 109 if i == 20 else int(rng.integers(100, 109))
            click = int(rng.random() < 0.4)
            row = [user, video, 20220422 + i % 5, 1200 + i, 1650000000000 + i, click, 0, 0, 0, 0, 0, click, 100 * i,
                   5000, 0, 0, 0, 0, int(tab)]
            f.write(",".join(str(x) for x in row) + "\n")
            rows.append(row)
    return {"rows": rows}


def reference(data_dir: str, selected_raw: list[int], dense: str = "minmax", split_mode: str = "random") -> dict:
    users = {r["user_id"]: r for r in csv.DictReader(open(os.path.join(data_dir, "user_features_1k.csv")))}
    videos = {r["video_id"]: r for r in csv.DictReader(open(os.path.join(data_dir, "video_features_basic_1k.csv")))}
    joined = []
    for r in csv.DictReader(open(os.path.join(data_dir, "log_standard_4_22_to_5_08_1k.csv"))):
        if r["user_id"] in users and r["video_id"] in videos:
            joined.append(r)
    counts_cols = kuairand.USER_COUNTS if dense == "none" else ()
    cat = ["user_id", "video_id", "tab"] + list(kuairand.USER_CATEGORICAL) + list(counts_cols) + list(
        kuairand.SWR_VIDEO_FEATURES)

    def value(r, f):
        if f in ("user_id", "video_id", "tab"):
            return r[f]
        return users[r["user_id"]][f] if f in users[r["user_id"]] else videos[r["video_id"]][f]

    sel = [(j, r) for j, r in enumerate(joined) if int(r["tab"]) in selected_raw]
    counts = {f: Counter(value(r, f) for _, r in sel) for f in cat}
    dense_cols = kuairand.USER_COUNTS if dense == "minmax" else ()
    lo = {c: min(float(users[r["user_id"]][c]) for _, r in sel) for c in dense_cols}
    hi = {c: max(float(users[r["user_id"]][c]) for _, r in sel) for c in dense_cols}
    out = {}
    for k, (j, r) in enumerate(sel):
        if split_mode == "random":
            u = split_uniform(np.array([j]), 2022)[0]
            split = "train" if u < 0.8 else "valid" if u < 0.9 else "test"
        else:
            b = np.round(np.cumsum([0.8, 0.1])[:2] * len(sel))
            split = "train" if k < b[0] else "valid" if k < b[1] else "test"
        feats = tuple("<OOV>" if value(r, f) == "" or counts[f][value(r, f)] < 1 else value(r, f) for f in cat)
        dense_v = tuple(float(np.float32((float(users[r["user_id"]][c]) - lo[c]) / (hi[c] - lo[c])))
                        for c in dense_cols)
        out.setdefault((selected_raw.index(int(r["tab"])), split), []).append(
            feats + dense_v + (int(r["is_click"]),))
    return {k: sorted(v) for k, v in out.items()}, len(joined)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("kuairand_raw")
    facts = write_fixture(str(root / "KuaiRand-1K" / "data"))
    return str(root), facts


def test_hierrec_raw_tabs(raw, tmp_path):
    out = str(tmp_path / "hierrec")
    schema = kuairand.prepare(out, raw_path=raw[0], num_shards=2)
    data_dir = os.path.join(raw[0], "KuaiRand-1K", "data")
    expected, n_joined = reference(data_dir, [0, 1, 2, 3, 6])
    assert read_back_rows(out) == expected
    assert schema["domain_names"] == ["tab=0", "tab=1", "tab=2", "tab=3", "tab=6"]
    assert schema["tab_first_appearance_order"] == FIRST_APPEARANCE
    # Inner joins: 2 rows of an unknown user, 1 of an unknown video are dropped.
    assert (schema["dropped_no_user"], schema["dropped_no_video"]) == (2, 1)
    assert schema["rows_joined"] == n_joined == 67
    for (d, split), rows in expected.items():
        c = schema["counts"][str(d)][split]
        assert (c["examples"], c["positives"]) == (len(rows), sum(r[-1] for r in rows))
    assert schema["num_examples"] == sum(len(v) for v in expected.values())
    # 37 fields: user_id, video_id, tab, 26 user + 4 video categorical, 4 dense.
    kinds = Counter(f["kind"] for f in schema["features"])
    assert kinds == {"categorical": 33, "dense": 4}
    assert [f["name"] for f in schema["features"] if f["group"] == "domain"] == ["tab"]


def test_swr_first_appearance_tabs(raw, tmp_path):
    out = str(tmp_path / "swr")
    schema = kuairand.prepare(out, raw_path=raw[0], tabs=[1, 0, 4, 2, 6], tab_ids="first_appearance",
                              num_shards=1)
    # First-appearance ids 0, 1, 2, 4, 6 are raw tabs 2, 0, 1, 4, 3.
    assert schema["domain_raw_tabs"] == [2, 0, 1, 4, 3]
    assert schema["domain_first_appearance_ids"] == [0, 1, 2, 4, 6]
    expected, _ = reference(os.path.join(raw[0], "KuaiRand-1K", "data"), [2, 0, 1, 4, 3])
    assert read_back_rows(out) == expected


def test_hierrec_all_categorical_contiguous(raw, tmp_path):
    out = str(tmp_path / "cat")
    schema = kuairand.prepare(out, raw_path=raw[0], dense="none", split_mode="contiguous", num_shards=1)
    assert all(f["kind"] == "categorical" for f in schema["features"])
    expected, _ = reference(os.path.join(raw[0], "KuaiRand-1K", "data"), [0, 1, 2, 3, 6], dense="none",
                            split_mode="contiguous")
    assert read_back_rows(out) == expected


def test_tar_gz_input_rerun_and_bad_lines(raw, tmp_path):
    tgz = tmp_path / "KuaiRand-1K.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(os.path.join(raw[0], "KuaiRand-1K"), arcname="KuaiRand-1K")
    out = str(tmp_path / "out")
    schema = kuairand.prepare(out, raw_path=str(tgz), num_shards=2)
    expected, _ = reference(os.path.join(raw[0], "KuaiRand-1K", "data"), [0, 1, 2, 3, 6])
    assert read_back_rows(out) == expected
    mtime = os.path.getmtime(os.path.join(out, "schema.json"))
    assert kuairand.prepare(out, raw_path=str(tgz), num_shards=2)["fingerprint"] == schema["fingerprint"]
    assert os.path.getmtime(os.path.join(out, "schema.json")) == mtime
    # A malformed log line is reported with file and line; --skip_bad_rows skips it.
    bad = tmp_path / "bad"
    data = bad / "data"
    data.mkdir(parents=True)
    src = os.path.join(raw[0], "KuaiRand-1K", "data")
    for n in os.listdir(src):
        lines = open(os.path.join(src, n)).read().split("\n")
        if n.startswith("log_"):
            lines[5] = lines[5].replace(",", ";", 1)
        (data / n).write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"log_standard_4_22_to_5_08_1k.csv:6: expected 19 fields separated by ','"):
        kuairand.prepare(str(tmp_path / "b"), raw_path=str(bad))
    assert not os.path.exists(tmp_path / "b")
    s = kuairand.prepare(str(tmp_path / "b"), raw_path=str(bad), skip_bad_rows=True, num_shards=1)
    assert s["skipped_bad_rows"] == 1 and s["log_lines"] == 70
