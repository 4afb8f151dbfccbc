"""Amazon recipes on tiny format-faithful fixtures written here (2018 / 2014 5-core, metadata).

Expected values are computed from the fixture tables in this file, not by the module.
"""

from __future__ import annotations

import ast
import collections
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_prep import amazon, base, common  # base: where ALLOW_EMPTY_SPLITS lives
from data_prep.common import DataError

# ----------------------------------------------------------------------------- fixtures

# 2018 5-core: category -> [(reviewerID, asin, overall)], one exact duplicate review in MI.
REVIEWS_2018 = {
    "Musical Instruments": [("U1", "A1", 5.0), ("U1", "A2", 4.0), ("U1", "A3", 2.0), ("U2", "A1", 3.0),
                            ("U2", "A4", 5.0), ("U3", "A5", 1.0), ("U3", "A6", 4.0), ("U3", "A7", 5.0),
                            ("U3", "A8", 5.0), ("U4", "A2", 4.0), ("U5", "A8", 2.0), ("U5", "A3", 5.0),
                            ("U1", "A1", 5.0)],
    "Office Products": [("U1", "B1", 4.0), ("U3", "B2", 5.0), ("U6", "B1", 3.0), ("U6", "B3", 4.0),
                        ("U7", "B4", 2.0), ("U7", "B5", 5.0), ("U7", "B6", 4.0), ("U3", "B6", 1.0)]
    + [("U9", f"B{k}", 4.0) for k in range(10, 30)],  # a 26-item pool: most users are not capped
    "Video Games": [("U8", "C1", 5.0), ("U8", "C2", 4.0), ("U2", "C3", 3.0)],  # tiny pool: U8 gets capped
}
CATS = list(REVIEWS_2018)
MLORA_RATIOS = [0.22, 0.23, 0.32]  # MLoRA's first three draws of random.seed(123); uniform(0.2, 0.5)


def _review_2018(u, a, r, t=0):
    return {"overall": r, "verified": True, "reviewTime": "09 1, 2015", "reviewerID": u, "asin": a,
            "style": {"Format:": " Paperback"}, "reviewerName": "Ann É.", "reviewText": "great, \"really\"",
            "summary": "Five Stars", "unixReviewTime": 1441065600 + t, "vote": "2"}


def _write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def write_2018(base, reviews=REVIEWS_2018):
    base.mkdir(parents=True, exist_ok=True)
    for cat, rows in reviews.items():
        _write_gz(base / f"{cat.replace(' ', '_')}_5.json.gz",
                  [json.dumps(_review_2018(u, a, r, i)) for i, (u, a, r) in enumerate(rows)])
    return str(base)


# 2014 5-core (Scenario-Wise-Rec): JSON lines with "helpful" etc.
REVIEWS_2014 = {
    "Beauty": [("V1", "P1", 5.0), ("V1", "P2", 3.0), ("V2", "P1", 4.0), ("V3", "P3", 1.0), ("V3", "P1", 4.0),
               ("V4", "P2", 2.0), ("V4", "P3", 5.0), ("V5", "P4", 4.0), ("V5", "P1", 3.0), ("V6", "P2", 5.0)],
    "Clothing Shoes and Jewelry": [("V1", "Q1", 2.0), ("V7", "Q1", 5.0), ("V7", "Q2", 4.0), ("V8", "Q3", 3.0)],
    "Health and Personal Care": [("V2", "H1", 4.0), ("V9", "H1", 1.0), ("V9", "H2", 5.0), ("V2", "H3", 5.0),
                                 ("V10", "H2", 2.0)],
}


def _review_2014(u, a, r, i):
    return {"reviewerID": u, "asin": a, "reviewerName": "J. Doe", "helpful": [0, 0], "reviewText": "ok",
            "overall": r, "summary": "ok", "unixReviewTime": 1391040000 + i, "reviewTime": "01 30, 2014"}


def write_2014(base, reviews=REVIEWS_2014, plain=("Health and Personal Care",)):
    base.mkdir(parents=True, exist_ok=True)
    for cat, rows in reviews.items():
        lines = [json.dumps(_review_2014(u, a, r, i)) for i, (u, a, r) in enumerate(rows)]
        stem = f"reviews_{cat.replace(' ', '_')}_5.json"
        if cat in plain:  # SWR reads uncompressed files
            (base / stem).write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            _write_gz(base / f"{stem}.gz", lines)
    return str(base)


