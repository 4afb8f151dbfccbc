"""MovieLens preprocessing on tiny format-faithful fixtures (written here, never committed).

Fixtures: an ML-1M zip (``::``, ISO-8859-1 ``movies.dat`` with a 0xe9 byte, ``Children's``,
all 7 age codes), an ML-100k GroupLens zip (``u.data`` tab, ``u.user``/``u.item`` ``|``,
24-field latin-1 ``u.item``), the same as an extracted folder, and RecBole atomic files.
Expected values are computed here from the fixture tables, not by the module under test.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import zipfile

import pytest

from data_prep import common, movielens, writers  # writers: where write_dataset looks up _serialize_rows
from data_prep.common import DataError

# ----------------------------------------------------------------------------- fixtures

# user, gender, age code, occupation code, zip
USERS_1M = [(1, "F", 1, 10, "48067"), (2, "M", 56, 16, "70072"), (3, "M", 25, 15, "55117"),
            (4, "M", 45, 7, "02460"), (5, "M", 25, 20, "55455"), (6, "F", 50, 9, "55117"),
            (7, "M", 35, 1, "06810"), (8, "M", 18, 12, "11413")]
MOVIES_1M = [(1, "Toy Story (1995)", "Animation|Children's|Comedy"),
             (2, "Jumanji (1995)", "Adventure|Children's|Fantasy"),
             (3, "Misérables, Les (1995)", "Drama|Musical"),
             (4, "Heat (1995)", "Action|Crime|Thriller"),
             (5, "Wizard of Oz, The (1939)", "Children's|Drama|Fantasy")]
RATED_1M = {1: [1, 2, 3, 4, 5], 2: [1, 3, 5], 3: [2, 3, 4, 5], 4: [1, 2, 3, 4, 5], 5: [4, 5],
            6: [1, 2, 3, 4, 5], 7: [1, 2, 3, 5], 8: [2, 4, 5]}


def _rating(u: int, m: int) -> int:
    return (2 * u + m) % 5 + 1


RATINGS_1M = [(u, m, _rating(u, m), 978300000 + 10 * u + m) for u, ms in RATED_1M.items() for m in ms]

# user, raw age, gender, occupation, zip  (ML-100k ages are raw years)
USERS_100K = [(1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "94043"), (3, 17, "M", "student", "T8H1N"),
              (4, 18, "F", "writer", "15213"), (5, 33, "M", "educator", "55105"), (6, 42, "F", "executive", "98101"),
              (7, 47, "M", "engineer", "91344"), (8, 50, "M", "retired", "90210"), (9, 60, "F", "homemaker", "06355"),
              (10, 25, "M", "programmer", "02139")]
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
ITEMS_100K = [(1, "Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
              (2, "GoldenEye (1995)", ["Action", "Adventure", "Thriller"]),
              (3, "Misérables, Les (1995)", ["Drama", "Musical"]),
              (4, "unknown", []),
              (5, "Wizard of Oz, The (1939)", ["Children's", "Drama", "Fantasy"]),
              (6, "Unforgiven (1992)", ["Western"])]
RATED_100K = {1: [1, 2, 3, 6], 2: [1, 4], 3: [2, 3, 5], 4: [1, 2, 3, 4, 5, 6], 5: [5, 6], 6: [1, 3],
              7: [2, 4, 6], 8: [1, 5], 9: [3, 4, 5], 10: [1, 2, 6]}
RATINGS_100K = [(u, i, _rating(u, i), 881250000 + 10 * u + i) for u, items in RATED_100K.items() for i in items]

AGE_CODES = (1, 18, 25, 35, 45, 50, 56)


def _code_100k(age: int) -> int:
    code = 1
    for t in (18, 25, 35, 45, 50, 56):
        if age >= t:
            code = t
    return code


def write_ml1m(path, *, ratings=None, drop=None, extra_rating_lines=()):
    """ML-1M zip with ml-1m/{ratings,users,movies}.dat and README."""
    ratings = RATINGS_1M if ratings is None else ratings
    files = {
        "ratings.dat": "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in ratings) + "".join(extra_rating_lines),
        "users.dat": "".join(f"{u}::{g}::{a}::{o}::{z}\n" for u, g, a, o, z in USERS_1M),
        "movies.dat": "".join(f"{m}::{t}::{g}\n" for m, t, g in MOVIES_1M),
        "README": "SUMMARY\n(fixture written by tests; not MovieLens data)\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            if name != drop:
                z.writestr(f"ml-1m/{name}", text.encode("latin-1"))
    return str(path)


def _item_line(i, title, genres):
    flags = "|".join("1" if g in genres else "0" for g in GENRES)
    return f"{i}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?{i}|{flags}\n"


def ml100k_files():
    return {
        "u.data": "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS_100K),
        "u.user": "".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in USERS_100K),
        "u.item": "".join(_item_line(*it) for it in ITEMS_100K),
        "u.genre": "".join(f"{g}|{k}\n" for k, g in enumerate(GENRES)),
    }


def write_ml100k_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in ml100k_files().items():
            z.writestr(f"ml-100k/{name}", text.encode("latin-1"))
    return str(path)


def write_ml100k_dir(base):
    d = base / "ml-100k"
    d.mkdir(parents=True)
    for name, text in ml100k_files().items():
        (d / name).write_bytes(text.encode("latin-1"))
    return str(base)


def write_recbole(base):
    d = base / "ml-100k"
    d.mkdir(parents=True)
    (d / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS_100K), encoding="utf-8")
    (d / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        + "".join(f"{u}\t{a}\t{g}\t{o}\t{z}\n" for u, a, g, o, z in USERS_100K), encoding="utf-8")
    (d / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i}\t{t.rsplit(' (', 1)[0]}\t1995\t{' '.join(g)}\n" for i, t, g in ITEMS_100K), encoding="utf-8")
    return str(d)


@pytest.fixture(scope="module")
def ml1m_zip(tmp_path_factory):
    return write_ml1m(tmp_path_factory.mktemp("raw1m") / "ml-1m.zip")


@pytest.fixture(scope="module")
def ml100k_zip(tmp_path_factory):
    return write_ml100k_zip(tmp_path_factory.mktemp("raw100k") / "ml-100k.zip")


def _prep(out, raw, **kw):
    kw.setdefault("verify", False)
    return movielens.prepare(str(out), raw_path=raw, **kw)


def _domain_totals(schema):
    return [sum(schema["counts"][str(d)][s]["examples"] for s in common.SPLITS) for d in range(schema["num_domains"])]


def _expected_1m(scheme):
    """(domain names, ratings per domain) computed from the fixture tables."""
    user = {u: (g, a, o) for u, g, a, o, _ in USERS_1M}
    if scheme == "age3":
        key = {1: "<25", 18: "<25", 25: "25-34", 35: "35+", 45: "35+", 50: "35+", 56: "35+"}
        raw = [key[user[u][1]] for u, *_ in RATINGS_1M]
        names = ["<25", "25-34", "35+"]
    elif scheme == "gender":
        raw = [user[u][0] for u, *_ in RATINGS_1M]
        names = ["F", "M"]
    elif scheme == "age7":
        raw = [str(user[u][1]) for u, *_ in RATINGS_1M]
        names = [str(a) for a in AGE_CODES]
    else:
        raw = [str(user[u][2]) for u, *_ in RATINGS_1M]
        names = [str(o) for o in sorted({o for _, _, _, o, _ in USERS_1M})]
    c = collections.Counter(raw)
    return names, [c[n] for n in names]


def _records(schema_dir):
    """All examples of a prepared dataset as dicts of raw values (via vocab files)."""
    from mdr_tf.data import load_arrays
    from mdr_tf.schema import Schema

    schema = Schema.load(schema_dir)
    vocab = {}
    for f in schema.categorical:
        with open(os.path.join(schema_dir, "vocab", f"{f.name}.txt"), encoding="utf-8") as fh:
            vocab[f.name] = fh.read().split("\n")[:-1]
        assert len(vocab[f.name]) == f.vocab_size and vocab[f.name][0] == "<OOV>"
    out = []
    for split in common.SPLITS:
        x, y = load_arrays(schema, split)
        for i in range(len(y)):
            rec = {"split": split, "label": float(y[i]), "domain": int(x["domain_id"][i])}
            for f in schema.features:
                v = x[f.name][i]
                rec[f.name] = vocab[f.name][int(v)] if f.kind == "categorical" else float(v)
            out.append(rec)
    return schema, out


# ----------------------------------------------------------------------------- ML-1M


def test_fixture_covers_the_format():
    assert {r for _, _, r, _ in RATINGS_1M} == {1, 2, 3, 4, 5}
    assert {r for _, _, r, _ in RATINGS_100K} == {1, 2, 3, 4, 5}
    assert {a for _, _, a, _, _ in USERS_1M} == set(AGE_CODES)
    assert "Misérables".encode("latin-1")[3] == 0xE9


@pytest.mark.parametrize("scheme", ["age3", "gender", "age7", "occupation"])
def test_ml1m_domain_counts_per_scheme(tmp_path, ml1m_zip, scheme):
    schema = _prep(tmp_path / scheme, ml1m_zip, version="1m", domain_scheme=scheme)
    names, counts = _expected_1m(scheme)
    assert schema["domain_names"] == names
    assert schema["num_domains"] == len(names)
    assert sorted(schema["counts"]) == [str(d) for d in range(len(names))]  # contiguous 0..K-1
    assert _domain_totals(schema) == counts
    assert schema["num_examples"] == len(RATINGS_1M) == 31
    if scheme == "age3":
        assert counts == [8, 6, 17]
    if scheme == "age7":
        assert len(names) == 7 and counts == [5, 3, 6, 4, 5, 5, 3]


@pytest.mark.parametrize("rule", ["gt3", "eq5"])
def test_ml1m_tfrecord_round_trip_labels_and_features(tmp_path, ml1m_zip, rule):
    out = tmp_path / rule
    _prep(out, ml1m_zip, version="1m", domain_scheme="gender", label_rule=rule)
    schema, recs = _records(str(out))
    assert schema.num_domains == 2 and schema.domain_names == ("F", "M")
    assert schema.feature("gender").group == "domain" and schema.feature("user_id").is_id
    users = {u: (g, a, o, z) for u, g, a, o, z in USERS_1M}
    genre = {m: g.split("|")[0] for m, _, g in MOVIES_1M}
    want = collections.Counter()
    for u, m, r, _ in RATINGS_1M:
        g, a, o, z = users[u]
        label = float(r > 3) if rule == "gt3" else float(r == 5)
        want[(str(u), str(m), label, g, str(o), z, genre[m], round((a - 1) / 55, 5), int(g == "M"))] += 1
    got = collections.Counter((r["user_id"], r["item_id"], r["label"], r["gender"], r["occupation"], r["zip"],
                               r["genre"], round(r["age"], 5), r["domain"]) for r in recs)
    assert got == want
    assert "Children's" in {r["genre"] for r in recs}  # first genre of "Children's|Drama|Fantasy"
    n_pos = sum(_rating(u, m) > 3 if rule == "gt3" else _rating(u, m) == 5 for u, m, _, _ in RATINGS_1M)
    assert schema.raw["positive_rate"] == pytest.approx(n_pos / len(RATINGS_1M))
    assert schema.raw["label_rule_text"] == {"gt3": "rating > 3", "eq5": "rating == 5"}[rule]


def test_ml1m_extracted_folder_equals_zip(tmp_path, ml1m_zip):
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(ml1m_zip) as z:
        z.extractall(folder)
    a = _prep(tmp_path / "a", ml1m_zip, version="1m")
    b = _prep(tmp_path / "b", str(folder), version="1m")
    assert a["fingerprint"] == b["fingerprint"] and a["counts"] == b["counts"]


def test_stratified_split_proportions(tmp_path, ml1m_zip):
    # 3 copies of the ratings (distinct timestamps) so each (domain, label) stratum is larger.
    many = [(u, m, r, t + k) for k in range(3) for u, m, r, t in RATINGS_1M]
    raw = write_ml1m(tmp_path / "many.zip", ratings=many)
    schema = _prep(tmp_path / "out", raw, version="1m", domain_scheme="gender", label_rule="gt3",
                   split_mode="stratified", split_ratios=(0.6, 0.2, 0.2), seed=123)
    gender = {u: g for u, g, *_ in USERS_1M}
    strata = collections.Counter((gender[u], r > 3) for u, _, r, _ in many)
    for d, g in enumerate(["F", "M"]):
        c = schema["counts"][str(d)]
        for lab in (True, False):
            n = strata[(g, lab)]
            got = [c[s]["positives"] if lab else c[s]["examples"] - c[s]["positives"] for s in common.SPLITS]
            assert got == [round(0.6 * n), round(0.2 * n), n - round(0.6 * n) - round(0.2 * n)], (g, lab, n)


def test_same_seed_same_output_and_reuse(tmp_path, ml1m_zip):
    def shard_bytes(d):
        return {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
                for r, _, fs in os.walk(d) for f in fs if f.endswith(".tfrecord")}

    a = _prep(tmp_path / "a", ml1m_zip, version="1m", seed=7)
    b = _prep(tmp_path / "b", ml1m_zip, version="1m", seed=7)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    assert a["fingerprint"] == b["fingerprint"]
    c = _prep(tmp_path / "c", ml1m_zip, version="1m", seed=8)
    assert c["fingerprint"] != a["fingerprint"] and shard_bytes(tmp_path / "c") != shard_bytes(tmp_path / "a")
    # Rerun with the same inputs/options: the finished directory is reused, nothing rewritten.
    schema_file = tmp_path / "a" / common.SCHEMA_FILE
    before = schema_file.stat().st_mtime_ns
    again = _prep(tmp_path / "a", ml1m_zip, version="1m", seed=7)
    assert again == a and schema_file.stat().st_mtime_ns == before


def test_verify_counts_fails_clearly_via_cli(tmp_path, ml1m_zip):
    with pytest.raises(DataError, match=r"MovieLens-1m has .*'ratings': 1000209.*--noverify_counts"):
        movielens.prepare(str(tmp_path / "x"), version="1m", raw_path=ml1m_zip)
    proc = subprocess.run([sys.executable, "-m", "data_prep.movielens", "--version=1m", f"--raw_path={ml1m_zip}",
                           f"--output_dir={tmp_path / 'cli'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "error:" in proc.stderr and "not the official release" in proc.stderr
    assert not (tmp_path / "cli").exists()


def test_cli_help_lists_flags():
    proc = subprocess.run([sys.executable, "-m", "data_prep.movielens", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr  # absl's --help exits with 1
    for flag in ("--raw_path", "--output_dir", "--domain_scheme", "--label_rule", "--source", "--[no]skip_bad_rows",
                 "--[no]verify_counts"):
        assert flag in proc.stdout


def test_malformed_rows_name_file_and_line(tmp_path):
    raw = write_ml1m(tmp_path / "bad.zip", extra_rating_lines=["1::2::x::978300000\n", "7::4\n"])
    with pytest.raises(DataError, match=r"ml-1m/ratings\.dat:32: field 'rating' = 'x'"):
        _prep(tmp_path / "o", raw, version="1m")
    schema = _prep(tmp_path / "o", raw, version="1m", skip_bad_rows=True)
    assert schema["skipped_bad_rows"] == 2 and schema["num_examples"] == len(RATINGS_1M)


def test_bad_value_and_orphan_rating(tmp_path):
    raw = write_ml1m(tmp_path / "half.zip", extra_rating_lines=["1::3::3.5::978300000\n"])
    with pytest.raises(DataError, match=r"ratings\.dat:32: .*rating in 1\.\.5"):
        _prep(tmp_path / "o", raw, version="1m")
    raw = write_ml1m(tmp_path / "orphan.zip", extra_rating_lines=["99::3::3::978300000\n"])
    with pytest.raises(DataError, match=r"ratings\.dat:32: user 99 is not in .*users\.dat"):
        _prep(tmp_path / "o", raw, version="1m")
    schema = _prep(tmp_path / "o", raw, version="1m", skip_bad_rows=True)
    assert schema["dropped_orphan_ratings"] == 1 and schema["num_examples"] == len(RATINGS_1M)


def test_unknown_feature_and_missing_files(tmp_path, ml1m_zip):
    with pytest.raises(DataError, match=r"unknown feature\(s\) \['title'\]"):
        _prep(tmp_path / "o", ml1m_zip, version="1m", features=("user_id", "title"))
    with pytest.raises(DataError, match=r"no file 'movies\.dat'"):
        _prep(tmp_path / "o", write_ml1m(tmp_path / "nomovies.zip", drop="movies.dat"), version="1m")
    with pytest.raises(DataError, match="no such file or directory"):
        _prep(tmp_path / "o", str(tmp_path / "nowhere.zip"), version="1m")
    assert not (tmp_path / "o").exists()


def test_failure_leaves_no_half_written_output(tmp_path, ml1m_zip, monkeypatch):
    real = common._serialize_rows

    def failing(*args):
        for i, rec in enumerate(real(*args)):
            if i == 3:
                raise OSError("disk full (simulated)")
            yield rec

    monkeypatch.setattr(writers, "_serialize_rows", failing)
    with pytest.raises(OSError, match="simulated"):
        _prep(tmp_path / "out", ml1m_zip, version="1m")
    assert os.listdir(tmp_path) == []  # neither the output nor a temp sibling is left behind
    monkeypatch.setattr(writers, "_serialize_rows", real)
    good = _prep(tmp_path / "out", ml1m_zip, version="1m")
    monkeypatch.setattr(writers, "_serialize_rows", failing)
    with pytest.raises(OSError):
        _prep(tmp_path / "out", ml1m_zip, version="1m", seed=1)  # different fingerprint -> rewrite fails
    # The previous complete output is untouched.
    assert json.loads((tmp_path / "out" / common.SCHEMA_FILE).read_text())["fingerprint"] == good["fingerprint"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


# ----------------------------------------------------------------------------- ML-100k


def test_ml100k_zip_folder_and_recbole_agree(tmp_path, ml100k_zip):
    a = _prep(tmp_path / "zip", ml100k_zip, version="100k", domain_scheme="age7")
    b = _prep(tmp_path / "dir", write_ml100k_dir(tmp_path / "folder"), version="100k", domain_scheme="age7")
    c = _prep(tmp_path / "rb", write_recbole(tmp_path / "recbole"), version="100k", domain_scheme="age7")
    age = {u: _code_100k(a_) for u, a_, *_ in USERS_100K}
    cnt = collections.Counter(age[u] for u, *_ in RATINGS_100K)
    assert a["domain_names"] == [str(x) for x in AGE_CODES]
    assert _domain_totals(a) == [cnt[x] for x in AGE_CODES] == [3, 10, 5, 2, 3, 4, 3]
    assert a["counts"] == b["counts"] == c["counts"]
    _, ra = _records(str(tmp_path / "zip"))
    _, rc = _records(str(tmp_path / "rb"))
    key = lambda r: (r["user_id"], r["item_id"])  # noqa: E731
    assert sorted(ra, key=key) == sorted(rc, key=key)
    first = {i: (g[0] if g else "unknown") for i, _, g in ITEMS_100K}
    assert {(r["item_id"], r["genre"]) for r in ra} == {(str(i), first[i]) for _, i, _, _ in RATINGS_100K}
    # raw ages are the dense feature for 100k: min-max over the rated rows
    ages = [dict((u, a_) for u, a_, *_ in USERS_100K)[u] for u, *_ in RATINGS_100K]
    lo, hi = min(ages), max(ages)
    got = {(r["user_id"], round(r["age"], 5)) for r in ra}
    assert got == {(str(u), round((dict((x, y) for x, y, *_ in USERS_100K)[u] - lo) / (hi - lo), 5))
                   for u, *_ in RATINGS_100K}


def test_ml100k_age3_gender_occupation_counts(tmp_path, ml100k_zip):
    users = {u: (a, g, o) for u, a, g, o, _ in USERS_100K}
    for scheme in ("age3", "gender", "occupation"):
        s = _prep(tmp_path / scheme, ml100k_zip, version="100k", domain_scheme=scheme)
        if scheme == "age3":
            grp = lambda u: "<25" if users[u][0] < 25 else ("25-34" if users[u][0] < 35 else "35+")  # noqa: E731
            names = ["<25", "25-34", "35+"]
        elif scheme == "gender":
            grp, names = (lambda u: users[u][1]), ["F", "M"]
        else:
            grp, names = (lambda u: users[u][2]), sorted({o for *_, o, _ in USERS_100K})
        c = collections.Counter(grp(u) for u, *_ in RATINGS_100K)
        assert s["domain_names"] == names and _domain_totals(s) == [c[n] for n in names], scheme


def test_ml100k_latin1_title_and_bad_item_line(tmp_path):
    files = ml100k_files()
    files["u.item"] += "7|Short line|01-Jan-1995\n"
    raw = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(raw, "w") as z:
        for name, text in files.items():
            z.writestr(f"ml-100k/{name}", text.encode("latin-1"))
    with pytest.raises(DataError, match=r"ml-100k/u\.item:7: expected 24 fields"):
        _prep(tmp_path / "o", str(raw), version="100k")
    s = _prep(tmp_path / "o", str(raw), version="100k", skip_bad_rows=True)
    assert s["skipped_bad_rows"] == 1


# ----------------------------------------------------------------------------- tfds source


def _fake_checksum(monkeypatch, version, zip_path):
    """Registers the fixture zip's size/sha256 for the GroupLens URL (datasets.md §3)."""
    from tensorflow_datasets.core.download import checksums

    url = f"https://files.grouplens.org/datasets/movielens/{movielens.TFDS_FILES[version]}"
    info = checksums.UrlInfo(size=os.path.getsize(zip_path), checksum=common.sha256_of_file(zip_path),
                             filename=movielens.TFDS_FILES[version])
    # tfds memoizes its global registry dict (and DownloadManager mutates it), so patch the
    # entry in place; monkeypatch restores the genuine checksum afterwards.
    monkeypatch.setitem(checksums.get_all_url_infos(), url, info)


