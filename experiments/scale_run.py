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


class _AnonPeak:
    """Samples the process's anonymous resident memory (``RssAnon`` of /proc/self/status) in a
    thread: unlike ``ru_maxrss`` it leaves out file pages mapped from the columnar shards
    (page cache the kernel can drop), i.e. what the process itself allocated."""

    def __init__(self, every_s: float = 0.5):
        import threading

        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._t.start()

    @staticmethod
    def now_mb() -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak_mb = max(self.peak_mb, self.now_mb())

    def take(self) -> int:
        """The peak since the last ``take`` (then restarts the peak)."""
        p, self.peak_mb = max(self.peak_mb, self.now_mb()), 0.0
        return round(p)


def _du_gb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total / 1e9


def _timed_stopper_class():
    """``ExactEarlyStopping`` that times its validation pass and notes the peak RSS before it."""
    from mdr_tf.training import ExactEarlyStopping

    class TimedStopper(ExactEarlyStopping):
        skip_eval = False
        valid_eval_s = None
        rss_before_valid_mb = None

        anon = None
        anon_train_mb = anon_valid_mb = None

        def on_epoch_end(self, epoch, logs=None):
            self.rss_before_valid_mb = round(_rss_mb())
            self.anon_train_mb = self.anon.take() if self.anon else None
            if self.skip_eval:
                return
            t = time.time()
            super().on_epoch_end(epoch, logs)
            self.valid_eval_s = round(time.time() - t, 1)
            self.anon_valid_mb = self.anon.take() if self.anon else None

    return TimedStopper


