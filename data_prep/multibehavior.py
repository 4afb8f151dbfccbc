"""MovieLens as a multi-behaviour top-N dataset (CIGF, WWW'23; docs/models/cigf.md).

Nested behaviours from the rating value, ordered auxiliary → target (target last, as in
CIGF's code):

    rated (any rating) ⊇ liked (rating ≥ 4) ⊇ loved (rating = 5)        target = loved

Protocol (leave-one-out on the target behaviour, as in CIGF's evaluation):

* each user's latest target interaction (largest timestamp, ties broken by the larger
  item id) is the test pair; users without any target interaction have no test pair;
* the test pair is removed from **every** behaviour's train graph (the labels are
  nested, so leaving it in "rated" would leak the answer); ``keep_aux_for_test=True``
  keeps it in the auxiliary graphs (CIGF's datasets hold the target's test pair in the
  auxiliary matrices; a flag, off by default);
* 99 negatives per test user, sampled uniformly without replacement with a fixed seed,
  never the test item and never a train positive of the target behaviour (CIGF's rule;
  ``negatives_exclude="any"`` also excludes every auxiliary train positive). CIGF's code
  may draw the test item itself as a negative; we do not;
* validation (``validation=True``, the default; not in CIGF, whose code selects on the
  test set): each user's second-latest target interaction is the validation pair, if the
  user has at least ``valid_min_target`` (3) target interactions, so that one stays in
  train; users with fewer have no validation pair. The validation pair is removed from
  every train graph like the test pair (``keep_aux_for_test`` applies to both). Its 99
  negatives (own seeded stream) are never the validation item, the test item or a train
  positive. The test pairs and test negatives are exactly those of ``validation=False``
  (the validation item, a train positive there, is still excluded from test negatives);
* domains: the user's age group (``age3``: <25 / 25-34 / 35+ like data_prep.movielens),
  so metrics can be reported per domain.

Output (written into a temp folder renamed into place; reused when inputs and options
are the same):

    <output_dir>/multibehavior.npz    train edges per behaviour, test and validation pairs with
                                      their negatives, user domains
    <output_dir>/multibehavior.json   counts, options, fingerprint, source checksums (written last)

Example:
  python -m data_prep.multibehavior --output_dir=data/ml100k_multibehavior [--novalidation]
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np
import pandas as pd
from absl import flags

from data_prep.common import AtomicDir, DataError, fingerprint, log, run_cli, write_json_atomic
from data_prep.sources import DEFAULT_CACHE, RawSource, fetch_recbole_wheel

META_FILE = "multibehavior.json"
ARRAYS_FILE = "multibehavior.npz"
FORMAT_VERSION = 2  # 2: validation pairs
BEHAVIORS = ("rated", "liked", "loved")
THRESHOLDS = (1, 4, 5)  # behaviour k = rating >= THRESHOLDS[k]
NEGATIVES_EXCLUDE = ("target", "any")


@dataclasses.dataclass(frozen=True)
class MultiBehaviorData:
    """A prepared multi-behaviour dataset (ids are contiguous: users 0..U-1, items 0..I-1).

    Attributes:
      num_users, num_items: graph sizes.
      behaviors: names, auxiliary first, target last.
      train_users, train_items: per behaviour, the train edges (deduplicated).
      test_users, test_items: one held-out target pair per test user.
      negatives: [T, num_negatives] sampled negatives of each test user.
      valid_users, valid_items, valid_negatives: the validation pairs [V] and their
        negatives [V, num_negatives] (empty when prepared without validation).
      user_domain: [U] domain id of every user; domain_names: their names.
      meta: the JSON metadata.
    """

    num_users: int
    num_items: int
    behaviors: tuple[str, ...]
    train_users: tuple[np.ndarray, ...]
    train_items: tuple[np.ndarray, ...]
    test_users: np.ndarray
    test_items: np.ndarray
    negatives: np.ndarray
    user_domain: np.ndarray
    domain_names: tuple[str, ...]
    meta: dict
    valid_users: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    valid_items: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    valid_negatives: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.int64))

    @property
    def num_behaviors(self) -> int:
        return len(self.behaviors)

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    def train_matrix(self, k: int):
        """Binary scipy CSR [U, I] of behaviour ``k``'s train edges."""
        import scipy.sparse as sp

        u, i = self.train_users[k], self.train_items[k]
        return sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(self.num_users, self.num_items))


