"""Per-domain routing helpers (mdr_tf.layers.routing) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from mdr_tf.layers import routing


def _problem(b=37, n=5, u=3, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, n)).astype(np.float32)
    k = rng.normal(size=(d, n, u)).astype(np.float32)
    c = rng.normal(size=(d, u)).astype(np.float32)
    dom = rng.integers(0, d, b).astype(np.int32)
    dom[:3] = d - 1  # the last domain is present; domain 1 is left out below
    dom[dom == 1] = 0
    want = np.stack([x[i] @ k[dom[i]] + c[dom[i]] for i in range(b)])
    return x, k, c, dom, want


@pytest.mark.parametrize("name", routing.ROUTINGS)
def test_domain_dense_every_routing_equals_the_per_sample_formula(name):
    x, k, c, dom, want = _problem()
    np.testing.assert_allclose(np.asarray(routing.domain_dense(x, k, c, dom, name)), want, rtol=1e-5, atol=1e-5)
    # Without biases, and with a batch smaller than one tile.
    x2, k2, _, dom2, _ = _problem(b=5, seed=1)
    want2 = np.stack([x2[i] @ k2[dom2[i]] for i in range(5)])
    np.testing.assert_allclose(np.asarray(routing.domain_dense(x2, k2, None, dom2, name)), want2, rtol=1e-5,
                               atol=1e-5)


def test_unknown_routing_is_rejected():
    x, k, c, dom, _ = _problem(b=4)
    with pytest.raises(ValueError, match="unknown routing 'nope'"):
        routing.domain_dense(x, k, c, dom, "nope")


def test_select_by_domain_gather_and_masked_sum_agree():
    rng = np.random.default_rng(2)
    stacked = rng.normal(size=(3, 6, 2, 2)).astype(np.float32)  # [D, B, ...]
    dom = np.array([2, 0, 1, 1, 0, 2], np.int32)
    want = stacked[dom, np.arange(6)]
    np.testing.assert_array_equal(np.asarray(routing.select_by_domain(stacked, dom)), want)
    np.testing.assert_allclose(np.asarray(routing.select_by_domain_masked(stacked, dom)), want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(routing.gather_domain_params(stacked[:, 0], dom)), stacked[dom, 0])


def test_domain_buckets_place_each_domain_in_its_own_tiles():
    dom = np.array([1, 0, 1, 1, 2, 0, 1], np.int32)
    tile = 2
    pos, tile_domain, n_tiles = (np.asarray(t) for t in routing.domain_buckets(dom, 3, tile=tile))
    assert len(set(pos.tolist())) == len(dom)  # one row each
    # Capacity bound: n_tiles · tile ≤ B + D · (tile − 1), rounded up to whole tiles.
    assert int(n_tiles) * tile >= len(dom) and int(n_tiles) == (7 + 3 * (tile - 1) + tile - 1) // tile
    assert all(tile_domain[p // tile] == d for p, d in zip(pos.tolist(), dom.tolist()))
    # Domain blocks in order: domain 0's 2 rows fill tile 0, domain 1's 4 rows tiles 1-2, domain 2 tile 3.
    np.testing.assert_array_equal(tile_domain[:4], [0, 1, 1, 2])
    # Round trip through the tiles.
    x = np.arange(14, dtype=np.float32).reshape(7, 2)
    back = routing.from_buckets(routing.to_buckets(x, pos, int(n_tiles), tile=tile), pos)
    np.testing.assert_array_equal(np.asarray(back), x)


def test_per_row_applies_fn_row_by_row():
    table = np.arange(6, dtype=np.float32).reshape(3, 2)
    w = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    out = routing.per_row(lambda r: r @ w, table)
    np.testing.assert_allclose(np.asarray(out), table @ w)
