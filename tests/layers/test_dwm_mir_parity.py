"""Issue 18.1 (MI-DPG's MIR): the faster negatives give the numbers of the code they replace.

``_ref_mir`` below is ``DWMDense.mir`` as it was before (commit 1038db4), kept verbatim: the
shuffle as ``keras.random.shuffle`` + ``ops.take`` (XLA's sort, a scatter-add gradient) and the
roll as a slice of ``[hz; hz]`` (which recompiled under XLA at every call, fixed by
``ops.roll``). The package now computes the same permutation by a sorting network under
XLA (``shuffled_indices``) and the gather's gradient as a gather (``permute_rows``).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from mdr_tf.layers.mechanisms.dwm import DWMDense, argsort_unit_keys, permute_rows, shuffled_indices
from mdr_tf.models.midpg import build_midpg
from tests.helpers import random_inputs


def _ref_mir(self, z, s, training=None):
    hz = self._z_term(z)
    batch = ops.shape(z)[0]
    if self.mir_negatives == "roll":
        r = keras.random.randint((), 0, batch, seed=self.seed_generator, dtype="int32")
        neg = ops.slice(ops.concatenate([hz, hz], axis=0), [r, 0], ops.shape(hz))
    else:
        neg = ops.take(hz, keras.random.shuffle(ops.arange(batch), seed=self.seed_generator), axis=0)
    return self._jsd(hz, neg, s)


@pytest.mark.parametrize("n", [1, 2, 5, 37, 512])
def test_shuffled_indices_is_keras_shuffle(n):
    for seed in range(3):
        a, b = keras.random.SeedGenerator(seed), keras.random.SeedGenerator(seed)
        want = np.asarray(keras.random.shuffle(ops.arange(n), seed=a))
        got = np.asarray(shuffled_indices(n, b, method="network"))
        np.testing.assert_array_equal(got, want)
        assert np.array_equal(np.sort(got), np.arange(n))
        # the same draw: both generators advanced alike
        np.testing.assert_array_equal(np.asarray(a.state), np.asarray(b.state))


def test_shuffled_indices_is_keras_shuffle_under_xla():
    a, b = keras.random.SeedGenerator(11), keras.random.SeedGenerator(11)
    ref = tf.function(lambda: keras.random.shuffle(ops.arange(100), seed=a), jit_compile=True)
    new = tf.function(lambda: shuffled_indices(100, b), jit_compile=True)
    perms = [new().numpy() for _ in range(5)]
    for p in perms:
        np.testing.assert_array_equal(p, ref().numpy())
    assert len({tuple(p) for p in perms}) == 5  # a new permutation per call


def test_network_only_while_tracing_for_xla(monkeypatch):
    """"auto" sorts by the network under XLA only (outside XLA TF's argsort kernel is faster)."""
    from mdr_tf.layers.mechanisms import dwm

    calls = []
    real = dwm.argsort_unit_keys
    monkeypatch.setattr(dwm, "argsort_unit_keys", lambda u: calls.append(1) or real(u))
    sg = keras.random.SeedGenerator(3)
    shuffled_indices(16, sg)
    tf.function(lambda: shuffled_indices(16, sg))()
    assert calls == []
    tf.function(lambda: shuffled_indices(16, sg), jit_compile=True)()
    assert calls == [1]
    with pytest.raises(ValueError, match="method"):
        shuffled_indices(16, sg, method="bubble")


def test_argsort_unit_keys_orders_ties_as_the_stable_argsort():
    """Keys with many ties (multiples of 2^-23, like the generator's): equal keys keep their
    index order, as ``tf.argsort`` (which keras.random.shuffle uses) and NumPy's stable sort."""
    rng = np.random.default_rng(0)
    for n in (6, 64, 300):
        u = (rng.integers(0, 4, n) * 2**20 + rng.integers(0, 2, n)).astype(np.float32) / np.float32(2**23)
        assert len(np.unique(u)) < n // 2 or n == 6
        want = np.argsort(u, kind="stable")
        np.testing.assert_array_equal(np.asarray(argsort_unit_keys(tf.constant(u))), want)
        np.testing.assert_array_equal(tf.argsort(u).numpy(), want)


@pytest.mark.parametrize("jit", [False, True])
def test_permute_rows_gradient_equals_the_gather_gradient(jit):
    rng = np.random.default_rng(1)
    h = tf.constant(rng.normal(size=(9, 4)).astype("float32"))
    c = tf.constant(rng.normal(size=(9, 4)).astype("float32"))
    perm = tf.constant(rng.permutation(9).astype("int32"))

    def both(h):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(h)
            a, b = permute_rows(h, perm), tf.gather(h, perm)
            la, lb = tf.reduce_sum(c * a * a), tf.reduce_sum(c * b * b)
        return a, b, tape.gradient(la, h), tf.convert_to_tensor(tape.gradient(lb, h))

    a, b, ga, gb = tf.function(both, jit_compile=True)(h) if jit else both(h)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=0, atol=1e-6)
    assert np.abs(gb.numpy()).max() > 0.1


def _step(model, x, jit):
    """Prediction, MIR losses and all gradients of one training call (seed state restored after)."""
    state = [np.array(v.numpy()) for v in model.variables]
    weights = model.trainable_variables

    def run(x):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            c = tf.constant(np.linspace(-1.0, 2.0, int(pred.shape[0])).reshape(pred.shape), pred.dtype)
            total = tf.reduce_sum(c * pred) + tf.add_n(model.losses)
        return pred, list(model.losses), tape.gradient(total, weights)

    pred, losses, grads = tf.function(run, jit_compile=True)(x) if jit else run(x)
    out = (np.asarray(pred), [float(v) for v in losses], [np.asarray(tf.convert_to_tensor(g)) for g in grads])
    for v, s in zip(model.variables, state):
        v.assign(s)
    return out


@pytest.mark.parametrize("negatives,jit", [("shuffle", False), ("roll", False), ("shuffle", True)])
def test_mir_matches_the_former_code(synth_schema, monkeypatch, negatives, jit):
    """MI-DPG (registry defaults, small widths): outputs, MIR terms and every gradient equal
    the former computation on the same weights, inputs and seed state (XLA: the program
    ``fit`` runs; the roll under XLA is checked by test_dwm.py's compile-once test)."""
    keras.utils.set_random_seed(0)
    model = build_midpg(synth_schema.to_config(), hidden_units=[24, 16, 8], mir_negatives=negatives)
    model.build()
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:  # a discriminator far from its initialisation
        v.assign(np.asarray(v) + rng.normal(0, 0.3, v.shape).astype("float32"))
    x = random_inputs(synth_schema, 64, seed=3)
    new = _step(model, x, jit)
    with monkeypatch.context() as mp:
        mp.setattr(DWMDense, "mir", _ref_mir)
        ref = _step(model, x, jit)
    np.testing.assert_allclose(new[0], ref[0], rtol=1e-5, atol=1e-5)
    assert len(new[1]) == len(ref[1]) == 3
    np.testing.assert_allclose(new[1], ref[1], rtol=1e-5, atol=1e-5)
    for w, a, b in zip(model.trainable_variables, new[2], ref[2]):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=w.path)
    # the negatives matter: the identity instead of the permutation changes the MIR terms
    with monkeypatch.context() as mp:
        mp.setattr(DWMDense, "mir", lambda self, z, s, training=None: self._jsd(self._z_term(z), self._z_term(z), s))
        same = _step(model, x, False)
    assert max(abs(a - b) for a, b in zip(same[1], ref[1])) > 1e-4
