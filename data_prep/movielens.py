"""MovieLens-100k / MovieLens-1M -> TFRecords split by scenario.

Inputs (``--source``):
  raw   (default) a GroupLens ``ml-100k.zip`` / ``ml-1m.zip``, their extracted folders, or
        RecBole atomic files; for ML-100k with no path, the exact copy inside the
        ``recbole==1.2.1`` wheel from PyPI (downloaded once with ``pip download --no-deps``
        into a cache and read as a zip).
  tfds  the GroupLens zip parsed by tensorflow-datasets' ``movielens/{1m,100k}-ratings``
        builder from ``manual_dir``: tfds checks the archive's size and sha256 against its
        registered checksum, so only the genuine GroupLens file is accepted. The tfds
        fields are mapped back to the raw columns (gender bool -> M/F, bucketized age ->
        age code, occupation text -> ML-1M code, first genre, ...), so both sources give
        the same records in the same (file) order and hence the same output.

Domain schemes (``--domain_scheme``):
  age3        HAMUR / Scenario-Wise-Rec: {<18, 18-24} / 25-34 / 35+ (ML-1M age codes
              {1,18} / {25} / {35,45,50,56}; ML-100k raw ages bucketed the same way).
  gender      F / M (MLoRA's ML-1M "gender" recipe).
  age7        the seven ML-1M age codes (ML-100k ages bucketed with the same thresholds).
  occupation  the 21 occupations.
Domain ids are always contiguous 0..K-1 (sorted raw values).

Label rules (``--label_rule``): ``gt3`` (rating > 3, HAMUR; default) or ``eq5``
(rating == 5, MLoRA).

Example:
  python -m data_prep.movielens --version=100k --output_dir=data/ml100k_age3
  python -m data_prep.movielens --version=1m --source=tfds --raw_path=ml-1m.zip \
      --domain_scheme=gender --label_rule=eq5 --output_dir=data/ml1m_gender
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from typing import Sequence

import numpy as np
import pandas as pd
from absl import flags

from data_prep.common import (check_split_ratios, DataError, FeatureDef, encode_categorical, existing_output,
                              fingerprint, log, random_split, remap_domains, sha256_of_bytes, sha256_of_file,
                              stratified_split, write_dataset, run_cli)
from data_prep.sources import DEFAULT_CACHE, RawSource, fetch_recbole_wheel, parse_lines

EXPECTED = {
    "100k": {"ratings": 100_000, "users": 943, "items": 1_682},
    "1m": {"ratings": 1_000_209, "users": 6_040, "items": 3_706},  # 3,706 rated movies
}
GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western"]
AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
# ML-1M occupation codes 0..20 (the ML-1M README's list); tfds exposes the text.
OCCUPATIONS_1M = ("other/not specified", "academic/educator", "artist", "clerical/admin", "college/grad student",
                  "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                  "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
                  "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
SOURCES = ("raw", "tfds")
TFDS_FILES = {"100k": "ml-100k.zip", "1m": "ml-1m.zip"}
DOMAIN_SCHEMES = ("age3", "gender", "age7", "occupation")
LABEL_RULES = ("gt3", "eq5")
ALL_FEATURES = ("user_id", "item_id", "gender", "age", "occupation", "zip", "genre")
# Column whose value defines each scheme: that feature is the domain-side one.
SCHEME_COLUMN = {"age3": "age", "age7": "age", "gender": "gender", "occupation": "occupation"}


def age_to_code(age: np.ndarray) -> np.ndarray:
    """Bucket raw ages into ML-1M age codes (tfds thresholds 18, 25, 35, 45, 50, 56)."""
    bins = np.array([18, 25, 35, 45, 50, 56])
    return np.array(AGE_CODES)[np.searchsorted(bins, age, side="right")]


def _int(s: str) -> int:
    return int(s)


_int.__name__ = "integer"


def _rating(s: str) -> int:
    f = float(s)
    if f != int(f) or f < 1 or f > 5:  # whole stars only (a "3.5" is not silently truncated)
        raise ValueError(s)
    return int(f)


_rating.__name__ = "rating in 1..5"


def _timestamp(s: str) -> int:
    return int(float(s))


_timestamp.__name__ = "timestamp"


def _gender(s: str) -> str:
    if s not in ("M", "F"):
        raise ValueError(s)
    return s


_gender.__name__ = "gender (M or F)"


def read_ml100k(src: RawSource, skip_bad: bool = False) -> tuple[pd.DataFrame, dict]:
    """Reads ML-100k from GroupLens files (u.data/u.user/u.item) or recbole atomic files."""
    checksums = {}
    bad = 0
    if src.has("u.data"):
        files = ("u.data", "u.user", "u.item")
        text, w = src.read_text("u.data", "latin-1")
        checksums["u.data"] = sha256_of_bytes(text.encode("latin-1"))
        r, b = parse_lines(text, w, "\t", ["user", "item", "rating", "ts"],
                           {"user": _int, "item": _int, "rating": _rating, "ts": _int}, skip_bad=skip_bad)
        bad += b
        text, w = src.read_text("u.user", "latin-1")
        checksums["u.user"] = sha256_of_bytes(text.encode("latin-1"))
        u, b = parse_lines(text, w, "|", ["user", "age", "gender", "occupation", "zip"],
                           {"user": _int, "age": _int, "gender": _gender}, skip_bad=skip_bad)
        bad += b
        text, w = src.read_text("u.item", "latin-1")
        checksums["u.item"] = sha256_of_bytes(text.encode("latin-1"))
        cols = ["item", "title", "date", "vdate", "url"] + [f"g{i}" for i in range(19)]
        it, b = parse_lines(text, w, "|", cols, {"item": _int}, skip_bad=skip_bad, min_fields=24)
        bad += b
        flags_ = np.array([[x == "1" for x in it[f"g{i}"]] for i in range(19)]).T
        first = [GENRES_100K[int(np.argmax(row))] if row.any() else "unknown" for row in flags_]
        items = pd.DataFrame({"item": it["item"], "genre": first})
    elif src.has("ml-100k.inter"):
        files = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
        text, w = src.read_text("ml-100k.inter", "utf-8")
        checksums["ml-100k.inter"] = sha256_of_bytes(text.encode())
        r, b = parse_lines(text, w, "\t", ["user", "item", "rating", "ts"],
                           {"user": _int, "item": _int, "rating": _rating, "ts": _timestamp},
                           header=True, skip_bad=skip_bad)
        bad += b
        text, w = src.read_text("ml-100k.user", "utf-8")
        checksums["ml-100k.user"] = sha256_of_bytes(text.encode())
        u, b = parse_lines(text, w, "\t", ["user", "age", "gender", "occupation", "zip"],
                           {"user": _int, "age": _int, "gender": _gender}, header=True, skip_bad=skip_bad)
        bad += b
        text, w = src.read_text("ml-100k.item", "utf-8")
        checksums["ml-100k.item"] = sha256_of_bytes(text.encode())
        it, b = parse_lines(text, w, "\t", ["item", "title", "year", "cls"], {"item": _int}, header=True,
                            skip_bad=skip_bad)
        bad += b
        items = pd.DataFrame({"item": it["item"], "genre": [c.split(" ")[0] if c else "unknown" for c in it["cls"]]})
    else:
        raise DataError(f"{src.path}: expected ML-100k files u.data/u.user/u.item (GroupLens) "
                        "or ml-100k.inter/.user/.item (recbole)")
    ratings = pd.DataFrame(r)
    users = pd.DataFrame(u)
    users["age_code"] = age_to_code(users["age"].to_numpy())
    frame, orphans = _join(ratings, users, items, files, skip_bad, src)
    return frame, {"checksums": checksums, "skipped_bad_rows": bad, "dropped_orphan_ratings": orphans}


def read_ml1m(src: RawSource, skip_bad: bool = False) -> tuple[pd.DataFrame, dict]:
    """Reads ML-1M ``ratings.dat``, ``users.dat`` and ``movies.dat`` (ISO-8859-1, ``::``)."""
    checksums = {}
    bad = 0
    text, w = src.read_text("ratings.dat", "latin-1")
    checksums["ratings.dat"] = sha256_of_bytes(text.encode("latin-1"))
    r, b = parse_lines(text, w, "::", ["user", "item", "rating", "ts"],
                       {"user": _int, "item": _int, "rating": _rating, "ts": _int}, skip_bad=skip_bad)
    bad += b
    text, w = src.read_text("users.dat", "latin-1")
    checksums["users.dat"] = sha256_of_bytes(text.encode("latin-1"))

    def _age_code(s: str) -> int:
        v = int(s)
        if v not in AGE_CODES:
            raise ValueError(s)
        return v

    _age_code.__name__ = f"ML-1M age code {AGE_CODES}"

    def _occupation(s: str) -> int:
        v = int(s)
        if not 0 <= v < len(OCCUPATIONS_1M):
            raise ValueError(s)
        return v

    _occupation.__name__ = "ML-1M occupation code 0..20"
    u, b = parse_lines(text, w, "::", ["user", "gender", "age_code", "occupation", "zip"],
                       {"user": _int, "gender": _gender, "age_code": _age_code, "occupation": _occupation},
                       skip_bad=skip_bad)
    bad += b
    text, w = src.read_text("movies.dat", "latin-1")
    checksums["movies.dat"] = sha256_of_bytes(text.encode("latin-1"))
    m, b = parse_lines(text, w, "::", ["item", "title", "genres"], {"item": _int}, skip_bad=skip_bad)
    bad += b
    users = pd.DataFrame(u)
    users["age"] = users["age_code"]  # ML-1M only has the codes; HAMUR uses them as the dense "age".
    users["occupation"] = users["occupation"].astype(str)
    items = pd.DataFrame({"item": m["item"], "genre": [g.split("|")[0] for g in m["genres"]]})
    frame, orphans = _join(pd.DataFrame(r), users, items, ("ratings.dat", "users.dat", "movies.dat"), skip_bad, src)
    return frame, {"checksums": checksums, "skipped_bad_rows": bad, "dropped_orphan_ratings": orphans}


def _where(src: RawSource | None, name: str) -> str:
    """The user's path of a raw file (``archive!member`` inside a zip)."""
    if src is None:
        return name
    try:
        return src.read_bytes(name)[1]
    except DataError:
        return name


