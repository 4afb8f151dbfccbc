"""HierRec now vs the implementation of commit ca40422 (issue 18.1, fourth pass), in one process.

Builds the DNN, the registry "hierrec" and the same model with the earlier forward
(``tests/models/test_hamur_hierrec_parity.py:_v3_hierrec_logit``, the reference the
parity test compares outputs and gradients with), and times them in alternating rounds:
the logit's XLA forward + backward on one batch (CPU ms per call) and one fused training
epoch each (wall and CPU µs per sample). Prints medians and minima and their ratios.

  python -m experiments.bench_hierrec_passes --rounds=15
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "data", "Root of prepared datasets (ML-100k is prepared there if missing).")
flags.DEFINE_integer("rounds", 15, "Alternating rounds.")
flags.DEFINE_integer("calls", 100, "Logit forward + backward calls per round.")
flags.DEFINE_integer("batch_size", 512, "Batch size.")
flags.DEFINE_enum("mode", "both", ["both", "logit", "fit"], "What to time.")


def _report(tag: str, res: dict[str, list[float]]) -> None:
    for agg in (statistics.median, min):
        v = {n: agg(r) for n, r in res.items()}
        print(f"{tag} ({agg.__name__}): " + ", ".join(
            f"{n} {v[n]:.3f} ({v[n] / v['dnn']:.2f}× dnn, {v[n] / v['earlier']:.3f}× earlier)" for n in res),
            flush=True)


def main(argv) -> None:
    del argv
    import keras
    import tensorflow as tf

    from experiments.common import fused_epoch, prepare_dataset
    from mdr_tf import registry
    from mdr_tf.data import load_arrays
    from mdr_tf.models.hierrec import HierRec
    from mdr_tf.schema import Schema
    from mdr_tf.training import TrainConfig, compile_model
    from tests.models.test_hamur_hierrec_parity import _v3_hierrec_logit

    class EarlierHierRec(HierRec):
        def compute_logit(self, inputs, ctx, training=None):
            return _v3_hierrec_logit(self, ctx, training)

    schema = Schema.load(prepare_dataset("ml100k", FLAGS.data_dir, None, {}))
    names = ["dnn", "earlier", "hierrec"]

    def build(name: str):
        keras.utils.set_random_seed(0)
        if name == "earlier":
            m = EarlierHierRec.from_config(registry.get("hierrec").build(schema).get_config())
        else:
            m = registry.get(name).build(schema)
        m.build()
        return m

    def alternate(fns: dict[str, Callable[[], tuple[float, float]]]) -> tuple[dict, dict]:
        a: dict[str, list[float]] = {n: [] for n in fns}
        b: dict[str, list[float]] = {n: [] for n in fns}
        for r in range(FLAGS.rounds):
            for n in (names if r % 2 == 0 else names[::-1]):
                x, y = fns[n]()
                a[n].append(x)
                b[n].append(y)
        return a, b

    if FLAGS.mode in ("both", "logit"):
        x, _ = load_arrays(schema, "train")
        batch = {k: tf.constant(v[:FLAGS.batch_size]) for k, v in x.items()}
        fns = {}
        for n in names:
            m = build(n)

            @tf.function(jit_compile=True)
            def step(m=m):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(m.compute_logit(batch, m.embedding(batch), training=True))
                return tape.gradient(loss, m.trainable_variables)

            step()

            def timed(step=step):
                c = time.process_time()
                for _ in range(FLAGS.calls):
                    out = step()
                [getattr(o, "values", o).numpy() for o in out if o is not None]
                return (time.process_time() - c) / FLAGS.calls * 1e3, 0.0
            fns[n] = timed
        _report("logit forward + backward, CPU ms per call", alternate(fns)[0])
    if FLAGS.mode in ("both", "fit"):
        fns = {}
        for n in names:
            m = build(n)
            compile_model(m, TrainConfig(batch_size=FLAGS.batch_size, steps_per_execution=1, jit_compile="auto"))
            epoch = fused_epoch(m, schema, FLAGS.batch_size, 16)
            epoch()  # compile + warm-up

            def timed(epoch=epoch):
                t, c = time.perf_counter(), time.process_time()
                k = epoch()
                return (time.perf_counter() - t) / k * 1e6, (time.process_time() - c) / k * 1e6
            fns[n] = timed
        wall, cpu = alternate(fns)
        _report("fused training epoch, wall µs per sample", wall)
        _report("fused training epoch, CPU µs per sample", cpu)


if __name__ == "__main__":
    app.run(main)
