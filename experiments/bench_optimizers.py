"""Dense Adam vs lazy Adam (``mdr_tf.optimizers.LazyAdam``): time per step and DNN training speed.

Two measurements, each interleaved in one process (one step / epoch of each optimizer per
round, so that a slow spell of a shared machine hits both alike); medians and the median
of the per-round ratios are printed:

1. ``--table_rows`` x ``--dim`` embedding table, a batch of ``--batch_size`` x ``--fields``
   ids (uniform over the table) gathered, a scalar loss on the rows, its gradient (a
   ``tf.IndexedSlices``) applied by each optimizer; one XLA-compiled step (what the fused
   trainer runs for the table's part of a step).
2. the DNN's training samples/s (and CPU seconds per sample) on ``--dataset`` (the fused path ``mdr_tf.training.fit``
   uses by default, ``experiments.benchmark``'s epoch runner) with each optimizer.

  nice -n 5 python -m experiments.bench_optimizers                     # 2.4M x 16, 16,384 x 24; DNN on ML-100k
  python -m experiments.bench_optimizers --fit_rounds=0 --table_rows=100000 --lazy_forms=masked_dense,rows_unique
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Sequence

from absl import app, flags

FLAGS = flags.FLAGS
OPTIMIZERS = ("adam", "lazy_adam")


def _table_step(table, opt):
    """One step on ``table`` (a closure: ``tf.function`` must not take the variable as an argument)."""
    import tensorflow as tf

    def step(ids):
        with tf.GradientTape() as tape:
            e = tf.gather(table.value, ids)  # [B, F, d]
            loss = tf.reduce_mean(tf.square(tf.reduce_sum(e, axis=1)))
        (g,) = tape.gradient(loss, [table.value])  # tf.IndexedSlices
        opt.apply([g], [table])
        return loss

    return step


def bench_table_step(rows: int, dim: int, batch: int, fields: int, steps: int, jit: bool = True,
                     forms: Sequence[str] = ()) -> dict:
    """Median seconds per optimizer step on a ``rows x dim`` table with a ``batch x fields`` gather.

    ``forms``: also time ``LazyAdam`` forced to these ``sparse_form`` values ("lazy_adam:<form>").
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from mdr_tf.optimizers import make_optimizer

    rng = np.random.default_rng(0)
    init = (rng.standard_normal((rows, dim), dtype=np.float32) * 1e-2)
    fns = {}
    names = list(OPTIMIZERS) + [f"lazy_adam:{f}" for f in forms]
    for name in names:
        table = keras.Variable(init, name=f"table_{name.replace(':', '_')}")
        opt = make_optimizer(name.split(":")[0], 1e-3, 1e-8)
        if ":" in name:
            opt.sparse_form = name.split(":")[1]
        opt.build([table])

        fns[name] = tf.function(_table_step(table, opt), jit_compile=jit)
    batches = [tf.constant(rng.integers(0, rows, (batch, fields)), tf.int32) for _ in range(4)]
    for name, fn in fns.items():  # compile
        fn(batches[0]).numpy()
    times = {n: [] for n in names}
    for s in range(steps):
        for name in (names if s % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[name](batches[s % len(batches)]).numpy()
            times[name].append(time.perf_counter() - t)
    out = {f"{n}_ms_per_step": 1e3 * statistics.median(times[n]) for n in names}
    out["dense_over_lazy"] = statistics.median(a / b for a, b in zip(times["adam"], times["lazy_adam"]))
    out.update(rows=rows, dim=dim, batch=batch, fields=fields, steps=steps, jit=jit)
    return out


def bench_fit(model: str, dataset: str, data_dir: str, batch_size: int, steps_per_execution: int,
              rounds: int) -> dict:
    """DNN training samples/s on ``dataset`` with each optimizer (fused XLA path), interleaved epochs."""
    import keras

    from experiments.benchmark import _epoch_runner
    from experiments.common import prepare_dataset
    from mdr_tf.data import load_arrays
    from mdr_tf.schema import Schema

    schema = Schema.load(prepare_dataset(dataset, data_dir, None, {}))
    x, y = load_arrays(schema, "train")
    y = y.reshape(-1, 1)
    keras.backend.clear_session()
    epochs = {n: _epoch_runner(model, schema, batch_size, "tfrecord_fused", steps_per_execution, "auto", x, y,
                               optimizer=n) for n in OPTIMIZERS}
    rates = {n: [] for n in OPTIMIZERS}
    cpu = {n: [] for n in OPTIMIZERS}  # CPU seconds per sample (all threads): less sensitive to other load
    for r in range(rounds):
        for name in (OPTIMIZERS if r % 2 == 0 else OPTIMIZERS[::-1]):
            t, c = time.perf_counter(), time.process_time()
            k = epochs[name]()
            rates[name].append(k / (time.perf_counter() - t))
            cpu[name].append((time.process_time() - c) / k)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:,.0f}/s" for n in OPTIMIZERS), flush=True)
    out = {f"{n}_samples_per_s": statistics.median(rates[n]) for n in OPTIMIZERS}
    out["lazy_over_dense"] = statistics.median(b / a for a, b in zip(rates["adam"], rates["lazy_adam"]))
    out.update({f"{n}_cpu_us_per_sample": 1e6 * statistics.median(cpu[n]) for n in OPTIMIZERS})
    out["lazy_over_dense_cpu"] = statistics.median(a / b for a, b in zip(cpu["adam"], cpu["lazy_adam"]))
    out.update(model=model, dataset=dataset, batch_size=batch_size, rounds=rounds,
               table_rows=int(sum(f.vocab_size for f in schema.categorical) + schema.num_domains))
    return out