def _line_of(src: RawSource | None, name: str, value: int, nth: int, column: int = 0) -> str:
    """1-based line number of the ``nth`` line of ``name`` whose field ``column`` is ``value`` (error path)."""
    if src is None:
        return "?"
    data, _ = src.read_bytes(name)
    text = data.decode("latin-1")
    seen = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.replace("::", "\t").replace("|", "\t").split("\t")
        if len(fields) > column and fields[column].strip() == str(value):
            seen += 1
            if seen == nth:
                return str(lineno)
    return "?"


def _join(ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, files: Sequence[str],
          skip_bad: bool = False, src: RawSource | None = None) -> tuple[pd.DataFrame, int]:
    """Joins ratings with users and items; returns (frame, ratings dropped for a missing user/item).

    A rating whose user or item is missing is an error, unless ``skip_bad`` (then the
    user/item line was itself skipped as malformed and its ratings are dropped too).
    """
    if len(ratings) == 0:
        raise DataError(f"{_where(src, files[0])}: no ratings (the file is empty)")
    for df, f, key in ((users, files[1], "user"), (items, files[2], "item")):
        dup = df[key].duplicated()
        if dup.any():
            v = df[key][dup].iloc[0]
            raise DataError(f"{_where(src, f)}:{_line_of(src, f, v, 2)}: duplicate {key} id {v} "
                            f"(first on line {_line_of(src, f, v, 1)})")
    frame = ratings.merge(users, on="user", how="left", validate="many_to_one")
    frame = frame.merge(items, on="item", how="left", validate="many_to_one")
    no_user, no_item = frame["gender"].isna(), frame["genre"].isna()
    dropped = int((no_user | no_item).sum())
    if dropped and not skip_bad:
        if no_user.any():
            v = int(frame['user'][no_user].iloc[0])
            raise DataError(f"{_where(src, files[0])}:{_line_of(src, files[0], v, 1, column=0)}: user {v} is not "
                            f"in {_where(src, files[1])}")
        v = int(frame['item'][no_item].iloc[0])
        raise DataError(f"{_where(src, files[0])}:{_line_of(src, files[0], v, 1, column=1)}: item {v} is not in "
                        f"{_where(src, files[2])}")
    if dropped:
        frame = frame[~(no_user | no_item)].reset_index(drop=True)
    return frame, dropped