# MI-DPG: Electronics reviews + metadata (2014 = Python literals, 2018 = JSON).
ELEC_REVIEWS = [("W1", "E1", 5.0), ("W1", "E2", 2.0), ("W2", "E1", 4.0), ("W2", "E3", 5.0), ("W3", "E4", 4.0),
                ("W3", "E5", 5.0), ("W4", "E6", 3.0), ("W4", "E7", 5.0), ("W5", "E2", 4.0), ("W5", "E8", 1.0),
                ("W6", "E9", 5.0)]
# asin -> 2014 "categories" (list of paths); E8 has no metadata line at all.
ELEC_META = {
    "E1": [["Electronics", "Computers & Accessories", "Cables & Accessories"]],
    "E2": [["Electronics", "Camera & Photo", "Lenses"]],
    "E3": [["Electronics", "Headphones"]],
    "E4": [["Home & Kitchen", "Kitchen"], ["Electronics", "Home Audio", "Speakers"]],  # 2nd path is Electronics
    "E5": [["Electronics", "eBook Readers & Accessories"]],  # not one of the 10 scenarios
    "E6": [["Electronics", "GPS & Navigation", "Vehicle GPS"]],
    "E7": [["Electronics", "Car & Vehicle Electronics"]],
    "E9": [["Electronics", "Television & Video", "Televisions"]],
}


def write_midpg_2014(base):
    base.mkdir(parents=True, exist_ok=True)
    _write_gz(base / "reviews_Electronics_5.json.gz",
              [json.dumps(_review_2014(u, a, r, i)) for i, (u, a, r) in enumerate(ELEC_REVIEWS)])
    lines = []
    for asin, cats in ELEC_META.items():  # repr() of a dict: single quotes, as in the 2014 dump
        lines.append(repr({"asin": asin, "title": f"Bob's {asin}", "price": 9.99, "imUrl": "http://x/y.jpg",
                           "related": {"also_bought": ["X1"]}, "salesRank": {"Electronics": 5}, "categories": cats}))
    lines.append(repr({"asin": "ZZZ", "categories": [["Electronics", "Headphones"]]}))  # never reviewed
    _write_gz(base / "meta_Electronics.json.gz", lines)
    return str(base)


def write_midpg_2018(base):
    base.mkdir(parents=True, exist_ok=True)
    _write_gz(base / "Electronics_5.json.gz",
              [json.dumps(_review_2018(u, a, r, i)) for i, (u, a, r) in enumerate(ELEC_REVIEWS)])
    lines = []
    for asin, cats in ELEC_META.items():
        path = next((p for p in cats if p[0] == "Electronics"), cats[0])
        lines.append(json.dumps({"asin": asin, "title": "t", "category": [c.replace("&", "&amp;") for c in path],
                                 "main_cat": "All Electronics", "also_buy": []}))
    _write_gz(base / "meta_Electronics.json.gz", lines)
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
                        "user": vocab["user_id"][x["user_id"][i]], "item": vocab["item_id"][x["item_id"][i]],
                        "uid": int(x["user_id"][i])})
    return schema, out


def _shards(d):
    return {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(d) for f in fs if f.endswith(".tfrecord")}


@pytest.fixture(scope="module")
def raw2018(tmp_path_factory):
    return write_2018(tmp_path_factory.mktemp("amz") / "2018")


@pytest.fixture(scope="module")
def mlora(tmp_path_factory, raw2018):
    out = tmp_path_factory.mktemp("mlora") / "out"
    schema = amazon.prepare(str(out), raw_path=raw2018, recipe="mlora6", categories=CATS)
    return schema, _records(out)[1], out


# ----------------------------------------------------------------------------- MLoRA Amazon_6


def test_ratio_draws_match_mlora_and_stay_in_range():
    assert amazon.draw_ratios(6, (0.2, 0.5), 123) == [0.22, 0.23, 0.32, 0.23, 0.47, 0.21]
    for s in range(20):
        assert all(0.2 <= r <= 0.5 for r in amazon.draw_ratios(13, (0.2, 0.5), s))
    with pytest.raises(DataError, match="neg_ratio_range"):
        amazon.draw_ratios(2, (0.5, 0.2), 0)