def _read_movielens(version: str, raw_path: str | None, cache_dir: str, verify: bool) -> tuple[pd.DataFrame, dict, str]:
    """Ratings joined with users, through data_prep.movielens' raw readers."""
    from data_prep import movielens

    if version not in movielens.EXPECTED:
        raise DataError(f"--version={version!r}: expected one of {sorted(movielens.EXPECTED)}")
    if raw_path is None:
        if version != "100k":
            raise DataError("ML-1M cannot be downloaded here: pass --raw_path=<ml-1m.zip or folder>")
        src = RawSource(fetch_recbole_wheel(cache_dir), prefix_in_zip="recbole/dataset_example/ml-100k/")
        source_name = "recbole==1.2.1 wheel (recbole/dataset_example/ml-100k)"
    else:
        src = RawSource(raw_path)
        source_name = os.path.abspath(raw_path)
    log(f"reading MovieLens-{version} from {source_name}")
    frame, meta = (movielens.read_ml100k if version == "100k" else movielens.read_ml1m)(src)
    if verify:
        movielens.verify_counts(frame, version, src.path)
    return frame, meta, source_name


def build_protocol(
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    ts: np.ndarray,
    num_users: int,
    num_items: int,
    *,
    thresholds: Sequence[int] = THRESHOLDS,
    num_negatives: int = 99,
    seed: int = 2023,
    keep_aux_for_test: bool = False,
    negatives_exclude: str = "target",
    validation: bool = True,
    valid_min_target: int = 3,
) -> dict[str, np.ndarray]:
    """The leave-one-out protocol on contiguous ids; returns the arrays of ``multibehavior.npz``.

    With ``validation``, users with at least ``valid_min_target`` target interactions also
    hold out their second-latest one (``valid_users``, ``valid_items``, ``valid_negatives``).

    Raises:
      DataError: when thresholds are not increasing (behaviours must be nested) or a test
        user has fewer than ``num_negatives`` candidate negatives.
    """
    thresholds = [int(t) for t in thresholds]
    if len(thresholds) < 1 or any(b <= a for a, b in zip(thresholds, thresholds[1:])):
        raise DataError(f"thresholds {thresholds}: expected strictly increasing values (nested behaviours, "
                        "target = the last)")
    if negatives_exclude not in NEGATIVES_EXCLUDE:
        raise DataError(f"--negatives_exclude={negatives_exclude!r}: expected one of {NEGATIVES_EXCLUDE}")
    user, item, rating, ts = (np.asarray(a, np.int64) for a in (user, item, rating, ts))
    target = rating >= thresholds[-1]
    # Latest target interaction per user: sort by (user, ts, item) and keep each user's last row.
    t_idx = np.flatnonzero(target)
    order = np.lexsort((item[t_idx], ts[t_idx], user[t_idx]))
    t_sorted = t_idx[order]
    last = np.r_[user[t_sorted][1:] != user[t_sorted][:-1], True]
    test_rows = t_sorted[last]
    test_users, test_items = user[test_rows], item[test_rows]
    is_test = np.zeros(len(user), bool)
    is_test[test_rows] = True
    if validation:
        if valid_min_target < 2:
            raise DataError(f"valid_min_target={valid_min_target}: expected >= 2 (test + validation pair)")
        t_users = user[t_sorted]
        first = np.r_[True, t_users[1:] != t_users[:-1]]
        starts_t = np.flatnonzero(first)
        count = np.diff(np.r_[starts_t, len(t_sorted)])  # target interactions per user (sorted users)
        ends_t = starts_t + count  # one past each user's last (= test) row
        ok = count >= valid_min_target
        valid_rows = t_sorted[ends_t[ok] - 2]  # the second-latest
    else:
        valid_rows = np.zeros(0, np.int64)
    valid_users, valid_items = user[valid_rows], item[valid_rows]
    is_test[valid_rows] = True  # held out of the train graphs like the test pair
    out: dict[str, np.ndarray] = {"test_users": test_users, "test_items": test_items,
                                  "valid_users": valid_users, "valid_items": valid_items}
    key = user * num_items + item
    K = len(thresholds)
    for k, thr in enumerate(thresholds):
        drop = is_test if (k == K - 1 or not keep_aux_for_test) else np.zeros_like(is_test)
        keep = (rating >= thr) & ~drop
        keys = np.unique(key[keep])  # binarised (MovieLens has one rating per pair, but be safe)
        out[f"train_users_{k}"] = keys // num_items
        out[f"train_items_{k}"] = keys % num_items
    # Negatives: uniform without replacement among the allowed items of each test user.
    excl_k = [K - 1] if negatives_exclude == "target" else list(range(K))
    # The validation pairs are excluded too: test negatives are those of validation=False.
    excluded = np.unique(np.concatenate([out[f"train_users_{k}"] * num_items + out[f"train_items_{k}"]
                                         for k in excl_k] + [test_users * num_items + test_items,
                                                             valid_users * num_items + valid_items]))
    out["negatives"] = _sample_negatives(test_users, excluded, num_items, num_negatives,
                                         np.random.default_rng(seed), "test")
    out["valid_negatives"] = _sample_negatives(valid_users, excluded, num_items, num_negatives,
                                               np.random.default_rng([seed, 1]), "validation")
    return out


