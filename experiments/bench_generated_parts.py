"""Where the time of HAMUR-MLP and HierRec goes: forward + backward of each part, XLA, CPU.

Each part is one XLA-compiled function computing the part's output on a real ML-100k
batch and the gradient of its sum with respect to the part's own variables and its
input; the parts and the whole DNN / model logits are timed in alternating rounds in one
process (median CPU ms per batch). Issue 18.1; figures in docs/benchmarks.md.

  python -m experiments.bench_generated_parts --rounds=7
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

from absl import app, flags

FLAGS = flags.FLAGS


def _timed(fn: Callable[[], Any], calls: int) -> float:
    """CPU milliseconds per call (``time.process_time``: all threads of this process; the
    machine is shared, so wall time would count other processes' load)."""
    t = time.process_time()
    for _ in range(calls):
        out = fn()
    [getattr(o, "values", o).numpy() for o in out if o is not None]  # wait for the last call
    return (time.process_time() - t) / calls * 1000.0


def part_functions(models: Sequence[str], schema, batch_size: int) -> dict[str, Callable[[], Any]]:
    """``{"model/part": f}``: f runs one XLA forward + backward of the part on a fixed batch."""
    import keras
    import tensorflow as tf
    from keras import ops

    from mdr_tf import registry
    from mdr_tf.data import load_arrays

    x, _ = load_arrays(schema, "train")
    batch = {k: tf.constant(v[:batch_size]) for k, v in x.items()}
    out: dict[str, Callable[[], Any]] = {}

    def grad_fn(layer_vars, fn, *inputs):
        """XLA function: forward ``fn(*inputs)`` and d(sum)/d(vars, inputs)."""
        @tf.function(jit_compile=True)
        def step():
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                y = fn(*inputs)
                loss = tf.reduce_sum(tf.nest.flatten(y)[0])
            return tape.gradient(loss, list(layer_vars) + list(inputs))
        return step

    for name in ["dnn", *models]:
        keras.utils.set_random_seed(0)
        m = registry.get(name).build(schema)
        m.build()
        ctx = m.embedding(batch)
        variables = m.trainable_variables
        out[f"{name}/whole logit (embedding included)"] = grad_fn(
            variables, lambda m=m: m.compute_logit(batch, m.embedding(batch), training=True))
        if name == "hamur" or type(m).__name__ == "HamurMLP":
            e = ctx["all"]
            core = m.hyper(e, training=False)

            def towers(e, m=m):
                h = e
                for dense, norm in zip(m.towers, m.tower_norms):
                    h = ops.relu(norm(dense(h), training=True))
                return m.out(h)

            tower_vars = [v for layer in [*m.towers, *m.tower_norms, m.out] for v in layer.trainable_variables]
            out[f"{name}/hyper-network g(e) -> core [B,k,k]"] = grad_fn(
                m.hyper.trainable_variables, lambda e, m=m: m.hyper(e, training=True), e)
            out[f"{name}/per-domain towers + BN + out (no adapter)"] = grad_fn(tower_vars, towers, e)
            h = ops.ones((batch_size, m.num_domains, m.hidden_units[-1]))
            a = m.adapters[-1]
            out[f"{name}/one adapter on [B,D,m] (given the core)"] = grad_fn(
                a.trainable_variables, lambda h, c, a=a: a(h, {"hamur_core": c}, training=True), h, core)
        if type(m).__name__ == "HierRec":
            o_global = m.global_fc(ctx["all"])
            o_exp = m.explicit_som(o_global, m._explicit_condition(False), index=ctx["domain"], training=True)[:, 0]
            out[f"{name}/explicit SOM (per scenario, gathered)"] = grad_fn(
                m.explicit_som.trainable_variables + m.sc_explicit.trainable_variables,
                lambda g, m=m, ctx=ctx: m.explicit_som(g, m._explicit_condition(False), index=ctx["domain"],
                                                       training=True),
                o_global)
            out[f"{name}/implicit condition (field attention + FC)"] = grad_fn(
                m.field_attention.trainable_variables + m.sc_implicit.trainable_variables,
                lambda m=m, ctx=ctx: m._implicit_condition(ctx))
            cond = m._implicit_condition(ctx)
            out[f"{name}/implicit SOMs (per instance)"] = grad_fn(
                m.implicit_som.trainable_variables, lambda o, c, m=m: m.implicit_som(o, c, training=True), o_exp, cond)
    return out


def define_flags() -> None:
    flags.DEFINE_string("dataset", "ml100k", "Registered dataset name.")
    flags.DEFINE_string("data_dir", "data", "Root of prepared datasets.")
    flags.DEFINE_list("models", ["hamur", "hierrec"], "Registry models to break down (the DNN is always timed).")
    flags.DEFINE_integer("batch_size", 512, "Batch size.")
    flags.DEFINE_integer("rounds", 7, "Alternating rounds (median reported).")
    flags.DEFINE_integer("calls", 50, "Calls per part per round.")


def main(argv: Sequence[str]) -> None:
    del argv
    import mdr_tf  # noqa: F401
    from experiments.common import parse_options as _parse_options, prepare_dataset
    from mdr_tf.schema import Schema

    schema = Schema.load(prepare_dataset(FLAGS.dataset, FLAGS.data_dir, None, _parse_options([])))
    fns = part_functions(FLAGS.models, schema, FLAGS.batch_size)
    for fn in fns.values():
        _timed(fn, 3)  # compile + warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(FLAGS.rounds):
        for k, fn in fns.items():
            times[k].append(_timed(fn, FLAGS.calls))
    dnn = statistics.median(times["dnn/whole logit (embedding included)"])
    print(f"# forward + backward, XLA, batch {FLAGS.batch_size}, median of {FLAGS.rounds} rounds x {FLAGS.calls}")
    print("| part | CPU ms per batch | ÷ DNN logit |\n|---|---|---|")
    for k, t in times.items():
        med = statistics.median(t)
        print(f"| {k} | {med:.3f} | {med / dnn:.2f}× |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