def test_mlora_positives_negatives_exact_counts(mlora):
    schema, recs, _ = mlora
    assert schema["domain_names"] == CATS and schema["neg_ratios"] == MLORA_RATIOS
    assert schema["duplicates_dropped"] == 1
    for k, cat in enumerate(CATS):
        pos = sorted(set(REVIEWS_2018[cat]))  # dedupe (user, item, rating)
        pool = {a for _, a, _ in pos}
        per_user = collections.Counter(u for u, _, _ in pos)
        touched = collections.defaultdict(set)
        for u, a, _ in pos:
            touched[u].add(a)
        want = {u: min(int(n / MLORA_RATIOS[k]), len(pool) - len(touched[u])) for u, n in per_user.items()}
        dom = [r for r in recs if r["domain"] == k]
        assert sum(r["label"] == 1.0 for r in dom) == len(pos)
        got = collections.Counter(r["user"] for r in dom if r["label"] == 0.0)
        assert dict(got) == {u: c for u, c in want.items() if c > 0}, cat
        # never an item the user reviewed in this domain; only the domain's items; no repeats
        negs = [(r["user"], r["item"]) for r in dom if r["label"] == 0.0]
        assert len(negs) == len(set(negs))
        assert all(i in pool and i not in touched[u] for u, i in negs)
        st = schema["negative_sampling"][cat]
        assert st["negatives"] == sum(want.values()) and st["ratio"] == MLORA_RATIOS[k]
    # U8 in Video Games: 2 reviews -> int(2 / 0.32) = 6 wanted, only 1 item left in the pool
    assert schema["negative_sampling"]["Video Games"]["users_capped_by_pool"] == 2
    # Office Products: only U9 (20 reviews -> 86 wanted, 6 left) is capped; U7 gets int(3 / 0.23) = 13
    assert schema["negative_sampling"]["Office Products"]["users_capped_by_pool"] == 1
    assert sum(r["user"] == "U7" and r["domain"] == 1 and r["label"] == 0 for r in recs) == 13


def test_mlora_global_ids_and_stratified_split(mlora):
    schema, recs, _ = mlora
    ids = collections.defaultdict(set)
    for r in recs:
        ids[r["user"]].add(r["uid"])
    assert all(len(v) == 1 for v in ids.values())  # one id per user across domains
    assert {r["domain"] for r in recs if r["user"] == "U3"} == {0, 1}
    for k in range(len(CATS)):
        for lab in (0.0, 1.0):
            n = sum(r["domain"] == k and r["label"] == lab for r in recs)
            got = [sum(r["domain"] == k and r["label"] == lab and r["split"] == s for r in recs)
                   for s in common.SPLITS]
            assert got == [round(0.6 * n), round(0.2 * n), n - round(0.6 * n) - round(0.2 * n)]


def test_mlora_reproducible_and_seed_dependent(tmp_path, raw2018, mlora):
    _, _, first = mlora
    again = tmp_path / "again"
    amazon.prepare(str(again), raw_path=raw2018, recipe="mlora6", categories=CATS)
    assert _shards(again) == _shards(first)
    other = tmp_path / "other"
    amazon.prepare(str(other), raw_path=raw2018, recipe="mlora6", categories=CATS, seed=5)
    negs = lambda recs: {(r["user"], r["item"]) for r in recs if r["label"] == 0}  # noqa: E731
    assert negs(_records(other)[1]) != negs(_records(first)[1])
    # rerun into the same directory: reused, not rewritten
    mtime = (again / common.SCHEMA_FILE).stat().st_mtime_ns
    amazon.prepare(str(again), raw_path=raw2018, recipe="mlora6", categories=CATS)
    assert (again / common.SCHEMA_FILE).stat().st_mtime_ns == mtime


