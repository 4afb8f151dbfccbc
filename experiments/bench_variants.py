"""Interleaved training cost of registry models and variants (constructor overrides).

Each variant is ``label=model`` or ``label=model:{json kwargs}``; all are built on one
dataset's schema, compiled (XLA, ``steps_per_execution``) and trained on the same random
batches in interleaved rounds inside this one process, so that the machine's load hits
them alike. Prints samples per process-CPU second (median over rounds) and the cost
relative to the first variant.

Usage::

    python -m experiments.bench_variants --data_dir=data/ml100k --threads=1 \\
        --variants='dnn=dnn' --variants='pepnet=pepnet' \\
        --variants='pepnet_old=pepnet:{"gate_embeddings": false, "ppnet_gate_position": "after"}'
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("data_dir", None, "Prepared dataset folder (its schema.json is used).")
    flags.DEFINE_multi_string("variants", [], "label=model or label=model:{json constructor kwargs}.")
    flags.DEFINE_integer("batch_size", 512, "Batch size.")
    flags.DEFINE_integer("steps", 64, "Train steps per round.")
    flags.DEFINE_integer("rounds", 5, "Interleaved rounds (median reported).")
    flags.DEFINE_integer("steps_per_execution", 16, "Train steps per compiled call.")
    flags.DEFINE_integer("threads", 1, "TF intra/inter-op threads (0: TF default).")


def parse_variant(text: str) -> tuple[str, str, dict[str, Any]]:
    """``label=model[:{json}]`` → (label, model, kwargs)."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise ValueError(f"--variants {text!r}: expected label=model or label=model:{{json}}")
    model, _, kwargs = rest.partition(":")
    try:
        args = json.loads(kwargs) if kwargs else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--variants {text!r}: kwargs are not JSON ({e})") from e
    return label, model, args


def body(FLAGS) -> None:
    import numpy as np
    import tensorflow as tf

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    import keras

    from mdr_tf import registry
    from mdr_tf.schema import Schema

    variants = [parse_variant(v) for v in FLAGS.variants]
    if not variants:
        raise ValueError("give at least one --variants")
    schema = Schema.load(FLAGS.data_dir)
    rng = np.random.default_rng(0)
    n = FLAGS.batch_size * 4
    x = {f.name: (rng.integers(0, f.vocab_size, n) if f.kind == "categorical" else rng.random(n)).astype(
        np.int64 if f.kind == "categorical" else np.float32) for f in schema.features}
    x[schema.domain_key] = (np.arange(n) % schema.num_domains).astype(np.int64)
    y = rng.integers(0, 2, [n, 1]).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(FLAGS.batch_size).repeat().take(FLAGS.steps)
    models = {}
    for label, name, kwargs in variants:
        keras.utils.set_random_seed(0)
        m = registry.get(name).build(schema, **kwargs)
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=True,
                  steps_per_execution=FLAGS.steps_per_execution)
        m.fit(ds, epochs=1, verbose=0)  # compile outside the timed rounds
        models[label] = m
    rates: dict[str, list[float]] = {label: [] for label in models}
    for r in range(FLAGS.rounds):
        for label, m in models.items():
            t0 = time.process_time()
            m.fit(ds, epochs=1, verbose=0)
            rates[label].append(FLAGS.batch_size * FLAGS.steps / (time.process_time() - t0))
        print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)
    base = float(np.median(rates[variants[0][0]]))
    for label, v in rates.items():
        med = float(np.median(v))
        print(f"{label:28s} {med / 1e3:7.1f}k samples/CPU-s   cost vs {variants[0][0]}: {base / med:.2f}x")


if __name__ == "__main__":
    from data_prep.common import run_cli

    run_cli(define_flags, body, required=("data_dir",), errors=(ValueError, FileNotFoundError))
