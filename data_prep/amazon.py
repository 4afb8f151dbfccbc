"""Amazon reviews -> multi-domain CTR TFRecords (MLoRA Amazon_6, Scenario-Wise-Rec, MI-DPG).

Recipes (``--recipe``; every value can be overridden by its own flag):

  mlora6   MLoRA / MAMDR "Amazon_6": 2018 5-core files ``{Category}_5.json.gz`` of Musical
           Instruments, Office Products, Patio Lawn and Garden, Prime Pantry, Toys and Games,
           Video Games (one domain per file, in this order). Duplicate (user, item, rating)
           rows dropped; every review is a positive; per domain k a ratio r_k ~ U[0.2, 0.5]
           (Python ``random.Random(123)``, k-th draw, rounded to 2 decimals: 0.22, 0.23,
           0.32, 0.23, 0.47, 0.21 as in MLoRA) and, per user with n reviews in the domain,
           ``int(n / r_k)`` negatives drawn without replacement from the domain's items the
           user did not review (capped by that pool). Split stratified per (domain, label)
           60/20/20, seed 123. Unlike MLoRA (unseeded worker processes) the negatives are
           reproducible: a numpy ``Generator`` seeded with (seed, k) per domain, users and
           items in sorted raw-id order.
  swr3     Scenario-Wise-Rec: 2014 5-core ``reviews_{Beauty, Clothing_Shoes_and_Jewelry,
           Health_and_Personal_Care}_5.json(.gz)``, label ``overall > 3``, no negatives,
           random 80/10/10 split, seed 2022.
  midpg10  MI-DPG: ``reviews_Electronics_5.json.gz`` (2014; ``--release=2018`` reads
           ``Electronics_5.json.gz``) joined on ``asin`` with ``meta_Electronics.json.gz``;
           the scenario is the second level of the item's category path (2014
           ``categories[0][1]``, a Python-literal line; 2018 ``category[1]``, JSON) mapped
           by ``--category_map`` to the paper's 10 scenarios TV, SS, CG, WT, CA, CP, HA, PV,
           HP, AS. **Unconfirmed** (MI-DPG has no public code): the mapping, the release,
           the label rule (default ``overall > 3``) and the split (default random 80/10/10).
           Reviews whose item has no metadata or an unmapped category are dropped (counted).

Global id maps: ``user_id`` and ``item_id`` vocabularies span all domains (a user who
reviews in two categories has one id). Features: ``user_id`` (user), ``item_id`` (item).

Example:
  python -m data_prep.amazon --recipe=mlora6 --raw_path=raw/amazon2018 --output_dir=data/amazon6
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import os
import random
import re
import zlib
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from absl import flags

from data_prep.common import (check_split_ratios, DataError, FeatureDef, encode_categorical, existing_output,
                              fingerprint, log, random_split, sha256_of_file, stratified_split, write_dataset, run_cli)

MLORA6 = ("Musical Instruments", "Office Products", "Patio Lawn and Garden", "Prime Pantry", "Toys and Games",
          "Video Games")
SWR3 = ("Beauty", "Clothing Shoes and Jewelry", "Health and Personal Care")
# MI-DPG's 10 Electronics scenarios -> second-level category names (unconfirmed; datasets.md §5.4).
# "CG" is ambiguous between car electronics and GPS: both names map to it.
MIDPG_CATEGORY_MAP: dict[str, list[str]] = {
    "TV": ["Television & Video"],
    "SS": ["Security & Surveillance"],
    "CG": ["Car & Vehicle Electronics", "GPS & Navigation"],
    "WT": ["Wearable Technology"],
    "CA": ["Computers & Accessories"],
    "CP": ["Camera & Photo"],
    "HA": ["Home Audio"],
    "PV": ["Portable Audio & Video"],
    "HP": ["Headphones"],
    "AS": ["Accessories & Supplies"],
}
RELEASES = ("2014", "2018")
DOMAIN_SOURCES = ("file", "meta_category")
LABEL_RULES = ("sampled_negatives", "gt3")
SPLIT_MODES = ("stratified", "random")
RECIPES: dict[str, dict[str, Any]] = {
    "mlora6": dict(release="2018", categories=MLORA6, domain_source="file", label_rule="sampled_negatives",
                   split_mode="stratified", split_ratios=(0.6, 0.2, 0.2), seed=123, dedupe=True),
    "swr3": dict(release="2014", categories=SWR3, domain_source="file", label_rule="gt3", split_mode="random",
                 split_ratios=(0.8, 0.1, 0.1), seed=2022, dedupe=False),
    "midpg10": dict(release="2014", categories=("Electronics",), domain_source="meta_category", label_rule="gt3",
                    split_mode="random", split_ratios=(0.8, 0.1, 0.1), seed=2022, dedupe=False,
                    category_map=MIDPG_CATEGORY_MAP),
}
_ASIN_RE = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


# ----------------------------------------------------------------------------- reading


def review_file_names(category: str, release: str) -> list[str]:
    """Accepted file names of one category's 5-core reviews (gzip or plain)."""
    stem = category.replace(" ", "_").replace(",", "")
    base = f"{stem}_5.json" if release == "2018" else f"reviews_{stem}_5.json"
    return [base + ".gz", base]