def test_tfds_source_matches_raw_reader(tmp_path, ml1m_zip, monkeypatch):
    _fake_checksum(monkeypatch, "1m", ml1m_zip)
    for scheme, rule in (("occupation", "eq5"), ("age3", "gt3")):
        raw = _prep(tmp_path / f"raw_{scheme}", ml1m_zip, version="1m", domain_scheme=scheme, label_rule=rule)
        tf_ = _prep(tmp_path / f"tfds_{scheme}", ml1m_zip, version="1m", domain_scheme=scheme, label_rule=rule,
                    source="tfds", tfds_data_dir=str(tmp_path / "tfds"))
        assert tf_["tfds"]["builder"] == "movielens/1m-ratings"
        assert tf_["domain_names"] == raw["domain_names"] and tf_["counts"] == raw["counts"]
        _, a = _records(str(tmp_path / f"raw_{scheme}"))
        _, b = _records(str(tmp_path / f"tfds_{scheme}"))
        assert a == b  # same records in the same order, hence the same split


def test_tfds_source_100k(tmp_path, ml100k_zip, monkeypatch):
    _fake_checksum(monkeypatch, "100k", ml100k_zip)
    raw = _prep(tmp_path / "raw", ml100k_zip, version="100k", domain_scheme="occupation")
    tf_ = _prep(tmp_path / "tfds", ml100k_zip, version="100k", domain_scheme="occupation", source="tfds",
                tfds_data_dir=str(tmp_path / "tfds_data"))
    assert tf_["counts"] == raw["counts"]
    assert _records(str(tmp_path / "raw"))[1] == _records(str(tmp_path / "tfds"))[1]