def test_sample_negatives_unit():
    rng = np.random.default_rng(0)
    # a: 3 positives of 44 items -> 12 negatives (rejection path); b: 1 -> 4;
    # c: 40 positives -> wants 160, only 4 items left (permutation path, capped)
    users_all = np.array(["a"] * 3 + ["b"] + ["c"] * 40)
    items_pool = np.array(["i0", "i1", "i2", "i9"] + [f"x{k}" for k in range(40)])
    nu, ni, st = amazon.sample_negatives(users_all, items_pool, 0.25, rng)
    by = collections.defaultdict(list)
    for u, i in zip(nu, ni):
        by[u].append(i)
    assert len(by["a"]) == 12 and len(by["b"]) == 4 and len(by["c"]) == 4  # pool 44 - 40 = 4 for c
    assert not set(by["a"]) & {"i0", "i1", "i2"} and "i9" not in by["b"]
    assert set(by["c"]) == {"i0", "i1", "i2", "i9"} and st["users_capped_by_pool"] == 1
    nu2, ni2, _ = amazon.sample_negatives(users_all, items_pool, 0.25, np.random.default_rng(0))
    assert (nu2 == nu).all() and (ni2 == ni).all()
    # input order does not matter
    perm = np.random.default_rng(1).permutation(len(users_all))
    nu3, ni3, _ = amazon.sample_negatives(users_all[perm], items_pool[perm], 0.25, np.random.default_rng(0))
    assert (nu3 == nu).all() and (ni3 == ni).all()


# ----------------------------------------------------------------------------- Scenario-Wise-Rec


def test_swr3_labels_counts_and_random_split(tmp_path):
    raw = write_2014(tmp_path / "2014")
    s = amazon.prepare(str(tmp_path / "out"), raw_path=raw, recipe="swr3")
    names = ["Beauty", "Clothing Shoes and Jewelry", "Health and Personal Care"]
    assert s["domain_names"] == names
    _, recs = _records(tmp_path / "out")
    for k, cat in enumerate(names):
        want = collections.Counter((u, a, float(r > 3)) for u, a, r in REVIEWS_2014[cat])
        got = collections.Counter((r["user"], r["item"], r["label"]) for r in recs if r["domain"] == k)
        assert got == want
    n = sum(len(v) for v in REVIEWS_2014.values())
    per_split = collections.Counter(r["split"] for r in recs)
    n_tr, n_va = round(0.8 * n), round(0.1 * n)
    assert [per_split[x] for x in common.SPLITS] == [n_tr, n_va, n - n_tr - n_va]
    assert "negative_sampling" not in s and s["label_rule_text"] == "overall > 3"


# ----------------------------------------------------------------------------- MI-DPG


def test_meta_2014_lines_are_python_literals_not_json(tmp_path):
    raw = write_midpg_2014(tmp_path / "m")
    with gzip.open(os.path.join(raw, "meta_Electronics.json.gz"), "rt") as f:
        line = f.readline()
    with pytest.raises(ValueError):
        json.loads(line)
    assert ast.literal_eval(line)["asin"] == "E1"


@pytest.mark.parametrize("release", ["2014", "2018"])
def test_midpg_metadata_join_scenarios(tmp_path, release):
    raw = (write_midpg_2014 if release == "2014" else write_midpg_2018)(tmp_path / release)
    s = amazon.prepare(str(tmp_path / "out"), raw_path=raw, recipe="midpg10", release=release)
    assert s["domain_names"] == ["TV", "SS", "CG", "WT", "CA", "CP", "HA", "PV", "HP", "AS"]
    short = {"Computers & Accessories": "CA", "Camera & Photo": "CP", "Headphones": "HP", "Home Audio": "HA",
             "GPS & Navigation": "CG", "Car & Vehicle Electronics": "CG", "Television & Video": "TV"}
    level1 = {a: next(p for p in c if p[0] == "Electronics")[1] for a, c in ELEC_META.items()}
    want = collections.Counter(short[level1[a]] for _, a, _ in ELEC_REVIEWS if a in level1 and level1[a] in short)
    totals = {n: sum(s["counts"][str(k)][x]["examples"] for x in common.SPLITS)
              for k, n in enumerate(s["domain_names"])}
    assert {n: c for n, c in totals.items() if c} == dict(want)
    assert s["meta_join"]["reviews_without_metadata_category"] == 1  # E8
    assert s["meta_join"]["reviews_with_unmapped_category"] == 1  # E5 (eBook readers)
    assert s["meta_join"]["top_unmapped_categories"] == {"eBook Readers & Accessories": 1}
    _, recs = _records(tmp_path / "out")
    rating = {(u, a): r for u, a, r in ELEC_REVIEWS}
    assert all(r["label"] == float(rating[(r["user"], r["item"])] > 3) for r in recs)


