"""IJCAI-18 (IAAC) preprocessing on a tiny format-faithful training file written here.

Expected outputs come from a plain-Python reference of the recipe (split on spaces,
day split, first instance_id wins, train-day vocabularies) and are compared with the
TFRecords read back through ``mdr_tf`` and decoded with the vocab files.
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter

import numpy as np
import pytest

from data_prep import ijcai18
from data_prep.common import DataError
from tests.helpers import read_back_rows

FILE = "round1_ijcai_18_train_20180301.txt"
DAY0 = 1537200000  # 2018-09-18 00:00 Beijing time = 2018-09-17 16:00 UTC


def make_rows(n: int = 42, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n):
        day = r % 3  # 3 days: train, valid, test
        cat1 = ["8277336076276184272", "5755694407684602296", "509660095530134768"][(r // 3) % 3]
        cats = f"7908382889764677758;{cat1}" + (";2011981573061447208" if r % 5 == 0 else "")
        props = ";".join(str(1000 + (r * 7 + k) % 13) for k in range(2 + r % 4))
        pred = f"{cat1}:{1000 + r % 13},{1001 + r % 13};7908382889764677758:-1" if r % 6 else "-1"
        rows.append({
            "instance_id": str(10 ** 17 + r), "item_id": str(3000 + r % 6), "item_category_list": cats,
            "item_property_list": props, "item_brand_id": str(-1 if r % 7 == 0 else 400 + (r // 3) % 3),
            "item_city_id": str(500 + r % 4), "item_price_level": str(r % 5),
            "item_sales_level": str(-1 if r == 4 else r % 8),
            "item_collected_level": str(r % 9), "item_pv_level": str(10 + r % 5), "user_id": str(7000 + r % 10),
            "user_gender_id": str([-1, 0, 1, 2][r % 4]), "user_age_level": str(1000 + r % 7),
            "user_occupation_id": str(2002 + r % 4), "user_star_level": str(3000 + r % 6),
            "context_id": str(9000 + r), "context_timestamp": str(DAY0 + day * 86400 + (r * 997) % 86400),
            "context_page_id": str(4001 + r % 5), "predict_category_property": pred,
            "shop_id": str(6000 + r % 4), "shop_review_num_level": str(r % 20), "shop_review_positive_rate": (
                "-1" if r == 10 else f"{0.9 + rng.random() / 10:.6f}"),
            "shop_star_level": str(5000 + r % 3), "shop_score_service": f"{0.9 + rng.random() / 10:.6f}",
            "shop_score_delivery": f"{0.9 + rng.random() / 10:.6f}", "shop_score_description": f"{rng.random():.6f}",
            "is_trade": str(int(rng.random() < 0.3)),
        })
    rows.append(dict(rows[8]))  # a repeated instance_id (exact duplicate): dropped
    return rows


def write_file(path: str, rows: list[dict], columns=ijcai18.COLUMNS) -> None:
    with open(path, "w") as f:
        f.write(" ".join(columns) + "\n")
        for r in rows:
            f.write(" ".join(r[c] for c in columns) + "\n")


def reference(rows: list[dict], features, domain_field="user_gender_id") -> dict:
    def feat(r, f):
        if f in r:
            return r[f]
        if f == "context_hour":
            return str(((int(r["context_timestamp"]) + 8 * 3600) % 86400) // 3600)
        if f.startswith("item_category_") and f[-1].isdigit():
            items = r["item_category_list"].split(";")
            return items[int(f[-1])] if int(f[-1]) < len(items) else ""
        if f.startswith("item_property_"):
            items = r["item_property_list"].split(";")
            k = int(f.rsplit("_", 1)[1])
            return items[k] if k < len(items) else ""
        if f.startswith("predict_category_"):
            items = r["predict_category_property"].split(";")
            k = int(f.rsplit("_", 1)[1])
            return items[k].split(":")[0] if k < len(items) else ""
        return r[f]

    day = [(int(r["context_timestamp"]) + 8 * 3600) // 86400 for r in rows]
    days = sorted(set(day))
    split = {d: ["train"] * (len(days) - 2) + ["valid", "test"] for d in [0]}[0]
    split_of = dict(zip(days, split))
    train = [r for r, d in zip(rows, day) if split_of[d] == "train"]
    counts = {f: Counter(feat(r, f) for r in train) for f in features}
    lo = {c: min(float(r[c]) for r in train if r[c] != "-1") for c in ijcai18.DENSE}  # -1 = missing
    hi = {c: max(float(r[c]) for r in train if r[c] != "-1") for c in ijcai18.DENSE}
    doms = sorted({r[domain_field] for r in rows}, key=int)
    seen, out = set(), {}
    for r, d in zip(rows, day):
        if r["instance_id"] in seen:
            continue
        seen.add(r["instance_id"])
        vals = []
        for f in features:
            v = feat(r, f)
            missing = v == "" or (v == "-1" and f != domain_field)
            vals.append("<OOV>" if missing or counts[f][v] < 1 else v)
        dense = [-1.0 if r[c] == "-1" else float(np.float32((float(r[c]) - lo[c]) / (hi[c] - lo[c])))
                 for c in ijcai18.DENSE]
        out.setdefault((doms.index(r[domain_field]), split_of[d]), []).append(
            tuple(vals) + tuple(dense) + (int(r["is_trade"]),))
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("ijcai_raw")
    rows = make_rows()
    write_file(str(d / FILE), rows)
    return str(d), rows


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ijcai_out") / "gender")
    return out, ijcai18.prepare(out, raw_path=raw[0], num_shards=2)


def test_matches_reference(raw, prepared):
    out, schema = prepared
    features = list(ijcai18.MMLREC_FEATURES) + ["user_gender_id"]
    assert [f["name"] for f in schema["features"]] == features + list(ijcai18.DENSE)
    expected = reference(raw[1], features)
    assert read_back_rows(out) == expected
    # 4 scenarios = user_gender_id -1/0/1/2 (MMLRec), sorted; exact per-domain counts.
    assert schema["domain_names"] == ["user_gender_id=-1", "user_gender_id=0", "user_gender_id=1",
                                      "user_gender_id=2"]
    for (d, split), rows in expected.items():
        c = schema["counts"][str(d)][split]
        assert (c["examples"], c["positives"]) == (len(rows), sum(r[-1] for r in rows))
    # Day split: 3 days -> train / valid / test, 14 rows a day, one duplicate dropped.
    assert list(schema["day_splits"].values()) == ["train", "valid", "test"]
    assert schema["duplicate_instance_rows"] == 1
    per_split = {s: sum(schema["counts"][str(d)][s]["examples"] for d in range(4)) for s in ("train", "valid", "test")}
    assert per_split == {"train": 14, "valid": 14, "test": 14}
    assert schema["label_keys"] == ["is_trade"] and schema["task"] == "cvr"


def test_missing_values_and_nested_fields(raw, tmp_path):
    out = str(tmp_path / "split")
    schema = ijcai18.prepare(out, raw_path=raw[0], list_mode="split", max_list_items=2, num_shards=1)
    names = [f["name"] for f in schema["features"]]
    assert "item_category_1" in names and "item_property_1" in names and "predict_category_0" in names
    assert "item_category_list" not in names
    got = read_back_rows(out)
    features = [f for f in names if f not in ijcai18.DENSE]
    assert got == reference(raw[1], features)
    rows = [r for v in got.values() for r in v]
    col = {f: i for i, f in enumerate(features)}
    # -1 brand (r % 7 == 0) -> id 0; "-1" predictions (r % 6 == 0) -> 0.
    assert sum(r[col["item_brand_id"]] == "<OOV>" for r in rows) == sum(1 for r in range(42) if r % 7 == 0)
    assert sum(r[col["predict_category_0"]] == "<OOV>" for r in rows) == sum(1 for r in range(42) if r % 6 == 0)
    # Third category level only for r % 5 == 0; absent -> 0.
    assert sum(r[col["item_category_2"]] != "<OOV>" for r in rows) == sum(1 for r in range(42) if r % 5 == 0)
    # predict_category_1 is the second predicted category, cut at ':'.
    assert {r[col["predict_category_1"]] for r in rows} <= {"7908382889764677758", "<OOV>"}


def test_other_scenario_field_and_top_k(raw, tmp_path):
    schema = ijcai18.prepare(str(tmp_path / "cat"), raw_path=raw[0], domain_field="item_category_1",
                             top_k_domains=2, num_shards=1)
    assert schema["num_domains"] == 2
    # category_1 = (r // 3) % 3: 15 / 15 / 12 rows, 5 / 5 / 4 on the train day. The two most
    # frequent on train days are kept; the third (12 rows + the duplicate of r = 8) is dropped.
    assert schema["num_examples"] == 30
    assert schema["rows_outside_domains"] == 13


def test_zip_input_and_rerun_reuses(raw, prepared, tmp_path):
    z = tmp_path / "round1_ijcai_18_train_20180301.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(os.path.join(raw[0], FILE), arcname=FILE)
    out = str(tmp_path / "out")
    schema = ijcai18.prepare(out, raw_path=str(z), num_shards=2)
    assert read_back_rows(out) == read_back_rows(prepared[0])
    mtime = os.path.getmtime(os.path.join(out, "schema.json"))
    again = ijcai18.prepare(out, raw_path=str(z), num_shards=2)
    assert again["fingerprint"] == schema["fingerprint"]
    assert os.path.getmtime(os.path.join(out, "schema.json")) == mtime


def test_malformed_lines(raw, tmp_path):
    rows = make_rows()
    path = tmp_path / FILE
    write_file(str(path), rows)
    lines = path.read_text().split("\n")
    lines[6] = lines[6].replace(" 1537", " x1537", 1)  # line 7: bad timestamp
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=rf"{FILE}:7: context_timestamp is not an integer"):
        ijcai18.prepare(str(tmp_path / "out"), raw_path=str(path))
    lines[6] = " ".join(lines[6].split(" ")[:-1])  # 26 fields
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=rf"{FILE}:7: expected 27 fields separated by ' ', found 26"):
        ijcai18.prepare(str(tmp_path / "out"), raw_path=str(path))
    assert not os.path.exists(tmp_path / "out")
    schema = ijcai18.prepare(str(tmp_path / "out"), raw_path=str(path), skip_bad_rows=True, num_shards=1)
    assert schema["skipped_bad_rows"] == 1 and schema["num_examples"] == 41
    # A test file (no is_trade column) is refused with a hint.
    test = tmp_path / "t" / FILE
    test.parent.mkdir()
    write_file(str(test), rows, columns=ijcai18.COLUMNS[:-1])
    with pytest.raises(DataError, match="header lacks columns \\['is_trade'\\] \\(a test file"):
        ijcai18.prepare(str(tmp_path / "out2"), raw_path=str(test.parent))
