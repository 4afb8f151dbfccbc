"""CIGF layers: adjacency invariants, CIGCN closed forms and MESI against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mdr_tf.layers.graph import SparseAdjacency, bipartite_adjacency
from mdr_tf.layers.mechanisms.cigf import CIGCN, MESI
from tests.helpers import assert_config_json

U, I, D = 5, 7, 4


def _graphs(seed: int = 0):
    """Three nested random behaviour edge sets (rated ⊇ liked ⊇ loved), user 4 isolated in 'loved'."""
    rng = np.random.default_rng(seed)
    rated = rng.random((U, I)) < 0.6
    liked = rated & (rng.random((U, I)) < 0.6)
    loved = liked & (rng.random((U, I)) < 0.6)
    loved[4] = False
    return [np.nonzero(m) for m in (rated, liked, loved)]


def _dense_left(users, items):
    a = np.zeros((U + I, U + I))
    a[users, U + items] = 1
    a[U + items, users] = 1
    deg = a.sum(1, keepdims=True)
    return np.divide(a, deg, out=np.zeros_like(a), where=deg > 0)


@pytest.mark.parametrize("norm", ["left", "symm"])
def test_adjacency_invariants(norm):
    for users, items in _graphs():
        a = tf.sparse.to_dense(bipartite_adjacency(users, items, U, I, norm)).numpy()
        assert np.all(a[:U, :U] == 0) and np.all(a[U:, U:] == 0)  # only user-item blocks
        assert np.array_equal(a != 0, (a != 0).T)  # symmetric pattern
        rows = a.sum(1)
        nonisolated = (a != 0).any(1)
        if norm == "left":
            np.testing.assert_allclose(rows[nonisolated], 1.0, rtol=1e-6)  # row-stochastic
            np.testing.assert_allclose(a, _dense_left(users, items), rtol=1e-6)
        else:
            np.testing.assert_allclose(a, a.T, rtol=1e-6)
        assert np.all(rows[~nonisolated] == 0)
    with pytest.raises(ValueError, match="ids outside"):
        bipartite_adjacency(np.array([U]), np.array([0]), U, I)


def test_sparse_adjacency_matches_dense_forward_and_gradient():
    users, items = _graphs()[0]
    st = bipartite_adjacency(users, items, U, I, "left")
    dense = tf.constant(tf.sparse.to_dense(st))
    x = tf.Variable(np.random.default_rng(1).normal(size=(U + I, D)).astype(np.float32))
    w = tf.constant(np.random.default_rng(2).normal(size=(U + I, D)).astype(np.float32))
    for op in (SparseAdjacency(st), SparseAdjacency(st, use_csr=False)):
        with tf.GradientTape(persistent=True) as tape:
            y = op.matmul(x)
            ref = tf.matmul(dense, x)
            ly, lr = tf.reduce_sum(y * w), tf.reduce_sum(ref * w)
        np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tape.gradient(ly, x).numpy(), tape.gradient(lr, x).numpy(), rtol=1e-5, atol=1e-6)


def _setup(num_layers: int, mixing: bool = True, seed: int = 0):
    graphs = _graphs(seed)
    adj = [SparseAdjacency(bipartite_adjacency(u, i, U, I, "left")) for u, i in graphs]
    dense = [_dense_left(u, i) for u, i in graphs]
    e = np.random.default_rng(seed + 10).normal(size=(U + I, D)).astype(np.float32)
    layer = CIGCN(3, num_layers, mixing=mixing)
    layer.build((U + I, D))
    return layer, adj, dense, e


def test_cigcn_one_layer_closed_form():
    layer, adj, dense, e = _setup(1)
    z = layer(tf.constant(e), adjacencies=adj).numpy()
    for k in range(3):
        np.testing.assert_allclose(z[k], 2 * e + dense[k] @ e, rtol=1e-5, atol=1e-5)  # Z^k = 2E + Â_k E


@pytest.mark.parametrize("num_layers", [2, 3])
def test_cigcn_unit_mixing_closed_form(num_layers):
    layer, adj, dense, e = _setup(num_layers)
    layer.mix_kernel.assign(np.zeros(layer.mix_kernel.shape, np.float32))
    layer.mix_bias.assign(np.ones(layer.mix_bias.shape, np.float32))  # α ≡ LeakyReLU(1) = 1
    z = layer(tf.constant(e), adjacencies=adj).numpy()
    total = sum(dense)
    L = num_layers
    for k in range(3):
        s = [np.linalg.matrix_power(total, l - 1) @ dense[k] @ e for l in range(1, L + 1)]
        want = (L + 1) * e + sum((L - l + 1) * s[l - 1] for l in range(1, L + 1))
        np.testing.assert_allclose(z[k], want, rtol=1e-4, atol=1e-4)


def _numpy_cigcn(layer, dense, e, slope=0.1):
    W, b = layer.mix_kernel.numpy(), layer.mix_bias.numpy()
    out = []
    for k in range(3):
        s = dense[k] @ e
        h = e + s
        z = e + h
        for hop in range(layer.num_layers - 1):
            a = e @ W[k, hop] + b[k, hop]
            alpha = np.where(a > 0, a, slope * a)
            s = sum(alpha[:, [kp]] * (dense[kp] @ s) for kp in range(3))
            h = h + s
            z = z + h
        out.append(z)
    return np.stack(out)


def test_cigcn_random_weights_match_numpy_and_mixing_control():
    layer, adj, dense, e = _setup(3)
    layer.mix_bias.assign(np.random.default_rng(3).normal(size=layer.mix_bias.shape).astype(np.float32))
    z = layer(tf.constant(e), adjacencies=adj).numpy()
    np.testing.assert_allclose(z, _numpy_cigcn(layer, dense, e), rtol=1e-4, atol=1e-4)
    # Control: the target's representation depends on the auxiliary graphs only through the mixing.
    changed = list(adj)
    changed[0] = SparseAdjacency(bipartite_adjacency(*_graphs(seed=7)[0], U, I, "left"))
    z2 = layer(tf.constant(e), adjacencies=changed).numpy()
    assert np.abs(z2[2] - z[2]).max() > 1e-3
    plain, adj_p, _, _ = _setup(3, mixing=False)
    assert plain.mix_kernel is None
    za = plain(tf.constant(e), adjacencies=adj_p).numpy()
    zb = plain(tf.constant(e), adjacencies=[changed[0]] + adj_p[1:]).numpy()
    np.testing.assert_allclose(za[2], zb[2])  # no mixing: the target ignores the rated graph
    # Without mixing, behaviour k is LightGCN-like on its own graph: S^{k,l} = Â_k^l E.
    L = 3
    want = (L + 1) * e + sum((L - l + 1) * np.linalg.matrix_power(dense[2], l) @ e for l in range(1, L + 1))
    np.testing.assert_allclose(za[2], want, rtol=1e-4, atol=1e-4)
    # tf.SparseTensor inputs give the same result as SparseAdjacency.
    zs = layer(tf.constant(e), adjacencies=[a.sparse for a in adj]).numpy()
    np.testing.assert_allclose(zs, z, rtol=1e-5, atol=1e-5)
    assert_config_json(layer)


def test_mesi_gates_and_scores():
    rng = np.random.default_rng(0)
    zu = rng.normal(size=(6, 3, D)).astype(np.float32)
    zi = rng.normal(size=(6, 3, D)).astype(np.float32)
    mesi = MESI(3, scale=300.0)
    mesi.build(zu.shape)
    mesi.gate_bias.assign(rng.normal(size=3).astype(np.float32))
    W, b = mesi.gate_kernel.numpy(), mesi.gate_bias.numpy()
    for task in range(3):
        g = mesi.gates(tf.constant(zu), tf.constant(zi), task).numpy()
        np.testing.assert_allclose(g.sum(-1), 1.0, rtol=1e-6)
        logits = np.concatenate([zu[:, task], zi[:, task]], -1) @ W + b
        want_g = np.exp(logits - logits.max(-1, keepdims=True))
        want_g /= want_g.sum(-1, keepdims=True)
        np.testing.assert_allclose(g, want_g, rtol=1e-5)
        s = mesi(tf.constant(zu), tf.constant(zi), task=task).numpy()
        np.testing.assert_allclose(s, 300 * ((zu * zi).sum(-1) * want_g).sum(-1), rtol=1e-4)
    # K = 1: the gate is 1, the score is 300 <Z_u, Z_i>.
    one = MESI(1)
    s1 = one(tf.constant(zu[:, :1]), tf.constant(zi[:, :1]), task=0).numpy()
    np.testing.assert_array_equal(one.gates(tf.constant(zu[:, :1]), tf.constant(zi[:, :1]), 0).numpy(), 1.0)
    np.testing.assert_allclose(s1, 300 * (zu[:, 0] * zi[:, 0]).sum(-1), rtol=1e-5)
    # Without the gate (ablation): task k's own expert only.
    nog = MESI(3, use_gate=False)
    np.testing.assert_allclose(nog(tf.constant(zu), tf.constant(zi), task=1).numpy(),
                               300 * (zu[:, 1] * zi[:, 1]).sum(-1), rtol=1e-5)
    np.testing.assert_array_equal(nog.gates(tf.constant(zu), tf.constant(zi), 1).numpy(), [[0, 1, 0]] * 6)
    assert_config_json(mesi)
