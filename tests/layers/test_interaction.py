"""Cross network, factorisation machine and linear term against hand-computed values (mdr_tf.layers.interaction)."""

from __future__ import annotations

import itertools
import json

import numpy as np

from mdr_tf.layers.interaction import CrossNetwork, FactorizationMachine, LinearTerm


def test_cross_network_by_hand():
    # x0 = [1, 2]; layer 0: w = [0.5, -1], b = [0.1, 0.2]: x0·w = -1.5,
    #   x1 = x0 · (-1.5) + b + x0 = [-0.4, -0.8];
    # layer 1: w = [1, 1], b = 0: x1·w = -1.2, x2 = x0 · (-1.2) + x1 = [-1.6, -3.2].
    cross = CrossNetwork(2)
    cross.build((None, 2))
    # weights in creation order: w_0, w_1, b_0, b_1
    cross.set_weights([np.array([[0.5], [-1.0]]), np.array([[1.0], [1.0]]), np.array([0.1, 0.2]), np.zeros(2)])
    out = np.asarray(cross(np.array([[1.0, 2.0]], np.float32)))
    np.testing.assert_allclose(out, [[-1.6, -3.2]], rtol=1e-6)


def test_cross_network_matches_numpy_and_keeps_the_shape():
    rng = np.random.default_rng(0)
    cross = CrossNetwork(3)
    cross.build((None, 4))
    ws = [rng.normal(size=np.shape(w)).astype(np.float32) for w in cross.get_weights()]
    cross.set_weights(ws)
    x0 = rng.normal(size=(5, 4)).astype(np.float32)
    # CrossNetwork creates all w_l, then all b_l.
    w_l, b_l = ws[:3], ws[3:]
    x = x0
    for w, b in zip(w_l, b_l):
        x = x0 * (x @ w) + b + x
    np.testing.assert_allclose(np.asarray(cross(x0)), x, rtol=1e-5, atol=1e-5)
    assert cross.compute_output_shape((None, 4)) == (None, 4)
    clone = CrossNetwork.from_config(json.loads(json.dumps(cross.get_config())))
    assert clone.num_layers == 3


def test_factorization_machine_by_hand_and_brute_force():
    # v1 = [1, 2], v2 = [3, 4], v3 = [0, -1]: Σ_{i<j} <v_i, v_j> = 11 + (-2) + (-4) = 5.
    fields = np.array([[[1.0, 2.0], [3.0, 4.0], [0.0, -1.0]]], np.float32)
    np.testing.assert_allclose(np.asarray(FactorizationMachine()(fields)), [[5.0]], rtol=1e-6)
    rng = np.random.default_rng(1)
    v = rng.normal(size=(4, 5, 3)).astype(np.float32)
    want = [[sum(float(v[b, i] @ v[b, j]) for i, j in itertools.combinations(range(5), 2))] for b in range(4)]
    np.testing.assert_allclose(np.asarray(FactorizationMachine()(v)), want, rtol=1e-4, atol=1e-4)


SCHEMA = {
    "features": [
        {"name": "a", "kind": "categorical", "vocab_size": 3},
        {"name": "b", "kind": "categorical", "vocab_size": 2},
        {"name": "x", "kind": "dense"},
    ],
    "num_domains": 2,
}


def test_linear_term_by_hand():
    lin = LinearTerm(SCHEMA)
    lin.build()
    # weights in creation order: w_a, w_b, w_domain, w_dense, bias
    lin.set_weights([np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0]), np.array([10.0, 20.0]),
                     np.array([[0.5]]), np.array([-1.0])])
    inputs = {"a": np.array([2, 0]), "b": np.array([1, 0])}
    ctx = {"domain": np.array([1, 0], np.int32), "dense": np.array([[4.0], [0.0]], np.float32)}
    # row 0: 0.3 + 2 + 20 + 0.5·4 − 1 = 23.3; row 1: 0.1 + 1 + 10 + 0 − 1 = 10.1
    np.testing.assert_allclose(np.asarray(lin(inputs, ctx)), [[23.3], [10.1]], rtol=1e-6)
    no_dom = LinearTerm(SCHEMA, include_domain=False)
    no_dom.build()
    no_dom.set_weights([np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0]), np.array([[0.5]]), np.array([-1.0])])
    np.testing.assert_allclose(np.asarray(no_dom(inputs, ctx)), [[3.3], [0.1]], rtol=1e-6)


def test_linear_term_out_of_vocabulary_ids_read_row_0():
    lin = LinearTerm(SCHEMA, include_domain=False)
    lin.build()
    lin.set_weights([np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0]), np.array([[0.0]]), np.array([0.0])])
    ctx = {"domain": np.zeros(4, np.int32), "dense": np.zeros((4, 1), np.float32)}
    # a: 3 (= vocab), -1, 2**32 + 2 (not read as 2), 1 (in range) → w_a[0], w_a[0], w_a[0], w_a[1]
    inputs = {"a": np.array([3, -1, 2**32 + 2, 1], np.int64), "b": np.array([1, 1, 1, 1], np.int64)}
    np.testing.assert_allclose(np.asarray(lin(inputs, ctx)).reshape(-1), [2.1, 2.1, 2.1, 2.2], rtol=1e-6)
