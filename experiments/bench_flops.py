"""Matrix-product FLOPs per training sample of each model's XLA train step (issue 18.1).

Compiles one training step (forward + gradient, batch ``--batch_size``, the first training
batch of the dataset) of every model with XLA, reads its optimised HLO and adds up the
floating-point operations of every ``dot`` (2 · output elements · contracted size), then
divides by the batch size. The figure is exact for the products XLA runs (batched ones
included, which TensorFlow's graph profiler does not count) and leaves out element-wise
work (activations, normalisation, Adam), so it is a lower bound of the arithmetic: its ratio
to the DNN's says how far below the DNN's cost a model cannot go without running its
products faster per FLOP than the DNN runs its own.

  python -m experiments.bench_flops --models=dnn,hamur,m2m,hierrec,midpg,dpg,adasparse,apg
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from absl import app, flags

FLAGS = flags.FLAGS

_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]")
_DOT = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\w+\[([\d,]*)\][^=]*?\sdot\(%?([\w.\-]+),\s*%?([\w.\-]+)\)"
                  r".*?lhs_contracting_dims=\{([\d,]*)\}")


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def dot_flops(hlo_text: str) -> dict[str, float]:
    """FLOPs of every ``dot`` of an HLO module's text, keyed by the TF op name that emitted it.

    Each instruction's shape is taken from its definition (``%name = f32[a,b]{...} op(...)``);
    a dot's FLOPs are ``2 · prod(output dims) · prod(lhs contracting dims)``. Dots inside a
    computation that runs several times (a while loop's body) are counted once.
    """
    shapes: dict[str, list[int]] = {}
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if m:
            shapes[m.group(1)] = _dims(m.group(3))
    out: dict[str, float] = {}
    for line in hlo_text.splitlines():
        m = _DOT.match(line)
        if not m:
            continue
        _, out_dims, lhs, _rhs, contracting = m.groups()
        if lhs not in shapes:
            raise ValueError(f"HLO dot {m.group(1)!r}: no definition of its operand {lhs!r}")
        k = math.prod(shapes[lhs][d] for d in _dims(contracting))
        name = re.search(r'op_name="([^"]+)"', line)
        key = name.group(1) if name else m.group(1)
        out[key] = out.get(key, 0.0) + 2.0 * math.prod(_dims(out_dims)) * k
    return out


def train_step_hlo(model, xb: dict, yb) -> str:
    """Optimised HLO text of one XLA training step (forward + gradient of the BCE loss plus
    the model's added losses) of ``model`` on the batch ``(xb, yb)``."""
    import keras
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, logits, from_logits=True))
            if model.losses:
                loss = loss + tf.add_n([tf.cast(v, loss.dtype) for v in model.losses])
        return tape.gradient(loss, model.trainable_variables)

    return step.experimental_get_compiler_ir(xb, yb)(stage="optimized_hlo")


def model_dot_flops(model_name: str, schema, batch_size: int) -> dict[str, float]:
    """``{"train": ..., "forward": ...}``: dot FLOPs per sample of the train step, and of the
    part of it emitted by the forward pass (op names outside ``gradient_tape/``)."""
    import keras
    import tensorflow as tf

    from mdr_tf import registry
    from mdr_tf.data import load_arrays

    x, y = load_arrays(schema, "train")
    xb = {k: tf.constant(v[:batch_size]) for k, v in x.items()}
    yb = tf.constant(y[:batch_size].reshape(-1, 1).astype("float32"))
    keras.utils.set_random_seed(0)
    model = registry.get(model_name).build(schema)
    model.build()
    per_op = dot_flops(train_step_hlo(model, xb, yb))
    total = sum(per_op.values())
    forward = sum(v for k, v in per_op.items() if "gradient_tape" not in k)
    return {"train": total / batch_size, "forward": forward / batch_size}


def define_flags() -> None:
    flags.DEFINE_string("dataset", "ml100k", "Registered dataset name.")
    flags.DEFINE_string("data_dir", "data", "Root of prepared datasets.")
    flags.DEFINE_list("models", ["dnn", "hamur", "m2m", "hierrec", "midpg", "dpg", "adasparse", "apg"],
                      "Registry models (ratios are to the DNN's).")
    flags.DEFINE_integer("batch_size", 512, "Training batch size.")


def main(argv: Sequence[str]) -> None:
    del argv
    from experiments.common import prepare_dataset
    from mdr_tf.schema import Schema

    schema = Schema.load(prepare_dataset(FLAGS.dataset, FLAGS.data_dir, None, {}))
    names = ["dnn"] + [m for m in FLAGS.models if m != "dnn"]
    base = None
    print(f"# dot FLOPs per sample of the XLA train step, {FLAGS.dataset}, batch {FLAGS.batch_size}")
    print("| model | forward kFLOP | ÷ DNN | train step kFLOP | ÷ DNN |\n|---|---|---|---|---|")
    for name in names:
        f = model_dot_flops(name, schema, FLAGS.batch_size)
        base = base or f
        print(f"| {name} | {f['forward'] / 1e3:.1f} | {f['forward'] / base['forward']:.2f}× | "
              f"{f['train'] / 1e3:.1f} | {f['train'] / base['train']:.2f}× |", flush=True)


def cli() -> None:
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