def _sample_negatives(users: np.ndarray, excluded: np.ndarray, num_items: int, num_negatives: int,
                      rng: np.random.Generator, split: str) -> np.ndarray:
    """``num_negatives`` items per user, uniform without replacement, outside the sorted
    ``excluded`` keys (``user * num_items + item``)."""
    negs = np.empty((len(users), num_negatives), np.int64)
    starts = np.searchsorted(excluded, users * num_items)
    ends = np.searchsorted(excluded, (users + 1) * num_items)
    for t, u in enumerate(users):
        banned = excluded[starts[t]:ends[t]] - u * num_items
        allowed = np.setdiff1d(np.arange(num_items), banned, assume_unique=True)
        if len(allowed) < num_negatives:
            raise DataError(f"{split} user {u}: only {len(allowed)} candidate negatives, {num_negatives} requested")
        negs[t] = rng.choice(allowed, num_negatives, replace=False)
    return negs


def prepare(
    output_dir: str,
    *,
    version: str = "100k",
    raw_path: str | None = None,
    domain_scheme: str = "age3",
    thresholds: Sequence[int] = THRESHOLDS,
    behaviors: Sequence[str] = BEHAVIORS,
    num_negatives: int = 99,
    seed: int = 2023,
    keep_aux_for_test: bool = False,
    negatives_exclude: str = "target",
    validation: bool = True,
    valid_min_target: int = 3,
    verify: bool = True,
    cache_dir: str = DEFAULT_CACHE,
) -> dict:
    """Prepares the multi-behaviour leave-one-out dataset; returns its metadata.

    Args:
      output_dir: destination folder.
      version: MovieLens "100k" (default) or "1m".
      raw_path: GroupLens zip/folder or recbole files; None for ML-100k = the recbole wheel copy.
      domain_scheme: user domains (a data_prep.movielens scheme; default age3).
      thresholds: behaviour k = rating ≥ thresholds[k]; strictly increasing, target last.
      behaviors: names of the behaviours (same length as ``thresholds``).
      num_negatives: sampled negatives per test user.
      seed: negative-sampling seed.
      keep_aux_for_test: keep the test pair in the auxiliary graphs (leaks on nested labels).
      negatives_exclude: "target" (CIGF: items not in the user's train target row) or "any".
      validation: also hold out each user's second-latest target interaction for model
        selection (users with fewer than ``valid_min_target`` target interactions have none).
      valid_min_target: target interactions a user needs for a validation pair (≥ 2).
      verify: check the official rating/user/item counts.
      cache_dir: where the recbole wheel is cached.
    """
    from data_prep import movielens

    if len(behaviors) != len(thresholds):
        raise DataError(f"--behaviors {list(behaviors)} and --thresholds {list(thresholds)} differ in length")
    frame, meta, source_name = _read_movielens(version, raw_path, cache_dir, verify)
    options = dict(version=version, domain_scheme=domain_scheme, thresholds=[int(t) for t in thresholds],
                   behaviors=list(behaviors), num_negatives=num_negatives, seed=seed,
                   keep_aux_for_test=bool(keep_aux_for_test), negatives_exclude=negatives_exclude,
                   validation=bool(validation), valid_min_target=int(valid_min_target), format=FORMAT_VERSION)
    fp = fingerprint({"options": options, "checksums": meta["checksums"]})
    meta_path = os.path.join(output_dir, META_FILE)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            done = json.load(f)
        if done.get("fingerprint") == fp:
            log(f"reusing finished output in {output_dir} (same inputs and options)")
            return done
    users = np.sort(frame["user"].unique())
    items = np.sort(frame["item"].unique())
    uid = np.searchsorted(users, frame["user"].to_numpy())
    iid = np.searchsorted(items, frame["item"].to_numpy())
    dom_rows, domain_names = movielens.domain_column(frame, domain_scheme)
    user_domain = np.zeros(len(users), np.int64)
    user_domain[uid] = dom_rows
    arrays = build_protocol(uid, iid, frame["rating"].to_numpy(), frame["ts"].to_numpy(), len(users), len(items),
                            thresholds=thresholds, num_negatives=num_negatives, seed=seed,
                            keep_aux_for_test=keep_aux_for_test, negatives_exclude=negatives_exclude,
                            validation=validation, valid_min_target=valid_min_target)
    arrays["user_domain"] = user_domain
    arrays["user_raw_ids"] = users
    arrays["item_raw_ids"] = items
    counts = {name: int(len(arrays[f"train_users_{k}"])) for k, name in enumerate(behaviors)}
    test_dom = user_domain[arrays["test_users"]]
    valid_dom = user_domain[arrays["valid_users"]]
    info = {
        "format": FORMAT_VERSION, "dataset": f"movielens-{version}-multibehavior", "fingerprint": fp,
        "source": source_name, "checksums": meta["checksums"], "options": options,
        "num_users": int(len(users)), "num_items": int(len(items)), "behaviors": list(behaviors),
        "target": behaviors[-1], "train_edges": counts, "num_test_users": int(len(arrays["test_users"])),
        "test_users_per_domain": [int((test_dom == d).sum()) for d in range(len(domain_names))],
        "num_valid_users": int(len(arrays["valid_users"])),
        "valid_users_per_domain": [int((valid_dom == d).sum()) for d in range(len(domain_names))],
        "domain_names": list(domain_names), "num_negatives": num_negatives,
        "rule": {name: f"rating >= {t}" for name, t in zip(behaviors, thresholds)},
    }
    with AtomicDir(output_dir) as tmp:
        np.savez(os.path.join(tmp, ARRAYS_FILE), **arrays)
        write_json_atomic(os.path.join(tmp, META_FILE), info)
    log(f"wrote {output_dir}: {info['num_users']} users, {info['num_items']} items, train edges {counts}, "
        f"{info['num_test_users']} test users, {info['num_valid_users']} validation users")
    return info


