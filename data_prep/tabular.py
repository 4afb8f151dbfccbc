"""Whole-array (pandas) encoding and splits: categorical ids, domain ids, train/valid/test."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from data_prep.base import DataError


def encode_categorical(
    values: pd.Series,
    name: str,
    fit_mask: np.ndarray | None = None,
    min_freq: int = 1,
) -> tuple[np.ndarray, list[str]]:
    """Map raw values to ids 1..V (0 = OOV), vocabulary sorted by descending frequency.

    Args:
      values: raw column.
      name: feature name (for error messages).
      fit_mask: rows whose values define the vocabulary (e.g. the train split);
        all rows when None.
      min_freq: values seen fewer times in the fitting rows map to 0.

    Returns:
      (ids int64 array, vocabulary list whose index is the id; entry 0 is "<OOV>").
    """
    s = values.astype(str)
    fit = s if fit_mask is None else s[fit_mask]
    counts = fit.value_counts(sort=False)
    counts = counts[counts >= min_freq]
    # Deterministic order: frequency desc, then value.
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab = ["<OOV>"] + [k for k, _ in order]
    index = {v: i for i, v in enumerate(vocab) if i > 0}
    ids = s.map(index).fillna(0).to_numpy(dtype=np.int64)
    if len(vocab) < 2:
        raise DataError(f"feature {name!r}: empty vocabulary (no value reaches min_freq={min_freq})")
    return ids, vocab


def remap_domains(raw: pd.Series, order: Sequence[Any] | None = None) -> tuple[np.ndarray, list[str]]:
    """Remap raw domain values to contiguous ids 0..K-1.

    Args:
      raw: raw domain value per row.
      order: the raw values in id order; sorted unique values when None. Values not
        in ``order`` are an error (the caller filters rows first).
    """
    values = list(order) if order is not None else sorted(raw.unique().tolist())
    index = {v: i for i, v in enumerate(values)}
    unknown = set(raw.unique().tolist()) - set(index)
    if unknown:
        raise DataError(f"domain values {sorted(map(str, unknown))[:5]} are not in the domain map {values}")
    return raw.map(index).to_numpy(dtype=np.int64), [str(v) for v in values]


def check_split_ratios(split_ratios: Sequence[float]) -> list[float]:
    """Validates ``--split_ratios`` (three non-negative fractions summing to 1); returns floats."""
    ratios = [float(x) for x in split_ratios]
    if len(ratios) != 3 or abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) < 0:
        raise DataError(f"--split_ratios={ratios}: expected three non-negative fractions summing to 1")
    return ratios


def random_split(n: int, ratios: Sequence[float], seed: int) -> np.ndarray:
    """Seeded random split; returns an int8 array with 0=train, 1=valid, 2=test."""
    if len(ratios) != 3 or abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) < 0:
        raise DataError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(ratios[0] * n))
    n_valid = int(round(ratios[1] * n))
    split = np.empty(n, dtype=np.int8)
    split[perm[:n_train]] = 0
    split[perm[n_train:n_train + n_valid]] = 1
    split[perm[n_train + n_valid:]] = 2
    return split


def stratified_split(labels: np.ndarray, groups: np.ndarray, ratios: Sequence[float], seed: int) -> np.ndarray:
    """Seeded split stratified by (group, label): MLoRA's per-domain stratified 60/20/20."""
    split = np.empty(len(labels), dtype=np.int8)
    rng = np.random.default_rng(seed)
    keys = groups.astype(np.int64) * 2 + (labels > 0.5)
    for key in np.unique(keys):
        idx = np.flatnonzero(keys == key)
        idx = idx[rng.permutation(len(idx))]
        n_train = int(round(ratios[0] * len(idx)))
        n_valid = int(round(ratios[1] * len(idx)))
        split[idx[:n_train]] = 0
        split[idx[n_train:n_train + n_valid]] = 1
        split[idx[n_train + n_valid:]] = 2
    return split