def meta_file_names(category: str) -> list[str]:
    stem = category.replace(" ", "_").replace(",", "")
    return [f"meta_{stem}.json.gz", f"meta_{stem}.json"]


def find_file(raw_path: str, names: Sequence[str], what: str) -> str:
    """First of ``names`` in ``raw_path`` or one folder below it."""
    if os.path.isfile(raw_path) and os.path.basename(raw_path) in names:
        return raw_path
    if not os.path.isdir(raw_path):
        raise DataError(f"{raw_path}: no such directory (expected the folder holding {names[0]})")
    for name in names:
        for cand in [os.path.join(raw_path, name)] + [os.path.join(raw_path, d, name)
                                                      for d in sorted(os.listdir(raw_path))]:
            if os.path.isfile(cand):
                return cand
    raise DataError(f"{raw_path}: no {what} file {' or '.join(names)} (in this folder or one level below)")


def iter_records(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a .json / .json.gz file; clear errors for broken gzip."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); truncated download or not gzip?") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e


def parse_object(line: str) -> dict:
    """One JSON object per line, or a Python dict literal (2014 metadata, 'loose JSON')."""
    try:
        obj = json.loads(line)
    except ValueError:
        try:
            obj = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise ValueError("neither JSON nor a Python dict literal") from e
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    return obj


def read_reviews(path: str, skip_bad: bool = False) -> tuple[pd.DataFrame, int]:
    """Reads ``reviewerID``, ``asin``, ``overall`` of a review file; returns (frame, skipped lines)."""
    users, items, ratings = [], [], []
    bad = 0
    for lineno, line in iter_records(path):
        try:
            obj = parse_object(line)
            for key in ("reviewerID", "asin", "overall"):
                if key not in obj:
                    raise ValueError(f"missing key {key!r}")
            u, i, r = obj["reviewerID"], obj["asin"], float(obj["overall"])
            if not isinstance(u, str) or not u or not isinstance(i, str) or not i:
                raise ValueError("reviewerID and asin must be non-empty strings")
            if not 1.0 <= r <= 5.0:
                raise ValueError(f"overall={obj['overall']!r} is not a rating in 1..5")
        except (ValueError, TypeError) as e:
            if skip_bad:
                bad += 1
                continue
            raise DataError(f"{path}:{lineno}: {e}; line was {line[:120]!r}") from None
        users.append(u)
        items.append(i)
        ratings.append(r)
    return pd.DataFrame({"user": users, "item": items, "rating": np.array(ratings, np.float32)}), bad


