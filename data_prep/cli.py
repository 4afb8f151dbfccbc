"""Command-line entry point shared by the preprocessors and the experiment scripts.

``run_cli`` defines ``--full_hash`` and ``--allow_empty_splits`` for every script;
``define_streaming_flags`` defines the flags the streaming preprocessors (Ali-CCP,
IJCAI-18, KuaiRand) share, once.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from data_prep import base
from data_prep.base import DataError
from data_prep.streaming import StreamSource


#: Lines TensorFlow's C++ runtime prints at start-up on every run (not errors).
_TF_STARTUP_NOISE = (b"All log messages before absl::InitializeLog()", b"oneDNN custom operations are on",
                     b"cpu_feature_guard", b"This TensorFlow binary is optimized",
                     b"To enable the following instructions")


def quiet_tensorflow_startup() -> None:
    """Drops TensorFlow's C++ start-up lines (oneDNN, CPU features, absl pre-init notice) from stderr.

    They are written by C++ before ``TF_CPP_MIN_LOG_LEVEL`` applies, so fd 2 is routed
    through a pipe whose reader thread forwards every other line unchanged. Called by the
    command-line entry points (``run_cli``); ``MDR_TF_TF_LOGS=1`` keeps the lines.
    """
    import atexit
    import threading

    if os.environ.get("MDR_TF_TF_LOGS") == "1" or getattr(quiet_tensorflow_startup, "active", False):
        return
    sys.stderr.flush()
    orig = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    quiet_tensorflow_startup.active = True

    def forward(data: bytes) -> None:
        if data:
            os.write(orig, data)

    def pump() -> None:
        pending = b""
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            forward(b"".join(x + b"\n" for x in lines if not any(n in x for n in _TF_STARTUP_NOISE)))
            if pending and not pending.startswith((b"I0000", b"W0000", b"WARNING: All")):
                forward(pending)  # a partial line (progress output): no delay
                pending = b""
        if pending and not any(n in pending for n in _TF_STARTUP_NOISE):
            forward(pending)
        os.close(r)

    thread = threading.Thread(target=pump, name="tf-startup-filter", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(orig, 2)  # the pipe's write end closes: the reader drains and ends
        thread.join(timeout=2)

    atexit.register(restore)


def run_cli(define_flags: Callable[[], None], body: Callable[[Any], Any], required: Sequence[str] = (),
            errors: tuple[type[BaseException], ...] = (DataError,)) -> None:
    """Shared absl entry point of the preprocessors and experiment scripts: defines the
    flags, checks the ``required`` ones, runs ``body(FLAGS)`` and turns an expected error
    (default ``DataError``: bad input, the message names the file, line or feature) into
    ``error: ...`` on stderr and exit status 1."""
    from absl import app, flags

    quiet_tensorflow_startup()
    define_flags()
    if "full_hash" not in flags.FLAGS:
        flags.DEFINE_boolean("full_hash", False, "Identify raw input files by a sha256 of their whole content "
                             "(default: whole for files up to 64 MiB; larger ones by size, mtime, first and "
                             "last MiB). Decides whether a finished output is reused.")
    if "allow_empty_splits" not in flags.FLAGS:
        flags.DEFINE_boolean("allow_empty_splits", False, "Write a dataset whose train, valid or test split "
                             "is empty (with a warning) instead of failing.")

    def main(argv: Sequence[str]) -> None:
        del argv
        missing = [name for name in required if not getattr(flags.FLAGS, name)]
        if missing:
            raise app.UsageError(" and ".join(f"--{name}" for name in required)
                                 + (" are required" if len(required) > 1 else " is required"))
        StreamSource.FULL_HASH = bool(flags.FLAGS.full_hash)
        base.ALLOW_EMPTY_SPLITS = bool(flags.FLAGS.allow_empty_splits)
        try:
            body(flags.FLAGS)
        except errors as e:
            raise SystemExit(f"error: {e}")
        except KeyboardInterrupt:
            print("\ninterrupted (Ctrl-C): finished work is kept; rerun the same command to resume",
                  file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    app.run(main)


def define_streaming_flags(*, raw_path_help: str, num_shards: int, num_shards_help: str = "Shards per (domain, split).",
                           block_mb: float, block_mb_help: str = "MiB of lines parsed per block.") -> None:
    """The flags every streaming preprocessor (Ali-CCP, IJCAI-18, KuaiRand) has, defined once.

    ``--raw_path``, ``--output_dir``, ``--num_shards``, ``--block_mb``, ``--skip_bad_rows``
    and ``--keep_work``; the defaults that differ per dataset are arguments.
    """
    from absl import flags

    flags.DEFINE_string("raw_path", None, raw_path_help)
    flags.DEFINE_string("output_dir", None, "Output directory.")
    flags.DEFINE_integer("num_shards", num_shards, num_shards_help)
    flags.DEFINE_float("block_mb", block_mb, block_mb_help)
    flags.DEFINE_boolean("skip_bad_rows", False, "Skip and count malformed lines instead of failing.")
    flags.DEFINE_boolean("keep_work", False, "Keep the work directory after success.")