def test_midpg_custom_category_map(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "ALLOW_EMPTY_SPLITS", True)  # 4 rows: the valid split comes out empty
    raw = write_midpg_2014(tmp_path / "m")
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"PC": ["Computers & Accessories"], "AV": ["Home Audio", "Headphones"]}))
    s = amazon.prepare(str(tmp_path / "out"), raw_path=raw, recipe="midpg10", category_map=str(cmap))
    assert s["domain_names"] == ["PC", "AV"]
    totals = [sum(s["counts"][str(k)][x]["examples"] for x in common.SPLITS) for k in range(2)]
    assert totals == [2, 2]  # E1 x2 ; E3 (Headphones) + E4 (Home Audio)
    with pytest.raises(DataError, match="mapped to both"):
        amazon.prepare(str(tmp_path / "bad"), raw_path=raw, recipe="midpg10",
                       category_map='{"A": ["Headphones"], "B": ["Headphones"]}')


# ----------------------------------------------------------------------------- errors / CLI


def test_errors_name_file_and_line(tmp_path):
    reviews = {"Musical Instruments": REVIEWS_2018["Musical Instruments"][:4]}
    raw = write_2018(tmp_path / "bad", reviews)
    path = os.path.join(raw, "Musical_Instruments_5.json.gz")
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    lines.insert(2, '{"reviewerID": "U9", "asin": "A9"')  # truncated object
    lines.append(json.dumps({"reviewerID": "U9", "asin": "A9"}))  # no rating
    _write_gz(path, lines)
    with pytest.raises(DataError, match=r"Musical_Instruments_5\.json\.gz:3: neither JSON nor a Python dict"):
        amazon.prepare(str(tmp_path / "o"), raw_path=raw, recipe="mlora6", categories=["Musical Instruments"])
    s = amazon.prepare(str(tmp_path / "o"), raw_path=raw, recipe="mlora6", categories=["Musical Instruments"],
                       skip_bad_rows=True)
    assert s["skipped_bad_rows"] == 2 and s["reviews_per_file"] == {"Musical Instruments": 4}
    lines[2] = json.dumps({"reviewerID": "U9", "asin": "A9", "overall": 4})
    _write_gz(path, lines)
    with pytest.raises(DataError, match=r":6: missing key 'overall'"):
        amazon.prepare(str(tmp_path / "o2"), raw_path=raw, recipe="mlora6", categories=["Musical Instruments"])
    with pytest.raises(DataError, match=r"no 2018 5-core review file Office_Products_5\.json\.gz"):
        amazon.prepare(str(tmp_path / "o3"), raw_path=raw, recipe="mlora6")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated download or not gzip"):
        amazon.prepare(str(tmp_path / "o4"), raw_path=raw, recipe="mlora6", categories=["Musical Instruments"])
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o4").exists()
    with pytest.raises(DataError, match="no metadata file meta_Electronics"):
        raw2 = write_2014(tmp_path / "x", {"Electronics": [("a", "b", 5.0)]}, plain=())
        amazon.prepare(str(tmp_path / "o5"), raw_path=raw2, recipe="midpg10")


def test_cli_help():
    proc = subprocess.run([sys.executable, "-m", "data_prep.amazon", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in proc.stderr
    for flag in ("--recipe", "--raw_path", "--output_dir", "--category_map", "--neg_ratio_range",
                 "--[no]skip_bad_rows"):
        assert flag in proc.stdout


def test_registry_entries():
    from data_prep import registry, taobao

    for name, fn, recipe in (("amazon_mlora6", amazon.prepare, "mlora6"), ("amazon_swr3", amazon.prepare, "swr3"),
                             ("amazon_midpg10", amazon.prepare, "midpg10"), ("taobao_mlora10", taobao.prepare, None)):
        got, kw = registry.get(name)
        assert got is fn and kw.get("recipe") == recipe