def define_flags() -> None:
    flags.DEFINE_integer("table_rows", 2_400_000, "Rows of the table of the step benchmark (0: skip it).")
    flags.DEFINE_integer("dim", 16, "Embedding width.")
    flags.DEFINE_integer("batch_size", 16_384, "Batch of the step benchmark.")
    flags.DEFINE_integer("fields", 24, "Ids per example of the step benchmark.")
    flags.DEFINE_integer("steps", 30, "Timed steps per optimizer (step benchmark).")
    flags.DEFINE_boolean("jit", True, "XLA-compile the step benchmark's step.")
    flags.DEFINE_list("lazy_forms", [], "Also time LazyAdam forced to these sparse_form values (masked_dense, "
                      "rows_unique, rows_summed).")
    flags.DEFINE_integer("fit_rounds", 5, "Interleaved epochs per optimizer of the fit benchmark (0: skip it).")
    flags.DEFINE_string("model", "dnn", "Model of the fit benchmark.")
    flags.DEFINE_string("dataset", "ml100k", "Dataset of the fit benchmark.")
    flags.DEFINE_string("data_dir", "data", "Root of prepared datasets.")
    flags.DEFINE_integer("fit_batch_size", 512, "Training batch size of the fit benchmark.")
    flags.DEFINE_integer("steps_per_execution", 16, "Fused steps per compiled call (fit benchmark).")
    flags.DEFINE_string("output", None, "Write the figures as JSON here.")


def main(argv: Sequence[str]) -> None:
    del argv
    from experiments.common import versions
    from mdr_base.atomic import write_json_atomic

    results: dict = {"versions": versions()}
    if FLAGS.table_rows:
        r = bench_table_step(FLAGS.table_rows, FLAGS.dim, FLAGS.batch_size, FLAGS.fields, FLAGS.steps, FLAGS.jit,
                             FLAGS.lazy_forms)
        results["table_step"] = r
        print(f"table {r['rows']:,} x {r['dim']}, gather {r['batch']:,} x {r['fields']} (XLA {r['jit']}): "
              f"dense Adam {r['adam_ms_per_step']:.1f} ms/step, lazy Adam {r['lazy_adam_ms_per_step']:.1f} ms/step, "
              f"dense/lazy {r['dense_over_lazy']:.1f}x (median of {r['steps']} interleaved steps)"
              + "".join(f"; lazy Adam {f} {r[f'lazy_adam:{f}_ms_per_step']:.1f} ms" for f in FLAGS.lazy_forms),
              flush=True)
    if FLAGS.fit_rounds:
        r = bench_fit(FLAGS.model, FLAGS.dataset, FLAGS.data_dir, FLAGS.fit_batch_size, FLAGS.steps_per_execution,
                      FLAGS.fit_rounds)
        results["fit"] = r
        print(f"{r['model']} on {r['dataset']} ({r['table_rows']:,}-row table), batch {r['batch_size']}: dense Adam "
              f"{r['adam_samples_per_s']:,.0f}/s, lazy Adam {r['lazy_adam_samples_per_s']:,.0f}/s, lazy/dense "
              f"{r['lazy_over_dense']:.2f}x; per CPU-second {r['lazy_over_dense_cpu']:.2f}x (medians of {r['rounds']} "
              "interleaved epochs)", flush=True)
    if FLAGS.output:
        write_json_atomic(FLAGS.output, results)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    define_flags()
    app.run(main)