_TFDS_BUILDER: type | None = None


def tfds_builder_class() -> type:
    """tensorflow-datasets' ``movielens`` builder, writing examples in file order.

    The stock builder stores examples in key-hash order; this subclass (same name,
    configs, parsing and registered checksums, not added to the tfds registry) sets
    ``disable_shuffling`` so reading back yields the ratings in file order, which makes
    the seeded split identical to the raw reader's.
    """
    global _TFDS_BUILDER
    if _TFDS_BUILDER is None:
        from tensorflow_datasets.structured.movielens import Movielens

        class OrderedMovielens(Movielens, skip_registration=True):
            name = "movielens"
            # No per-builder checksum file: tfds then validates against its global registry
            # (url_checksums/movielens.txt). Also avoids tfds' code-path lookup, which needs
            # the optional ``importlib_resources`` package.
            code_path = None

            def _info(self):
                info = super()._info()
                info.as_proto.disable_shuffling = True
                return info

        _TFDS_BUILDER = OrderedMovielens
    return _TFDS_BUILDER


def read_tfds(version: str, zip_path: str, data_dir: str) -> tuple[pd.DataFrame, dict]:
    """Builds ``movielens/<version>-ratings`` with tfds from a local GroupLens zip; raw columns.

    The zip is handed to tfds through ``manual_dir``; tfds verifies its size and sha256
    against the checksum it registers for the GroupLens URL (``NonMatchingChecksumError``
    otherwise, turned into a ``DataError`` here). Prepared data goes to
    ``<data_dir>/<sha256[:16]>`` so a different archive never reuses an earlier build.
    """
    import tensorflow as tf

    try:
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
    except ImportError as e:
        raise DataError(f"--source=tfds needs tensorflow-datasets ({e}); pip install tensorflow-datasets") from e

    fname = TFDS_FILES[version]
    if not os.path.isfile(zip_path) or not zipfile.is_zipfile(zip_path):
        raise DataError(f"{zip_path}: --source=tfds needs the GroupLens archive {fname} (a zip file)")
    digest = sha256_of_file(zip_path)
    builder = tfds_builder_class()(config=f"{version}-ratings", data_dir=os.path.join(data_dir, digest[:16]))
    manual = tempfile.mkdtemp(prefix="tfds-manual-")
    try:
        os.symlink(os.path.abspath(zip_path), os.path.join(manual, fname))
        log(f"building tfds movielens/{version}-ratings from {zip_path} (checksum verified by tfds)")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    except NonMatchingChecksumError as e:
        said = " ".join(line.strip() for line in str(e).splitlines()[:3])
        raise DataError(
            f"{zip_path} ({os.path.getsize(zip_path)} bytes, sha256 {digest}) does not match the GroupLens {fname} "
            "registered in tensorflow-datasets: it is not the original archive (re-zipped, truncated or modified). "
            f"Use --source=raw to read it anyway. tfds said: {said}") from e
    except (ValueError, KeyError, IndexError, tf.errors.OpError) as e:
        raise DataError(f"{zip_path}: tfds could not parse the archive ({type(e).__name__}: {e}); "
                        "--source=raw names the offending file and line") from e
    finally:
        shutil.rmtree(manual, ignore_errors=True)
    genre_names = builder.info.features["movie_genres"].feature.names

    def first_genre(ex):
        g = ex.pop("movie_genres")
        ex["first_genre"] = tf.cond(tf.size(g) > 0, lambda: g[0], lambda: tf.constant(-1, g.dtype))
        return ex

    cols: dict[str, list[np.ndarray]] = {}
    ds = builder.as_dataset(split="train", shuffle_files=False).map(first_genre).batch(65536)
    for batch in tfds.as_numpy(ds):
        for k, v in batch.items():
            cols.setdefault(k, []).append(v)
    c = {k: np.concatenate(v) for k, v in cols.items()}

    def text(key: str) -> list[str]:
        return [x.decode("utf-8") for x in c[key]]

    back = {"Children": "Children's", "Unknown": "unknown"}  # tfds renames these; our raw reader keeps them
    frame = pd.DataFrame({
        "user": np.array(text("user_id"), dtype=np.int64),
        "item": np.array(text("movie_id"), dtype=np.int64),
        "rating": c["user_rating"].astype(np.int64),
        "ts": c["timestamp"].astype(np.int64),
        "gender": np.where(c["user_gender"], "M", "F"),
        "age_code": c["bucketized_user_age"].astype(np.int64),
        "zip": text("user_zip_code"),
        "genre": [back.get(genre_names[g], genre_names[g]) if g >= 0 else "unknown" for g in c["first_genre"]],
    })
    if version == "1m":
        code = {t: str(i) for i, t in enumerate(OCCUPATIONS_1M)}
        frame["occupation"] = [code[t] for t in text("user_occupation_text")]
        frame["age"] = frame["age_code"]
    else:
        frame["occupation"] = text("user_occupation_text")
        frame["age"] = c["raw_user_age"].astype(np.int64)
    return frame, {"checksums": {fname: digest}, "skipped_bad_rows": 0, "dropped_orphan_ratings": 0,
                   "tfds": {"builder": f"movielens/{version}-ratings", "version": str(builder.version),
                            "data_dir": builder.data_dir}}


