"""Epoch stalls from tf.data autotuning threads (the cause of the 2–60× slow epochs).

``mdr_tf.training.fit`` calls Keras' ``fit`` once per epoch. Each call leaves its epoch
iterator in a reference cycle (Keras' ``TFEpochIterator`` and its generator), so the
tf.data iterator is destroyed only when Python's garbage collector runs, and destroying an
iterator waits for its autotuning thread, asleep for seconds by then. This script trains
``--epochs`` one-epoch ``fit`` calls of each model on the default fused path (one dataset
for all calls, or a new one per call as ``fit`` does: ``--noreuse_dataset``), with
autotuning as mdr_tf sets it (off) and switched back on, each in its own process (an
iterator leaked by one setting must not stall the other's epoch), and prints per-epoch
wall and CPU time, Python collections during each epoch and the stalls (epochs over 3×
the median).

  python -m experiments.bench_epoch_stalls --models=apg,dnn --epochs=40
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from typing import Sequence

from absl import app, flags

FLAGS = flags.FLAGS


def run_one(model_name: str, autotune: bool, epochs: int, batch_size: int, steps: int) -> dict:
    """Trains ``epochs`` one-epoch ``fit`` calls in this process; per-epoch timings."""
    import keras
    import tensorflow as tf

    from experiments.common import prepare_dataset
    from mdr_tf import registry
    from mdr_tf.data import in_memory_index_batches
    from mdr_tf.fused import install_on_columns
    from mdr_tf.schema import Schema
    from mdr_tf.training import TrainConfig, compile_model

    schema = Schema.load(prepare_dataset(FLAGS.dataset, FLAGS.data_dir, None, {}))
    keras.utils.set_random_seed(0)
    model = registry.get(model_name).build(schema)
    model.build()
    compile_model(model, TrainConfig(batch_size=batch_size, steps_per_execution=1))

    def blocks(seed):
        return in_memory_index_batches(schema, "train", batch_size, shuffle=True, seed=seed, mode="mixed",
                                       domains=list(range(schema.num_domains)), label_key=schema.label_keys[0],
                                       drop_remainder=True)

    feats, labels, _ = blocks(0)
    install_on_columns(model, feats, labels, batch_size, jit_compile=model.jit_compile)
    options = tf.data.Options()
    options.autotune.enabled = autotune

    collections = [0]
    gc.callbacks.append(lambda phase, info: collections.__setitem__(0, collections[0] + (phase == "stop")))
    rows = []
    reused = blocks(0)[2].batch(steps).with_options(options)
    for epoch in range(epochs + 1):  # epoch 0 compiles
        # A user loop calling fit(ds, epochs=1) on one dataset (as experiments.benchmark does), or
        # a new dataset per epoch (as mdr_tf.training.fit does).
        c0, t, c = collections[0], time.perf_counter(), time.process_time()  # the dataset's making included
        ds = reused if FLAGS.reuse_dataset else blocks(epoch)[2].batch(steps).with_options(options)
        model.fit(ds, epochs=1, verbose=0)
        if epoch:
            rows.append({"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                         "collections": collections[0] - c0})
    return {"model": model_name, "autotune": autotune, "epochs": rows}


def summary(result: dict) -> str:
    walls = [r["wall_s"] for r in result["epochs"]]
    med = statistics.median(walls)
    stalls = [(i + 1, r) for i, r in enumerate(result["epochs"]) if r["wall_s"] > 3 * med]
    setting = "on " if result["autotune"] else "off"
    text = (f"{result['model']:>10} autotune {setting}: median epoch {med * 1e3:.0f} ms, "
            f"max {max(walls) * 1e3:.0f} ms, total {sum(walls):.1f} s, stalls (> 3× median) {len(stalls)}, "
            f"collections {sum(r['collections'] for r in result['epochs'])}")
    for i, r in stalls:
        text += (f"\n{'':>12}epoch {i}: wall {r['wall_s'] * 1e3:.0f} ms, CPU {r['cpu_s'] * 1e3:.0f} ms, "
                 f"Python collections during it {r['collections']}")
    return text


def define_flags() -> None:
    flags.DEFINE_string("dataset", "ml100k", "Registered dataset name.")
    flags.DEFINE_string("data_dir", "data", "Root of prepared datasets.")
    flags.DEFINE_list("models", ["apg", "dnn"], "Registry models.")
    flags.DEFINE_integer("epochs", 40, "One-epoch fit calls per model and setting (after one to compile).")
    flags.DEFINE_integer("batch_size", 512, "Training batch size.")
    flags.DEFINE_integer("steps_per_execution", 16, "Fused steps per compiled call.")
    flags.DEFINE_boolean("reuse_dataset", True, "One dataset for every epoch's fit call (else a new one per epoch).")
    flags.DEFINE_list("autotune", ["off", "on"], "Settings to run, each in its own process.")
    flags.DEFINE_string("one", None, "Internal: 'model:on|off' runs in this process and prints JSON.")


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.one:
        name, setting = FLAGS.one.split(":")
        print(json.dumps(run_one(name, setting == "on", FLAGS.epochs, FLAGS.batch_size, FLAGS.steps_per_execution)))
        return
    for name in FLAGS.models:
        for setting in FLAGS.autotune:
            cmd = [sys.executable, "-m", "experiments.bench_epoch_stalls", f"--one={name}:{setting}",
                   f"--epochs={FLAGS.epochs}", f"--dataset={FLAGS.dataset}", f"--data_dir={FLAGS.data_dir}",
                   f"--batch_size={FLAGS.batch_size}", f"--steps_per_execution={FLAGS.steps_per_execution}",
                   f"--reuse_dataset={FLAGS.reuse_dataset}"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            print(summary(json.loads(out.strip().splitlines()[-1])), flush=True)


def cli() -> None:
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
