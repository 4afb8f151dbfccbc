"""Constants, errors, logging, fingerprints and input checks shared by every preprocessor.

TF-free. ``FeatureDef`` is ``mdr_base.features.Feature`` (the one feature type; also
``mdr_tf.schema.Feature``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any

import numpy as np

from mdr_base.features import Feature

SCHEMA_FILE = "schema.json"
SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
OOV_TOKEN = "<OOV>"

#: A model input column of ``schema.json`` (the write side's name for ``mdr_base.features.Feature``).
FeatureDef = Feature


class DataError(ValueError):
    """Bad input data: the message names the file, line or field and what was expected."""


def log(msg: str) -> None:
    print(f"[data_prep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (options + source checksums)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]



def check_finite(arrays: dict[str, np.ndarray], row_offset: int = 0, what: str = "") -> None:
    """Raises ``DataError`` naming the column and row of the first NaN / inf in float ``arrays``.

    Non-finite feature values or labels would train a model to ``loss nan`` and reach the
    results table silently; they are rejected where the dataset is written.

    Args:
      arrays: column name -> 1-D array (non-float columns are skipped).
      row_offset: row number of element 0 (for writers that receive batches).
      what: where the rows come from, for the message (e.g. the input file).
    """
    for name, arr in arrays.items():
        a = np.asarray(arr)
        if a.dtype.kind != "f":
            continue
        bad = ~np.isfinite(a)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{what + ': ' if what else ''}column {name!r}: non-finite value {a[i]!r} at row "
                            f"{row_offset + i} ({int(bad.sum())} non-finite values in this column); fix or drop "
                            "these rows before writing the dataset")


#: ``--allow_empty_splits`` of the command-line scripts: an empty split is a warning, not an error.
ALLOW_EMPTY_SPLITS = False


def check_splits_not_empty(examples_per_split: dict[str, int], what: str) -> None:
    """Raises ``DataError`` when a split (over all domains) has no examples.

    An empty valid or test split would train without early stopping or report metrics of
    nothing with exit status 0. With ``ALLOW_EMPTY_SPLITS`` it is a loud warning instead.
    """
    empty = [s for s in SPLITS if examples_per_split.get(s, 0) == 0]
    if not empty:
        return
    msg = (f"{what}: " + ", ".join(f"split {s!r} is empty" for s in empty)
           + f" (examples per split: {dict(examples_per_split)}); check the input files and split options")
    if ALLOW_EMPTY_SPLITS:
        log("WARNING: " + msg + " (kept: --allow_empty_splits)")
        return
    raise DataError(msg + ", or pass --allow_empty_splits")