def verify_counts(frame: pd.DataFrame, version: str, where: str) -> dict:
    got = {"ratings": len(frame), "users": int(frame["user"].nunique()), "items": int(frame["item"].nunique())}
    want = EXPECTED[version]
    if got != want:
        raise DataError(f"{where}: read {got}, but MovieLens-{version} has {want}; "
                        "the file is incomplete or not the official release (pass --noverify_counts to accept it)")
    return got


def domain_column(frame: pd.DataFrame, scheme: str) -> tuple[np.ndarray, list[str]]:
    """Raw domain value per row for a scheme, remapped to 0..K-1."""
    if scheme == "age3":
        code = frame["age_code"].to_numpy()
        raw = np.where(code <= 18, "<25", np.where(code == 25, "25-34", "35+"))
        return remap_domains(pd.Series(raw), order=["<25", "25-34", "35+"])
    if scheme == "age7":
        present = sorted(frame["age_code"].unique().tolist())
        return remap_domains(frame["age_code"], order=present)
    if scheme == "gender":
        return remap_domains(frame["gender"], order=sorted(frame["gender"].unique().tolist()))
    if scheme == "occupation":
        occ = frame["occupation"]
        keys = sorted(occ.unique().tolist(), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
        return remap_domains(occ, order=keys)
    raise DataError(f"--domain_scheme={scheme!r}: expected one of {DOMAIN_SCHEMES}")


def label_column(rating: np.ndarray, rule: str) -> np.ndarray:
    if rule == "gt3":
        return (rating > 3).astype(np.float32)
    if rule == "eq5":
        return (rating == 5).astype(np.float32)
    raise DataError(f"--label_rule={rule!r}: expected one of {LABEL_RULES}")


def prepare(
    output_dir: str,
    *,
    version: str = "100k",
    raw_path: str | None = None,
    domain_scheme: str = "age3",
    label_rule: str = "gt3",
    features: Sequence[str] = ALL_FEATURES,
    split_mode: str = "random",
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 2022,
    vocab_from: str = "all",
    num_shards: int = 1,
    verify: bool = True,
    skip_bad_rows: bool = False,
    cache_dir: str = DEFAULT_CACHE,
    source: str = "raw",
    tfds_data_dir: str | None = None,
) -> dict:
    """Prepares MovieLens TFRecords; returns the schema (reusing a finished identical output).

    Args:
      output_dir: where schema.json, vocab/ and domain_<k>/ go.
      version: "100k" or "1m".
      raw_path: GroupLens zip or folder; None for ML-100k means the recbole wheel copy.
      domain_scheme: one of DOMAIN_SCHEMES.
      label_rule: "gt3" (rating > 3) or "eq5" (rating == 5).
      features: model input features, a subset of ALL_FEATURES.
      split_mode: "random" (global seeded split) or "stratified" (per domain and label, MLoRA).
      split_ratios: train/valid/test fractions.
      seed: split seed.
      vocab_from: "all" (HAMUR: encoders fit on all rows) or "train" (unseen ids -> 0).
      num_shards: TFRecord shards per (domain, split).
      verify: check the official row/user/item counts.
      skip_bad_rows: skip and count malformed lines instead of failing.
      cache_dir: where the recbole wheel is cached.
      source: "raw" (our reader) or "tfds" (tensorflow-datasets builder from the zip,
        checksum-verified; needs ``raw_path`` = the GroupLens zip).
      tfds_data_dir: where tfds prepares its copy (default ``<cache_dir>/tfds``).
    """
    if version not in EXPECTED:
        raise DataError(f"--version={version!r}: expected 100k or 1m")
    unknown = [f for f in features if f not in ALL_FEATURES]
    if unknown:
        raise DataError(f"--features: unknown feature(s) {unknown}; expected a subset of {list(ALL_FEATURES)}")
    if domain_scheme not in DOMAIN_SCHEMES:
        raise DataError(f"--domain_scheme={domain_scheme!r}: expected one of {DOMAIN_SCHEMES}")
    if label_rule not in LABEL_RULES:
        raise DataError(f"--label_rule={label_rule!r}: expected one of {LABEL_RULES}")
    if split_mode not in ("random", "stratified"):
        raise DataError(f"--split_mode={split_mode!r}: expected random or stratified")
    if vocab_from not in ("all", "train"):
        raise DataError(f"--vocab_from={vocab_from!r}: expected all or train")
    split_ratios = check_split_ratios(split_ratios)
    if source not in SOURCES:
        raise DataError(f"--source={source!r}: expected one of {SOURCES}")
    if source == "tfds":
        if raw_path is None:
            raise DataError(f"--source=tfds needs --raw_path=<{TFDS_FILES[version]}> (the GroupLens zip)")
        if skip_bad_rows:
            raise DataError("--skip_bad_rows applies to --source=raw only (tfds rejects any malformed line)")
        source_name = f"tfds movielens/{version}-ratings from {os.path.abspath(raw_path)}"
        frame, meta = read_tfds(version, raw_path, tfds_data_dir or os.path.join(cache_dir, "tfds"))
        where = raw_path
    elif raw_path is None:
        if version != "100k":
            raise DataError("ML-1M cannot be downloaded here: pass --raw_path=<ml-1m.zip or folder>")
        raw_path = fetch_recbole_wheel(cache_dir)
        src = RawSource(raw_path, prefix_in_zip="recbole/dataset_example/ml-100k/")
        source_name = "recbole==1.2.1 wheel (recbole/dataset_example/ml-100k)"
    else:
        src = RawSource(raw_path)
        source_name = os.path.abspath(raw_path)
    if source == "raw":
        log(f"reading MovieLens-{version} from {source_name}")
        frame, meta = (read_ml100k if version == "100k" else read_ml1m)(src, skip_bad=skip_bad_rows)
        where = src.path
    counts = verify_counts(frame, version, where) if verify else {
        "ratings": len(frame), "users": int(frame["user"].nunique()), "items": int(frame["item"].nunique())}
    options = dict(version=version, domain_scheme=domain_scheme, label_rule=label_rule, features=list(features),
                   split_mode=split_mode, split_ratios=list(split_ratios), seed=seed, vocab_from=vocab_from,
                   num_shards=num_shards)
    if source != "raw":  # keeps the fingerprints of raw-source outputs unchanged
        options["source"] = source
    fp = fingerprint({"options": options, "checksums": meta["checksums"], "skipped": meta["skipped_bad_rows"]})
    done = existing_output(output_dir, fp)
    if done is not None:
        log(f"reusing finished output in {output_dir} (same inputs and options)")
        return done
    domain, domain_names = domain_column(frame, domain_scheme)
    label = label_column(frame["rating"].to_numpy(), label_rule)
    if split_mode == "random":
        split = random_split(len(frame), split_ratios, seed)
    else:
        split = stratified_split(label, domain, split_ratios, seed)
    fit_mask = None if vocab_from == "all" else (split == 0)
    raw_cols = {"user_id": frame["user"], "item_id": frame["item"], "gender": frame["gender"],
                "occupation": frame["occupation"], "zip": frame["zip"], "genre": frame["genre"]}
    groups = {"user_id": "user", "item_id": "item", "gender": "user", "age": "user", "occupation": "user",
              "zip": "user", "genre": "item"}
    defs, columns, vocabs = [], {}, {}
    for name in features:
        group = "domain" if SCHEME_COLUMN[domain_scheme] == name else groups[name]
        if name == "age":
            age = frame["age"].to_numpy(dtype=np.float32)
            lo, hi = float(age.min()), float(age.max())
            columns[name] = (age - lo) / max(hi - lo, 1e-12)
            defs.append(FeatureDef(name, "dense", group=group))
            meta.setdefault("normalizers", {})[name] = {"minmax": [lo, hi]}
            continue
        ids, vocab = encode_categorical(raw_cols[name], name, fit_mask)
        columns[name] = ids
        vocabs[name] = vocab
        defs.append(FeatureDef(name, "categorical", vocab_size=len(vocab), group=group,
                               is_id=name in ("user_id", "item_id")))
    return write_dataset(
        output_dir, dataset=f"movielens-{version}", features=defs, columns=columns, domain=domain,
        domain_names=domain_names, labels={"label": label}, split=split, vocabs=vocabs, fp=fp,
        num_shards=num_shards,
        metadata={"source": source_name, "source_counts": counts, "options": options, **meta,
                  "label_rule_text": {"gt3": "rating > 3", "eq5": "rating == 5"}[label_rule]})


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("version", "100k", list(EXPECTED), "MovieLens release.")
    flags.DEFINE_string("raw_path", None, "GroupLens zip or extracted folder (default for 100k: recbole wheel copy).")
    flags.DEFINE_string("output_dir", None, "Output directory.")
    flags.DEFINE_enum("domain_scheme", "age3", list(DOMAIN_SCHEMES), "How rows are assigned to domains.")
    flags.DEFINE_enum("label_rule", "gt3", list(LABEL_RULES), "gt3: rating > 3 (HAMUR); eq5: rating == 5 (MLoRA).")
    flags.DEFINE_list("features", list(ALL_FEATURES), "Model input features.")
    flags.DEFINE_enum("split_mode", "random", ["random", "stratified"], "Global random or per-domain stratified.")
    flags.DEFINE_list("split_ratios", ["0.8", "0.1", "0.1"], "train,valid,test fractions.")
    flags.DEFINE_integer("seed", 2022, "Split seed.")
    flags.DEFINE_enum("vocab_from", "all", ["all", "train"], "Rows whose values define the vocabularies.")
    flags.DEFINE_integer("num_shards", 1, "TFRecord shards per domain and split.")
    flags.DEFINE_boolean("verify_counts", True, "Check the official number of ratings/users/items.")
    flags.DEFINE_boolean("skip_bad_rows", False, "Skip and count malformed lines instead of failing.")
    flags.DEFINE_string("cache_dir", DEFAULT_CACHE, "Download cache (recbole wheel, tfds build).")
    flags.DEFINE_enum("source", "raw", list(SOURCES),
                      "raw: our reader (zip, folder or recbole files); tfds: tensorflow-datasets' movielens "
                      "builder from the GroupLens zip (checksum-verified).")
    flags.DEFINE_string("tfds_data_dir", None, "tfds data_dir for --source=tfds (default <cache_dir>/tfds).")


def _prepare_from_flags(f: flags.FlagValues) -> None:
    prepare(f.output_dir, version=f.version, raw_path=f.raw_path, domain_scheme=f.domain_scheme,
            label_rule=f.label_rule, features=f.features, split_mode=f.split_mode,
            split_ratios=[float(x) for x in f.split_ratios], seed=f.seed, vocab_from=f.vocab_from,
            num_shards=f.num_shards, verify=f.verify_counts, skip_bad_rows=f.skip_bad_rows,
            cache_dir=f.cache_dir, source=f.source, tfds_data_dir=f.tfds_data_dir)


def cli() -> None:
    """Console entry point ``mdr-prep-movielens``."""
    run_cli(define_flags, _prepare_from_flags, required=("output_dir",))


if __name__ == "__main__":
    cli()
