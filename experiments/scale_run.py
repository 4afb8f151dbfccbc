"""Scale run (issue 18.4): one epoch of a model on a large prepared dataset, timed per stage.

Stages: open the schema; one training epoch (``mdr_tf.training.fit``: the fused out-of-core
path when the train split does not fit in memory and has columnar shards, else the
TFRecord stream); evaluation of valid and test (exact AUC over the whole split). Each
model runs in its own process (peak RSS is per process); every finished model is
appended to ``--output`` (JSONL) at once and skipped by a rerun.

  python -m experiments.scale_run --data_dir=data/synthetic_aliccp20m --models=dnn,star \\
      --output=results/scale.jsonl
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Sequence

from absl import app, flags

FLAGS = flags.FLAGS


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _du_gb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total / 1e9


def run_one(model_name: str, data_dir: str, batch_size: int, steps: int, optimizer: str = "adam") -> dict:
    """Trains ``model_name`` for one epoch and evaluates it; returns the stage timings."""
    import keras

    from mdr_tf import registry
    from mdr_tf.schema import Schema
    from mdr_tf.training import TrainConfig, _fused_input, evaluate_split, fit

    row: dict = {"model": model_name, "data_dir": data_dir, "batch_size": batch_size, "steps_per_execution": steps,
                 "optimizer": optimizer}
    t = time.time()
    schema = Schema.load(data_dir)
    row["train_rows"] = sum(schema.counts("train"))
    keras.utils.set_random_seed(0)
    model = registry.get(model_name).build(schema)
    model.build()
    row["params"] = int(model.count_params())
    row["build_s"] = round(time.time() - t, 1)
    cfg = TrainConfig(batch_size=batch_size, epochs=1, steps_per_execution=steps, patience=1, verbose=0,
                      optimizer=optimizer)
    path = _fused_input(schema, cfg, None)
    row["train_path"] = ("columnar_fused" if hasattr(path, "install") else "in_memory_fused" if path is not None
                         else "tfrecord_stream")
    del path
    t = time.time()
    stopper = fit(model, schema, cfg)  # includes the validation pass of the early stopper
    row["fit_incl_valid_s"] = round(time.time() - t, 1)
    row["train_samples_per_s_incl_valid"] = round(row["train_rows"] / row["fit_incl_valid_s"])
    row["valid_auc"] = stopper.history[-1]["val_auc"] if stopper.history else None
    row["rss_after_fit_mb"] = round(_rss_mb())
    t = time.time()
    test = evaluate_split(model, schema, "test", 8192)
    row["test_eval_s"] = round(time.time() - t, 1)
    row["test_rows"] = sum(schema.counts("test"))
    row["test_auc"] = test["auc"]
    row["peak_rss_mb"] = round(_rss_mb())
    return row


def define_flags() -> None:
    flags.DEFINE_string("data_dir", None, "Prepared dataset.", required=True)
    flags.DEFINE_list("models", ["dnn", "star"], "Registry models, one process each.")
    flags.DEFINE_integer("batch_size", 2048, "Training batch size.")
    flags.DEFINE_integer("steps_per_execution", 16, "Fused steps per compiled call.")
    flags.DEFINE_enum("optimizer", "adam", ["adam", "lazy_adam"], "Training optimizer (TrainConfig.optimizer); "
                      "lazy_adam updates only the embedding rows a batch reads.")
    flags.DEFINE_string("output", None, "JSONL of finished models (rerun skips them).", required=True)
    flags.DEFINE_string("one", None, "Internal: run this model in this process and print its JSON row.")


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.one:
        print("ROW " + json.dumps(run_one(FLAGS.one, FLAGS.data_dir, FLAGS.batch_size, FLAGS.steps_per_execution,
                                          FLAGS.optimizer)), flush=True)
        return
    done = set()
    if os.path.exists(FLAGS.output):
        with open(FLAGS.output) as f:
            logged = [json.loads(line) for line in f if line.strip()]
        done = {r["model"] for r in logged if r.get("optimizer", "adam") == FLAGS.optimizer}
    for m in FLAGS.models:
        if m in done:
            print(f"{m}: done (in {FLAGS.output})")
            continue
        t = time.time()
        out = subprocess.run([sys.executable, "-m", "experiments.scale_run", f"--data_dir={FLAGS.data_dir}",
                              f"--output={FLAGS.output}", f"--one={m}", f"--batch_size={FLAGS.batch_size}",
                              f"--steps_per_execution={FLAGS.steps_per_execution}",
                              f"--optimizer={FLAGS.optimizer}"],
                             capture_output=True, text=True)
        rows = [ln[4:] for ln in out.stdout.splitlines() if ln.startswith("ROW ")]
        if out.returncode or not rows:
            raise RuntimeError(f"{m} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        row = json.loads(rows[-1])
        row["process_wall_s"] = round(time.time() - t, 1)
        row["data_disk_gb"] = round(_du_gb(FLAGS.data_dir), 2)
        row["columnar_disk_gb"] = round(_du_gb(os.path.join(FLAGS.data_dir, "columnar")), 2)
        with open(FLAGS.output, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
