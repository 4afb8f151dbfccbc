"""Atomic writes: every output file or directory appears complete or not at all.

One helper family for the whole project (``data_prep``, ``mdr_tf``, ``experiments``):
content is written under a temporary name next to the target, then renamed into place
(``os.replace`` / ``os.rename`` are atomic within one file system). An interrupted
writer leaves at most a ``*.tmp-<pid>*`` file or directory, never a half-written target.

- ``atomic_path(path)``: context manager yielding a temp file path for any writer
  (``np.savez``, ``fig.savefig``); renamed into place on success, removed on error.
- ``write_text_atomic`` / ``write_json_atomic`` / ``savez_atomic``: the common cases.
- ``AtomicDir(final)``: a temp directory renamed into place (replacing an older one).
- ``mkdtemp_honouring_umask``: ``tempfile.mkdtemp`` with the umask's mode (for
  directories renamed into place that other accounts, e.g. TF Serving, must read).

Imports only the standard library (and NumPy in ``savez_atomic``): safe for TF-free code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator


def mkdtemp_honouring_umask(prefix: str, dir: str) -> str:
    """``tempfile.mkdtemp`` whose directory gets the mode the umask gives (mkdtemp's is 0700).

    The temp directory is renamed into place as the final output, which other users
    (e.g. TF Serving running as another account) must be able to read.
    """
    tmp = tempfile.mkdtemp(prefix=prefix, dir=dir)
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "", makedirs: bool = False) -> Iterator[str]:
    """Yields a temp path next to ``path``; renames it to ``path`` when the block succeeds.

    Args:
      path: the final file.
      suffix: ends the temp name (e.g. ".png" so ``savefig`` picks the format).
      makedirs: create the parent directory first.

    On an exception the temp file is removed and ``path`` is left as it was.
    """
    if makedirs:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str, makedirs: bool = False) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path, makedirs=makedirs) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON (plus a final newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def savez_atomic(path: str, **arrays: Any) -> None:
    """``np.savez`` to exactly ``path`` (no ``.npz`` appended), atomically."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


class AtomicDir:
    """Context manager: yields a temp dir next to ``final``; renames it into place on success.

    An existing ``final`` is replaced (moved aside, then deleted); on an exception the
    temp dir is deleted and ``final`` is untouched.
    """

    def __init__(self, final: str):
        self.final = os.path.abspath(final)
        self.tmp = ""

    def __enter__(self) -> str:
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        self.tmp = mkdtemp_honouring_umask(os.path.basename(self.final) + ".tmp-", parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        replace_dir(self.tmp, self.final)


def replace_dir(src: str, final: str) -> None:
    """Renames directory ``src`` to ``final``, replacing an existing ``final`` (moved aside, then deleted)."""
    if os.path.exists(final):
        old = final + f".old-{os.getpid()}"
        os.rename(final, old)
        os.rename(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, final)
