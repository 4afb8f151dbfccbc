"""Reading raw files from a zip, a directory, or the recbole wheel cache, with line-level checks."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile
from typing import Callable, Sequence

from data_prep.common import DataError, log, sha256_of_file

# The recbole 1.2.1 wheel on PyPI carries an exact copy of MovieLens-100k
# (recbole/dataset_example/ml-100k/). Pinned by the wheel's sha256 as published on PyPI.
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
DEFAULT_CACHE = os.environ.get("MDR_TF_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mdr_tf"))


def fetch_recbole_wheel(cache_dir: str = DEFAULT_CACHE) -> str:
    """Returns the path of the cached recbole wheel, downloading it with pip if needed."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, RECBOLE_WHEEL)
    if not os.path.exists(path):
        log(f"downloading {RECBOLE_WHEEL} (carries MovieLens-100k) into {cache_dir} ...")
        tmp = path + ".part"
        tmpdir = cache_dir + "/.pip-download"
        os.makedirs(tmpdir, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "recbole==1.2.1", "-d", tmpdir],
            capture_output=True, text=True)
        found = glob.glob(os.path.join(tmpdir, RECBOLE_WHEEL))
        if proc.returncode != 0 or not found:
            raise DataError(
                "could not download recbole==1.2.1 from PyPI to obtain MovieLens-100k "
                f"(pip said: {proc.stderr.strip()[-400:]}). Pass --raw_path=<ml-100k.zip or folder> instead.")
        os.replace(found[0], tmp)
        os.replace(tmp, path)
    digest = sha256_of_file(path)
    if digest != RECBOLE_SHA256:
        raise DataError(f"{path}: sha256 {digest} does not match the published recbole 1.2.1 wheel "
                        f"({RECBOLE_SHA256}); delete it and retry")
    return path


class RawSource:
    """Files of one raw dataset: a zip archive or a directory, looked up by base name."""

    def __init__(self, path: str, prefix_in_zip: str = ""):
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file or directory")
        self.path = path
        self.prefix = prefix_in_zip
        self.is_zip = os.path.isfile(path)
        if self.is_zip and not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not a zip archive (expected a zip or an extracted folder)")
        self._zip = zipfile.ZipFile(path) if self.is_zip else None

    def _find(self, name: str) -> str:
        if self._zip is not None:
            names = self._zip.namelist()
            if self.prefix and self.prefix + name in names:
                return self.prefix + name
            cands = [n for n in names if n == name or n.endswith("/" + name)]
            if not cands:
                raise DataError(f"{self.path}: archive has no file {name!r}")
            return sorted(cands, key=len)[0]
        cands = [os.path.join(self.path, name)] + glob.glob(os.path.join(self.path, "*", name))
        cands = [c for c in cands if os.path.isfile(c)]
        if not cands:
            raise DataError(f"{self.path}: no file {name!r} in this folder or its subfolders")
        return cands[0]

    def has(self, name: str) -> bool:
        try:
            self._find(name)
            return True
        except DataError:
            return False

    def read_bytes(self, name: str) -> tuple[bytes, str]:
        """Returns (content, display path for error messages)."""
        where = self._find(name)
        if self._zip is not None:
            return self._zip.read(where), f"{self.path}!{where}"
        with open(where, "rb") as f:
            return f.read(), where

    def read_text(self, name: str, encoding: str = "utf-8") -> tuple[str, str]:
        data, where = self.read_bytes(name)
        try:
            return data.decode(encoding), where
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: byte offset {e.start} is not valid {encoding}") from e


def parse_lines(
    text: str,
    where: str,
    sep: str,
    columns: Sequence[str],
    converters: dict[str, Callable[[str], object]],
    *,
    header: bool = False,
    skip_bad: bool = False,
    min_fields: int | None = None,
) -> tuple[dict[str, list], int]:
    """Splits delimited text into columns, checking field counts and types line by line.

    Args:
      text: file content.
      where: file name for messages.
      sep: field separator (literal string, e.g. "::").
      columns: names of the leading fields to keep.
      converters: per column, a function raising ValueError on bad values.
      header: skip the first line.
      skip_bad: count and skip malformed lines instead of raising.
      min_fields: minimal number of fields (default len(columns)); lines may have more.

    Returns:
      (column -> list of values, number of skipped lines).
    """
    need = min_fields or len(columns)
    out: dict[str, list] = {c: [] for c in columns}
    bad = 0
    # Split on "\n" only: str.splitlines() also breaks at \x85, \x1c-\x1e, \u2028, which
    # occur in latin-1 text and would cut a record in two and shift line numbers.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    start = 1 if header else 0
    for lineno in range(start, len(lines)):
        line = lines[lineno]
        if not line.strip():
            continue
        parts = line.split(sep)
        err = None
        if len(parts) < need:
            err = f"expected {need} fields separated by {sep!r}, found {len(parts)}"
            vals = None
        else:
            vals = []
            for c, p in zip(columns, parts):
                conv = converters.get(c)
                try:
                    vals.append(conv(p) if conv else p)
                except ValueError:
                    err = f"field {c!r} = {p!r} is not a valid {getattr(conv, '__name__', 'value')}"
                    break
        if err is not None:
            if skip_bad:
                bad += 1
                continue
            raise DataError(f"{where}:{lineno + 1}: {err}; line was {line[:120]!r}")
        for c, v in zip(columns, vals):
            out[c].append(v)
    return out, bad