def _step_timer(max_steps: int, total_steps: int = 0, batch_size: int = 0, every_s: float = 60.0):
    """A callback noting (wall time, optimizer iterations) after every compiled block; stops the
    epoch once ``max_steps`` optimizer steps ran (0: never); prints progress with an ETA to
    stderr every ``every_s`` seconds."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.marks: list[tuple[float, int]] = []

        def on_train_begin(self, logs=None):
            self.t0 = self.last = time.time()

        def on_train_batch_end(self, batch, logs=None):
            it = int(self.model.optimizer.iterations.numpy())
            now = time.time()
            self.marks.append((now, it))
            if now - self.last >= every_s:
                self.last = now
                goal = max_steps or total_steps
                rate = it / (now - self.t0)
                eta = f", ETA {(goal - it) / max(rate, 1e-9) / 60:.1f} min" if goal else ""
                print(f"  step {it:,}/{goal:,}: {rate * batch_size:,.0f} samples/s{eta}, RSS {_rss_mb():,.0f} MB",
                      file=sys.stderr, flush=True)
            if max_steps and it >= max_steps:
                self.model.stop_training = True

        def summary(self) -> dict:
            """Steps, wall time, and the per-step time after the first block (which includes compiling)."""
            if not self.marks:
                return {}
            out = {"steps": self.marks[-1][1], "train_s": round(self.marks[-1][0] - self.t0, 1),
                   "first_block_s": round(self.marks[0][0] - self.t0, 1)}
            if len(self.marks) > 1:
                (ta, ia), (tb, ib) = self.marks[0], self.marks[-1]
                out["s_per_step_after_first_block"] = round((tb - ta) / max(ib - ia, 1), 4)
            return out

    return StepTimer()


def run_one(model_name: str, data_dir: str, batch_size: int, steps: int, optimizer: str = "adam",
            eval_batch_size: int = 65_536, max_train_steps: int = 0, evaluate: bool = True) -> dict:
    """Trains ``model_name`` for one epoch and evaluates it; returns the stage timings.

    ``max_train_steps`` > 0 stops the epoch after that many steps (the exact evaluation of
    the whole valid and test splits still runs unless ``evaluate`` is False).
    """
    import keras

    from mdr_tf import registry
    from mdr_tf.schema import Schema
    from mdr_tf.training import TrainConfig, _fused_input, evaluate_split, fit
    from mdr_tf.training.evaluation import eval_source

    row: dict = {"model": model_name, "data_dir": data_dir, "batch_size": batch_size, "steps_per_execution": steps,
                 "optimizer": optimizer, "eval_batch_size": eval_batch_size}
    if max_train_steps:
        row["max_train_steps"] = max_train_steps
    row["evaluate"] = evaluate
    t = time.time()
    schema = Schema.load(data_dir)
    row["train_rows"] = sum(schema.counts("train"))
    keras.utils.set_random_seed(0)
    model = registry.get(model_name).build(schema)
    model.build()
    row["params"] = int(model.count_params())
    row["build_s"] = round(time.time() - t, 1)
    cfg = TrainConfig(batch_size=batch_size, epochs=1, steps_per_execution=steps, patience=1, verbose=0,
                      eval_batch_size=eval_batch_size, optimizer=optimizer)
    path = _fused_input(schema, cfg, None)
    row["train_path"] = ("columnar_fused" if hasattr(path, "install") else "in_memory_fused" if path is not None
                         else "tfrecord_stream")
    del path
    row["valid_source"] = eval_source(schema, "valid")
    row["test_source"] = eval_source(schema, "test")
    stopper = _timed_stopper_class()(schema, cfg.monitor, cfg.patience, cfg.min_delta, cfg.eval_batch_size)
    stopper.skip_eval = not evaluate
    stopper.anon = anon = _AnonPeak()
    timer = _step_timer(max_train_steps, row["train_rows"] // batch_size, batch_size)
    t = time.time()
    fit(model, schema, cfg, callbacks=[timer], stopper=stopper)  # includes the validation pass of the stopper
    row["fit_incl_valid_s"] = round(time.time() - t, 1)
    row.update(timer.summary())
    row["train_samples_per_s"] = round(row.get("steps", 0) * batch_size / max(row.get("train_s", 0), 1e-9))
    row["peak_rss_train_mb"] = stopper.rss_before_valid_mb
    row["valid_eval_s"] = stopper.valid_eval_s
    row["valid_rows"] = sum(schema.counts("valid"))
    row["valid_auc"] = stopper.history[-1]["val_auc"] if stopper.history else None
    row["rss_after_fit_mb"] = round(_rss_mb())
    row["peak_anon_rss_train_mb"] = stopper.anon_train_mb
    row["peak_anon_rss_valid_mb"] = stopper.anon_valid_mb
    anon.take()
    if evaluate:
        t = time.time()
        test = evaluate_split(model, schema, "test", eval_batch_size)
        row["test_eval_s"] = round(time.time() - t, 1)
        row["test_rows"] = sum(schema.counts("test"))
        row["test_auc"] = test["auc"]
        row["test_auc_per_domain"] = [test[f"auc_d{d}"] for d in range(schema.num_domains)]
        row["peak_anon_rss_test_mb"] = anon.take()
    row["peak_rss_mb"] = round(_rss_mb())
    return row


def define_flags() -> None:
    flags.DEFINE_string("data_dir", None, "Prepared dataset.", required=True)
    flags.DEFINE_list("models", ["dnn", "star"], "Registry models, one process each.")
    flags.DEFINE_integer("batch_size", 2048, "Training batch size.")
    flags.DEFINE_integer("steps_per_execution", 16, "Fused steps per compiled call.")
    flags.DEFINE_enum("optimizer", "adam", ["adam", "lazy_adam"], "Training optimizer (TrainConfig.optimizer); "
                      "lazy_adam updates only the embedding rows a batch reads.")
    flags.DEFINE_integer("eval_batch_size", 65_536, "Prediction batch size of the valid / test evaluation.")
    flags.DEFINE_integer("max_train_steps", 0, "If > 0: stop the epoch after this many steps (a bounded run; "
                         "per-step timing, e.g. to compare optimizers).")
    flags.DEFINE_boolean("evaluate", True, "Evaluate the whole valid and test splits (exact AUC) after training.")
    flags.DEFINE_string("output", None, "JSONL of finished models (rerun skips them).", required=True)
    flags.DEFINE_string("one", None, "Internal: run this model in this process and print its JSON row.")


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.one:
        row = {"load_avg_start": [round(x, 2) for x in os.getloadavg()]}
        row.update(run_one(FLAGS.one, FLAGS.data_dir, FLAGS.batch_size, FLAGS.steps_per_execution, FLAGS.optimizer,
                           eval_batch_size=FLAGS.eval_batch_size, max_train_steps=FLAGS.max_train_steps,
                           evaluate=FLAGS.evaluate))
        row["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        print("ROW " + json.dumps(row), flush=True)
        return
    done = set()
    if os.path.exists(FLAGS.output):  # a model is done for this optimizer and step limit
        with open(FLAGS.output) as f:
            logged = [json.loads(line) for line in f if line.strip()]
        done = {r["model"] for r in logged if r.get("optimizer", "adam") == FLAGS.optimizer
                and r.get("max_train_steps", 0) == FLAGS.max_train_steps}
    for m in FLAGS.models:
        if m in done:
            print(f"{m}: done (in {FLAGS.output})")
            continue
        t = time.time()
        # The child gets this run's flags (and --one); its progress lines go to this stderr.
        out = subprocess.run([sys.executable, "-m", "experiments.scale_run", *sys.argv[1:], f"--one={m}"],
                             stdout=subprocess.PIPE, text=True)
        rows = [ln[4:] for ln in out.stdout.splitlines() if ln.startswith("ROW ")]
        if out.returncode or not rows:
            raise RuntimeError(f"{m} failed (exit {out.returncode}); its error is printed above")
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
