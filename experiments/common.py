"""Helpers shared by the experiment scripts (``experiments/*.py``): one public home.

- ``TrialLog`` / ``TrialsFailed``: the resumable JSONL trial log.
- ``trial_key``: the fingerprint that identifies a trial (model, resolved arguments, training, data).
- ``prepare_dataset``: prepare or reuse a registered dataset.
- ``parse_options`` / ``parse_shard``: ``--dataset_options`` and ``i/n`` shard flags.
- ``git_commit`` / ``versions``: provenance for ``run_meta.json``.
- ``atomic_write``: text written atomically (``mdr_base.atomic.write_text_atomic``).

Flag definitions stay with ``experiments.run`` (``define_data_flags``, ``define_training_flags``, ...).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any, Sequence

from absl import app

from mdr_base.atomic import write_text_atomic as atomic_write  # noqa: F401  (the experiments' name)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def versions() -> dict[str, str]:
    import keras
    import numpy
    import pandas
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__, "pandas": pandas.__version__, "platform": platform.platform(),
            "cpus": str(os.cpu_count())}


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise app.UsageError(f"--dataset_options: expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def prepare_dataset(name: str, data_dir: str, raw_path: str | None, options: dict[str, Any]) -> str:
    """Prepares (or reuses) a registered dataset and returns its directory."""
    from data_prep import registry as data_registry

    fn, defaults = data_registry.get(name)
    kwargs = {**defaults, **options}
    suffix = "" if not options else "-" + "-".join(f"{k}={v}" for k, v in sorted(options.items()))
    out = os.path.join(data_dir, name + suffix.replace("/", "_").replace(" ", ""))
    if raw_path is not None:
        kwargs["raw_path"] = raw_path
    fn(out, **kwargs)
    return out


# Bumped when the training arithmetic changes for every model, so resumable trial logs do
# not mix results of the old and new code. 2 (2026-11-30): sparse (gather) gradients have
# their duplicate ids summed before the optimizer (mdr_tf.optimizers.sum_duplicate_rows).
TRAINING_REVISION = 2


def trial_key(name: str, cfg, kwargs: dict[str, Any], data_fp: str) -> str:
    from data_prep.common import fingerprint

    from mdr_tf import registry

    train = {k: v for k, v in vars(cfg).items() if k not in ("verbose", "tensorboard_dir", "checkpoint_dir")}
    if train.get("optimizer") == "adam":  # the default, added later: trials logged before keep their keys
        del train["optimizer"]
    spec = registry.get(name)
    # Every argument the model is built with: the builder's (and its class's) signature
    # defaults, then the registry entry's, then the run's; a changed default of any of
    # them must not reuse old trials.
    resolved = {**spec.builder_defaults(), **spec.defaults, **kwargs}
    resolved = json.loads(json.dumps(resolved, sort_keys=True, default=_stable_repr))
    return fingerprint({"model": name, "seed": cfg.seed, "train": train, "model_kwargs": resolved,
                        "builder": spec.builder, "procedure": spec.procedure, "data": data_fp,
                        "training_revision": TRAINING_REVISION})


def _stable_repr(value: Any) -> str:
    """``repr`` of a non-JSON argument for the trial key; refuses one that names a memory address."""
    text = repr(value)
    if " at 0x" in text:
        raise TypeError(f"model argument {text} has no stable representation for the trial key; use a "
                        "name or a config dict (e.g. an initializer's name) instead")
    return text


class TrialsFailed(ValueError):
    """Some trials failed (e.g. a non-finite loss); the tables hold only the others."""


class TrialLog:
    """Append-only JSONL of finished trials; the key makes reruns skip finished work.

    A failed trial is logged with ``"status": "failed"`` and its error; it is kept apart
    (``failed``), left out of the tables and run again by a rerun.

    Reads every ``trials*.jsonl`` in the folder (shards of one sweep written by several
    processes or machines and copied together), appends to its own file only.
    """

    def __init__(self, path: str, pattern: str = "trials*.jsonl"):
        import glob

        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        seen = set()
        for p in sorted(glob.glob(os.path.join(os.path.dirname(path) or ".", pattern))):
            self._read(p, seen)

    def _read(self, path: str, seen: set) -> None:
        if os.path.exists(path):
            with open(path) as f:
                for lineno, line in enumerate(f, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        # A line cut by a kill mid-write: ignore it (the trial reruns).
                        print(f"warning: {path}:{lineno}: unreadable line skipped", file=sys.stderr)
                        continue
                    if row.get("status") == "failed":
                        self.failed.append(row)
                        continue
                    if row.get("key") not in seen:
                        seen.add(row.get("key"))
                        self.rows.append(row)

    def done(self, key: str) -> dict[str, Any] | None:
        for r in self.rows:
            if r.get("key") == key:
                return r
        return None

    def append(self, row: dict[str, Any]) -> None:
        """Appends one line; first ends a line cut by a kill, so the new row stays readable."""
        cut = False
        if os.path.exists(self.path) and os.path.getsize(self.path):
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        with open(self.path, "a") as f:
            f.write(("\n" if cut else "") + json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        (self.failed if row.get("status") == "failed" else self.rows).append(row)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise app.UsageError(f"--trial_shard={text!r}: expected i/n, e.g. 0/2")
    return i, n


def fused_epoch(model, schema, batch_size: int, steps_per_execution: int):
    """A function training ``model`` one epoch on the default fused path; returns the samples.

    What ``mdr_tf.training.fit`` does (``mdr_tf.fused``: the train split's columns in memory,
    K = ``steps_per_execution`` steps of [B] row indices per compiled call, seeded shuffle,
    last partial batch dropped). ``model`` must be compiled with ``steps_per_execution=1``.
    """
    from mdr_tf.data import in_memory_index_batches
    from mdr_tf.fused import install_on_columns

    def index_blocks():
        return in_memory_index_batches(schema, "train", batch_size, shuffle=True, seed=0, mode="mixed",
                                       domains=list(range(schema.num_domains)),
                                       label_key=schema.label_keys[0], drop_remainder=True)

    feats, labels, _ = index_blocks()
    install_on_columns(model, feats, labels, batch_size, jit_compile=model.jit_compile)
    ds = index_blocks()[2].batch(steps_per_execution)
    n_fit = (len(labels) // batch_size) * batch_size

    def epoch() -> int:
        model.fit(ds, epochs=1, verbose=0)
        return n_fit

    return epoch