def load(directory: str) -> MultiBehaviorData:
    """Reads a prepared folder, checking that every array is present and consistent."""
    meta_path = os.path.join(directory, META_FILE)
    arr_path = os.path.join(directory, ARRAYS_FILE)
    if not os.path.exists(meta_path):
        raise DataError(f"{meta_path}: missing; prepare the dataset first (python -m data_prep.multibehavior)")
    with open(meta_path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{meta_path}: not valid JSON ({e})") from e
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}; prepare it again")
    try:
        z = np.load(arr_path)
    except (OSError, ValueError) as e:
        raise DataError(f"{arr_path}: cannot read ({e}); prepare the dataset again") from e
    K = len(meta["behaviors"])
    need = ["test_users", "test_items", "negatives", "user_domain", "valid_users", "valid_items",
            "valid_negatives"] + [
        f"train_{s}_{k}" for k in range(K) for s in ("users", "items")]
    missing = [n for n in need if n not in z.files]
    if missing:
        raise DataError(f"{arr_path}: missing arrays {missing}")
    U, I = int(meta["num_users"]), int(meta["num_items"])
    data = MultiBehaviorData(
        num_users=U, num_items=I, behaviors=tuple(meta["behaviors"]),
        train_users=tuple(z[f"train_users_{k}"] for k in range(K)),
        train_items=tuple(z[f"train_items_{k}"] for k in range(K)),
        test_users=z["test_users"], test_items=z["test_items"], negatives=z["negatives"],
        user_domain=z["user_domain"], domain_names=tuple(meta["domain_names"]), meta=meta,
        valid_users=z["valid_users"], valid_items=z["valid_items"], valid_negatives=z["valid_negatives"])
    for name, arr, hi in ([("test_users", data.test_users, U), ("test_items", data.test_items, I),
                           ("negatives", data.negatives, I), ("user_domain", data.user_domain, len(data.domain_names)),
                           ("valid_users", data.valid_users, U), ("valid_items", data.valid_items, I),
                           ("valid_negatives", data.valid_negatives, I)]
                          + [(f"train_users_{k}", data.train_users[k], U) for k in range(K)]
                          + [(f"train_items_{k}", data.train_items[k], I) for k in range(K)]):
        if arr.size and (arr.min() < 0 or arr.max() >= hi):
            raise DataError(f"{arr_path}: {name} has ids outside [0, {hi})")
    if data.negatives.shape[0] != len(data.test_users):
        raise DataError(f"{arr_path}: {data.negatives.shape[0]} negative rows for {len(data.test_users)} test users")
    if data.valid_negatives.shape[0] != len(data.valid_users) or len(data.valid_items) != len(data.valid_users):
        raise DataError(f"{arr_path}: {len(data.valid_users)} validation users, {len(data.valid_items)} items and "
                        f"{data.valid_negatives.shape[0]} negative rows; expected equal counts")
    return data


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("output_dir", None, "Output directory.")
    flags.DEFINE_enum("version", "100k", ["100k", "1m"], "MovieLens release.")
    flags.DEFINE_string("raw_path", None, "GroupLens zip or folder (default for 100k: recbole wheel copy).")
    flags.DEFINE_enum("domain_scheme", "age3", ["age3", "gender", "age7", "occupation"], "User domains.")
    flags.DEFINE_list("thresholds", [str(t) for t in THRESHOLDS], "Behaviour k = rating >= thresholds[k].")
    flags.DEFINE_list("behaviors", list(BEHAVIORS), "Behaviour names (target last).")
    flags.DEFINE_integer("num_negatives", 99, "Negatives per test user.")
    flags.DEFINE_integer("seed", 2023, "Negative-sampling seed.")
    flags.DEFINE_boolean("keep_aux_for_test", False, "Keep the test pair in the auxiliary graphs (leaks).")
    flags.DEFINE_enum("negatives_exclude", "target", list(NEGATIVES_EXCLUDE),
                      "target: negatives avoid train target positives (CIGF); any: avoid every train positive.")
    flags.DEFINE_boolean("validation", True, "Hold out each user's second-latest target interaction for "
                         "validation (model selection).")
    flags.DEFINE_integer("valid_min_target", 3, "Target interactions a user needs for a validation pair.")
    flags.DEFINE_boolean("verify_counts", True, "Check the official number of ratings/users/items.")
    flags.DEFINE_string("cache_dir", DEFAULT_CACHE, "Download cache (recbole wheel).")


def _prepare_from_flags(f: flags.FlagValues) -> None:
    try:
        thresholds = [int(t) for t in f.thresholds]
    except ValueError:
        raise DataError(f"--thresholds={','.join(f.thresholds)}: expected integers")
    prepare(f.output_dir, version=f.version, raw_path=f.raw_path, domain_scheme=f.domain_scheme,
            thresholds=thresholds, behaviors=f.behaviors, num_negatives=f.num_negatives, seed=f.seed,
            keep_aux_for_test=f.keep_aux_for_test, negatives_exclude=f.negatives_exclude,
            validation=f.validation, valid_min_target=f.valid_min_target, verify=f.verify_counts, cache_dir=f.cache_dir)


def cli() -> None:
    run_cli(define_flags, _prepare_from_flags, required=("output_dir",))


if __name__ == "__main__":
    cli()
