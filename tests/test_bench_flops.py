"""experiments.bench_flops: dot FLOPs read from optimised HLO, against hand-computed counts."""

import numpy as np
import pytest
import tensorflow as tf

from experiments.bench_flops import dot_flops


def _hlo(fn, *args):
    return tf.function(fn, jit_compile=True).experimental_get_compiler_ir(*args)(stage="optimized_hlo")


def test_plain_and_batched_matmul_flops():
    x = tf.constant(np.ones((5, 7), np.float32))
    w = tf.constant(np.ones((7, 3), np.float32))
    a = tf.constant(np.ones((4, 5, 6), np.float32))
    b = tf.constant(np.ones((4, 6, 2), np.float32))

    def f(x, w, a, b):
        return tf.reduce_sum(tf.matmul(x, w)) + tf.reduce_sum(tf.matmul(a, b))

    flops = dot_flops(_hlo(f, x, w, a, b))
    assert sum(flops.values()) == 2 * 5 * 7 * 3 + 2 * 4 * 5 * 6 * 2


def test_forward_and_gradient_of_a_two_layer_mlp():
    batch, n, h, m = 8, 4, 3, 2
    w1 = tf.Variable(np.full((n, h), 0.5, np.float32))
    w2 = tf.Variable(np.full((h, m), 0.5, np.float32))
    x = tf.constant(np.ones((batch, n), np.float32))

    def f(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.tanh(tf.nn.relu(x @ w1) @ w2))
        return tape.gradient(loss, [w1, w2])

    flops = dot_flops(_hlo(f, x))
    forward = sum(v for k, v in flops.items() if "gradient_tape" not in k)
    # forward: x w1 and h w2; gradient: dW2 = hᵀ g, dh = g w2ᵀ, dW1 = xᵀ dh (no dx: x is a constant).
    assert forward == 2 * batch * (n * h + h * m)
    assert sum(flops.values()) == forward + 2 * batch * (h * m + m * h + n * h)


def test_unknown_operand_is_a_clear_error():
    text = "%d = f32[2,2]{1,0} dot(%nowhere, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}"
    with pytest.raises(ValueError, match="nowhere"):
        dot_flops(text)