def category_path(obj: dict, main: str) -> list[str]:
    """Category path of one metadata record: 2018 ``category`` list or 2014 ``categories``."""
    if isinstance(obj.get("category"), list):
        return [html.unescape(str(c)).strip() for c in obj["category"]]  # 2018 has "&amp;" in places
    cats = obj.get("categories")
    if isinstance(cats, list) and cats:
        paths = [p for p in cats if isinstance(p, list)]
        for p in paths:  # the first path under the file's main category
            if p and p[0] == main and len(p) > 1:
                return [html.unescape(str(c)).strip() for c in p]
        return [html.unescape(str(c)).strip() for c in paths[0]] if paths else []
    return []


def read_meta_categories(path: str, asins: set[str], main: str, level: int,
                         skip_bad: bool = False) -> tuple[dict[str, str], int]:
    """asin -> category name at ``level`` for the asins needed; returns (map, skipped lines).

    Lines are parsed only when their asin is needed (a regex finds it first), so the
    slow ``ast.literal_eval`` of 2014 metadata runs on the reviewed items only.
    """
    out: dict[str, str] = {}
    bad = 0
    for lineno, line in iter_records(path):
        m = _ASIN_RE.search(line)
        if m is not None and m.group(1) not in asins:
            continue
        try:
            obj = parse_object(line)
            asin = obj.get("asin")
            if not isinstance(asin, str):
                raise ValueError("missing key 'asin'")
        except (ValueError, TypeError) as e:
            if skip_bad:
                bad += 1
                continue
            raise DataError(f"{path}:{lineno}: {e}; line was {line[:120]!r}") from None
        if asin in asins and asin not in out:
            p = category_path(obj, main)
            if len(p) > level:
                out[asin] = p[level]
    return out, bad


# ----------------------------------------------------------------------------- negatives


def draw_ratios(num_domains: int, ratio_range: Sequence[float], ratio_seed: int) -> list[float]:
    """MLoRA's per-domain ratios: k-th draw of ``random.Random(seed).uniform(lo, hi)``, 2 decimals."""
    lo, hi = float(ratio_range[0]), float(ratio_range[1])
    if not 0 < lo <= hi:
        raise DataError(f"--neg_ratio_range={list(ratio_range)}: expected 0 < lo <= hi")
    rnd = random.Random(ratio_seed)
    return [round(rnd.uniform(lo, hi), 2) for _ in range(num_domains)]