def test_tfds_rejects_rezipped_archive_on_real_registry(tmp_path, ml1m_zip):
    with pytest.raises(DataError, match=r"does not match the GroupLens ml-1m\.zip registered in tensorflow-datasets.*"
                       r"Expected: UrlInfo\(size=5\.64 MiB"):
        _prep(tmp_path / "o", ml1m_zip, version="1m", source="tfds", tfds_data_dir=str(tmp_path / "tfds"))
    assert not (tmp_path / "o").exists()
    with pytest.raises(DataError, match="needs --raw_path"):
        movielens.prepare(str(tmp_path / "o"), version="100k", source="tfds")


# ----------------------------------------------------------------------------- real data


def test_real_ml100k_from_recbole_wheel(ml100k_dir):
    with open(os.path.join(ml100k_dir, common.SCHEMA_FILE)) as f:
        s = json.load(f)
    assert s["num_examples"] == 100_000
    assert s["source_counts"] == {"ratings": 100_000, "users": 943, "items": 1_682}
    assert s["domain_names"] == ["<25", "25-34", "35+"]
    assert _domain_totals(s) == [26_551, 35_444, 38_005]
    assert s["positive_rate"] == pytest.approx(0.5538, abs=5e-5)
    feats = {f["name"]: f for f in s["features"]}
    assert feats["user_id"]["vocab_size"] == 944 and feats["item_id"]["vocab_size"] == 1683


@pytest.mark.parametrize("name,k", [("ml1m_mlora_age7", 7), ("ml1m_mlora_occupation", 8)])
def test_registry_mlora_presets(tmp_path, ml1m_zip, name, k):
    from data_prep import registry

    fn, kw = registry.get(name)
    s = fn(str(tmp_path / name), raw_path=ml1m_zip, verify=False, **kw)
    assert s["num_domains"] == k and [f["name"] for f in s["features"]] == ["user_id", "item_id"]
    assert s["options"]["label_rule"] == "eq5" and s["options"]["split_mode"] == "stratified"
    assert s["positive_rate"] == pytest.approx(sum(r == 5 for *_, r, _ in RATINGS_1M) / len(RATINGS_1M))