def sample_negatives(users: np.ndarray, items: np.ndarray, ratio: float, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Per-user negatives for one domain (MLoRA / MAMDR recipe).

    A user with n positive rows gets ``int(n / ratio)`` negatives drawn uniformly without
    replacement from the domain's items (all items in ``items``) that the user has no
    positive with; fewer when that pool is smaller. Users and items are coded in sorted
    raw-value order, so the result depends only on the data, ``ratio`` and ``rng``.

    Vectorised rejection sampling: every user short of its quota draws
    ``2 * missing + 8`` candidates per round; candidates that are the user's positives or
    already chosen are dropped, the first ``missing`` survivors (in draw order) are kept.
    Users who want at least a third of their remaining pool instead take a prefix of a
    random permutation of it.

    Args:
      users, items: raw ids of the domain's positive rows.
      ratio: r in (0, 1]: negatives per user = int(n / r).
      rng: numpy generator (seeded per domain by the caller).

    Returns:
      (negative users, negative items, stats), grouped by user in sorted user order.
    """
    if not ratio > 0:
        raise DataError(f"negative sampling ratio must be > 0, got {ratio}")
    pool, item_code = np.unique(np.asarray(items).astype(str), return_inverse=True)
    ulist, user_code = np.unique(np.asarray(users).astype(str), return_inverse=True)
    P = np.int64(len(pool))
    n_pos = np.bincount(user_code, minlength=len(ulist))
    pos_keys = np.unique(user_code.astype(np.int64) * P + item_code)  # distinct (user, item)
    n_distinct = np.bincount(pos_keys // P, minlength=len(ulist))
    want = (n_pos / ratio).astype(np.int64)  # int(n / r), as MLoRA
    avail = P - n_distinct
    need = np.minimum(want, avail)
    chosen: list[np.ndarray] = []
    dense = np.flatnonzero((need > 0) & (3 * need >= avail))
    for u in dense:  # permute the complement of the user's items
        mine = pos_keys[np.searchsorted(pos_keys, u * P):np.searchsorted(pos_keys, (u + 1) * P)] - u * P
        comp = np.setdiff1d(np.arange(P), mine, assume_unique=True)
        chosen.append(u * P + rng.permutation(comp)[:need[u]])
    rem = need.copy()
    rem[dense] = 0
    taken = np.zeros(0, np.int64)
    while rem.sum() > 0:
        active = np.flatnonzero(rem > 0)
        draws = 2 * rem[active] + 8
        keys = np.repeat(active.astype(np.int64), draws) * P + rng.integers(0, P, size=int(draws.sum()))
        keys = keys[~np.isin(keys, pos_keys) & ~np.isin(keys, taken)]
        _, first = np.unique(keys, return_index=True)
        keys = keys[np.sort(first)]  # distinct, still grouped by user in draw order
        owner = keys // P
        starts = np.searchsorted(owner, owner, side="left")
        keep = (np.arange(len(keys)) - starts) < rem[owner]
        keys = keys[keep]
        rem -= np.bincount(keys // P, minlength=len(ulist))
        taken = np.sort(np.concatenate([taken, keys]))
    chosen.append(taken)
    allk = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    allk = allk[np.argsort(allk // P, kind="stable")]
    stats = {"users": int(len(ulist)), "pool_items": int(P), "negatives": int(len(allk)),
             "users_capped_by_pool": int((want > avail).sum())}
    return ulist[allk // P], pool[allk % P], stats


def add_negatives(frame: pd.DataFrame, ratios: Sequence[float], seed: int) -> tuple[pd.DataFrame, list[dict]]:
    """Appends sampled negatives (label 0) per domain to a positives frame (label 1)."""
    parts, stats = [frame.assign(label=np.float32(1.0))], []
    for k, r in enumerate(ratios):
        dom = frame[frame["domain"] == k]
        nu, ni, st = sample_negatives(dom["user"].to_numpy(), dom["item"].to_numpy(), r,
                                      np.random.default_rng([seed, k]))
        st.update(ratio=r, positives=int(len(dom)))
        stats.append(st)
        parts.append(pd.DataFrame({"user": nu, "item": ni, "rating": np.float32(np.nan), "domain": k,
                                   "label": np.float32(0.0)}))
    return pd.concat(parts, ignore_index=True), stats


# ----------------------------------------------------------------------------- prepare


def parse_category_map(value: str | dict | None) -> dict[str, list[str]]:
    """``--category_map``: JSON object (or a path to a JSON file) short name -> raw name(s)."""
    if value is None:
        return dict(MIDPG_CATEGORY_MAP)
    if isinstance(value, dict):
        obj = value
    else:
        text = value
        if os.path.isfile(value):
            with open(value, encoding="utf-8") as f:
                text = f.read()
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise DataError(f"--category_map: not a JSON object or a JSON file ({e})") from None
    if not isinstance(obj, dict) or not obj:
        raise DataError("--category_map: expected a non-empty JSON object {scenario: [category names]}")
    out = {str(k): ([v] if isinstance(v, str) else [str(x) for x in v]) for k, v in obj.items()}
    seen: dict[str, str] = {}
    for k, names in out.items():
        for n in names:
            if n in seen:
                raise DataError(f"--category_map: category {n!r} is mapped to both {seen[n]!r} and {k!r}")
            seen[n] = k
    return out


def prepare(
    output_dir: str,
    *,
    raw_path: str,
    recipe: str = "mlora6",
    release: str | None = None,
    categories: Sequence[str] | None = None,
    domain_source: str | None = None,
    label_rule: str | None = None,
    dedupe: bool | None = None,
    neg_ratio_range: Sequence[float] = (0.2, 0.5),
    neg_ratio_seed: int = 123,
    neg_ratios: Sequence[float] | None = None,
    category_map: str | dict | None = None,
    category_level: int = 1,
    meta_path: str | None = None,
    split_mode: str | None = None,
    split_ratios: Sequence[float] | None = None,
    seed: int | None = None,
    num_shards: int = 1,
    skip_bad_rows: bool = False,
) -> dict:
    """Prepares an Amazon multi-domain dataset; returns the schema (reusing identical output).

    Args:
      output_dir: destination (schema.json, vocab/, domain_<k>/).
      raw_path: folder holding the review (and metadata) files.
      recipe: "mlora6", "swr3" or "midpg10" (sets the defaults of the arguments below).
      release: "2014" (``reviews_{Cat}_5.json.gz``) or "2018" (``{Cat}_5.json.gz``).
      categories: review files, one per domain (file) or the single file (meta_category).
      domain_source: "file" (domain = category file) or "meta_category" (metadata join).
      label_rule: "sampled_negatives" (reviews = 1 + sampled 0s) or "gt3" (overall > 3).
      dedupe: drop duplicate (user, item, rating) rows (MLoRA).
      neg_ratio_range: r_k ~ U[lo, hi] per domain.
      neg_ratio_seed: seed of the Python ``random`` stream of the r_k (MLoRA: 123).
      neg_ratios: explicit r_k per domain (overrides the draw).
      category_map: scenario -> category names (JSON string/file or dict); meta_category only.
      category_level: index in the category path that is mapped (1 = second level).
      meta_path: metadata file (default ``meta_{Cat}.json.gz`` in ``raw_path``).
      split_mode: "stratified" (per domain and label) or "random".
      split_ratios: train/valid/test fractions.
      seed: split and negative-sampling seed.
      num_shards: TFRecord shards per (domain, split).
      skip_bad_rows: skip and count malformed lines instead of failing.
    """
    if recipe not in RECIPES:
        raise DataError(f"--recipe={recipe!r}: expected one of {sorted(RECIPES)}")
    r = RECIPES[recipe]
    release = release or r["release"]
    categories = list(categories or r["categories"])
    domain_source = domain_source or r["domain_source"]
    label_rule = label_rule or r["label_rule"]
    dedupe = r["dedupe"] if dedupe is None else bool(dedupe)
    split_mode = split_mode or r["split_mode"]
    split_ratios = [float(x) for x in (split_ratios or r["split_ratios"])]
    seed = r["seed"] if seed is None else int(seed)
    for name, val, allowed in (("release", release, RELEASES), ("domain_source", domain_source, DOMAIN_SOURCES),
                               ("label_rule", label_rule, LABEL_RULES), ("split_mode", split_mode, SPLIT_MODES)):
        if val not in allowed:
            raise DataError(f"--{name}={val!r}: expected one of {list(allowed)}")
    split_ratios = check_split_ratios(split_ratios)
    if not categories:
        raise DataError("--categories: at least one category is needed")
    cmap = None
    if category_map is not None and domain_source != "meta_category":
        raise DataError("--category_map applies to --domain_source=meta_category only")
    if domain_source == "meta_category":
        if len(categories) != 1:
            raise DataError(f"--domain_source=meta_category reads one review file, got categories={categories}")
        cmap = parse_category_map(category_map if category_map is not None else r.get("category_map"))
    files = [find_file(raw_path, review_file_names(c, release), f"{release} 5-core review") for c in categories]
    if cmap is not None:
        meta_path = meta_path or find_file(raw_path, meta_file_names(categories[0]), "metadata")
        files.append(meta_path)
    checksums = {os.path.basename(p): sha256_of_file(p) for p in files}
    options = dict(recipe=recipe, release=release, categories=categories, domain_source=domain_source,
                   label_rule=label_rule, dedupe=dedupe, split_mode=split_mode, split_ratios=split_ratios,
                   seed=seed, num_shards=num_shards, skip_bad_rows=skip_bad_rows)
    if label_rule == "sampled_negatives":
        options.update(neg_ratio_range=[float(x) for x in neg_ratio_range], neg_ratio_seed=neg_ratio_seed,
                       neg_ratios=None if neg_ratios is None else [float(x) for x in neg_ratios])
    if cmap is not None:
        options.update(category_map=cmap, category_level=category_level)
    fp = fingerprint({"dataset": "amazon", "options": options, "checksums": checksums})
    done = existing_output(output_dir, fp)
    if done is not None:
        log(f"reusing finished output in {output_dir} (same inputs and options)")
        return done

    meta: dict[str, Any] = {"skipped_bad_rows": 0}
    frames = []
    for k, (cat, path) in enumerate(zip(categories, files)):
        log(f"reading {path}")
        df, bad = read_reviews(path, skip_bad_rows)
        meta["skipped_bad_rows"] += bad
        if df.empty:
            raise DataError(f"{path}: no reviews")
        df["domain"] = k
        frames.append(df)
    frame = pd.concat(frames, ignore_index=True)
    per_file = {c: int((frame["domain"] == k).sum()) for k, c in enumerate(categories)}
    meta["reviews_per_file"] = per_file
    if cmap is not None:
        asins = set(frame["item"].unique().tolist())
        log(f"reading {meta_path} for {len(asins)} reviewed items")
        cat_of, bad = read_meta_categories(meta_path, asins, categories[0], category_level, skip_bad_rows)
        meta["skipped_bad_rows"] += bad
        to_short = {n: s for s, names in cmap.items() for n in names}
        raw_cat = frame["item"].map(cat_of)
        short = raw_cat.map(to_short)
        vc = raw_cat[short.isna() & raw_cat.notna()].value_counts()
        meta["meta_join"] = {
            "reviews_without_metadata_category": int(raw_cat.isna().sum()),
            "reviews_with_unmapped_category": int(vc.sum()),
            "top_unmapped_categories": {str(k): int(v) for k, v in vc.head(20).items()},
        }
        keep = short.notna().to_numpy()
        frame = frame[keep].reset_index(drop=True)
        short = short[keep].reset_index(drop=True)
        names = list(cmap)
        frame["domain"] = short.map({s: i for i, s in enumerate(names)}).astype(np.int64)
        empty = [n for i, n in enumerate(names) if not (frame["domain"] == i).any()]
        if empty:
            log(f"warning: scenarios without reviews: {empty}")
        domain_names = names
    else:
        domain_names = list(categories)
    if frame.empty:
        raise DataError(f"{raw_path}: no reviews left after the metadata join (check --category_map)")
    if dedupe:
        before = len(frame)
        frame = frame.drop_duplicates(["domain", "user", "item", "rating"], ignore_index=True)
        meta["duplicates_dropped"] = before - len(frame)
    num_domains = len(domain_names)
    if label_rule == "gt3":
        frame["label"] = (frame["rating"] > 3).astype(np.float32)
    else:
        if neg_ratios is not None:
            ratios = [float(x) for x in neg_ratios]
            if len(ratios) != num_domains or min(ratios) <= 0:
                raise DataError(f"--neg_ratios={ratios}: expected {num_domains} positive values")
        else:
            ratios = draw_ratios(num_domains, neg_ratio_range, neg_ratio_seed)
        log(f"sampling negatives, ratios {ratios}")
        frame, stats = add_negatives(frame, ratios, seed)
        meta["negative_sampling"] = {domain_names[k]: st for k, st in enumerate(stats)}
        meta["neg_ratios"] = ratios
    domain = frame["domain"].to_numpy(np.int64)
    label = frame["label"].to_numpy(np.float32)
    if split_mode == "stratified":
        split = stratified_split(label, domain, split_ratios, seed)
    else:
        split = random_split(len(frame), split_ratios, seed)
    columns, vocabs = {}, {}
    for name, col in (("user_id", "user"), ("item_id", "item")):
        columns[name], vocabs[name] = encode_categorical(frame[col], name)
    feats = [FeatureDef("user_id", "categorical", len(vocabs["user_id"]), "user", True),
             FeatureDef("item_id", "categorical", len(vocabs["item_id"]), "item", True)]
    meta["domain_stats"] = {
        domain_names[k]: {"rows": int((domain == k).sum()), "users": int(frame["user"][domain == k].nunique()),
                          "items": int(frame["item"][domain == k].nunique())} for k in range(num_domains)}
    return write_dataset(
        output_dir, dataset=f"amazon-{recipe}", features=feats, columns=columns, domain=domain,
        domain_names=domain_names, labels={"label": label}, split=split, vocabs=vocabs, fp=fp,
        num_shards=num_shards,
        metadata={"source": os.path.abspath(raw_path), "checksums": checksums, "options": options, **meta,
                  "label_rule_text": {"gt3": "overall > 3",
                                      "sampled_negatives": "review = 1, sampled non-reviewed items = 0"}[label_rule]})


# ----------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("recipe", "mlora6", sorted(RECIPES), "Paper recipe (sets the defaults below).")
    flags.DEFINE_string("raw_path", None, "Folder with the review (and metadata) files.")
    flags.DEFINE_string("output_dir", None, "Output directory.")
    flags.DEFINE_enum("release", None, list(RELEASES), "2014 (reviews_{Cat}_5) or 2018 ({Cat}_5); recipe default.")
    flags.DEFINE_list("categories", None, "Categories (file names with spaces or underscores); recipe default.")
    flags.DEFINE_enum("domain_source", None, list(DOMAIN_SOURCES), "file or meta_category; recipe default.")
    flags.DEFINE_enum("label_rule", None, list(LABEL_RULES),
                      "sampled_negatives (MLoRA) or gt3 (overall > 3); recipe default.")
    flags.DEFINE_boolean("dedupe", None, "Drop duplicate (user, item, rating) rows; recipe default.")
    flags.DEFINE_list("neg_ratio_range", ["0.2", "0.5"], "Per-domain ratio r ~ U[lo, hi]; negatives = int(n/r).")
    flags.DEFINE_integer("neg_ratio_seed", 123, "Seed of the ratio draws (Python random; MLoRA: 123).")
    flags.DEFINE_list("neg_ratios", None, "Explicit per-domain ratios (override the draws).")
    flags.DEFINE_string("category_map", None,
                        "meta_category: JSON object (or JSON file) scenario -> category names. Default: MI-DPG's "
                        "10 Electronics scenarios (unconfirmed mapping, see the module docstring).")
    flags.DEFINE_integer("category_level", 1, "Index of the category-path level that is mapped.")
    flags.DEFINE_string("meta_path", None, "Metadata file (default meta_{Cat}.json.gz in --raw_path).")
    flags.DEFINE_enum("split_mode", None, list(SPLIT_MODES), "stratified or random; recipe default.")
    flags.DEFINE_list("split_ratios", None, "train,valid,test fractions; recipe default.")
    flags.DEFINE_integer("seed", None, "Split and negative-sampling seed; recipe default.")
    flags.DEFINE_integer("num_shards", 1, "TFRecord shards per domain and split.")
    flags.DEFINE_boolean("skip_bad_rows", False, "Skip and count malformed lines instead of failing.")


def _prepare_from_flags(f: flags.FlagValues) -> None:
    floats = lambda v: None if v is None else [float(x) for x in v]  # noqa: E731
    prepare(f.output_dir, raw_path=f.raw_path, recipe=f.recipe, release=f.release,
            categories=f.categories, domain_source=f.domain_source, label_rule=f.label_rule,
            dedupe=f.dedupe, neg_ratio_range=floats(f.neg_ratio_range),
            neg_ratio_seed=f.neg_ratio_seed, neg_ratios=floats(f.neg_ratios),
            category_map=f.category_map, category_level=f.category_level, meta_path=f.meta_path,
            split_mode=f.split_mode, split_ratios=floats(f.split_ratios), seed=f.seed,
            num_shards=f.num_shards, skip_bad_rows=f.skip_bad_rows)


def cli() -> None:
    run_cli(define_flags, _prepare_from_flags, required=("raw_path", "output_dir"))


if __name__ == "__main__":
    cli()
