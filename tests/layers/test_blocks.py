"""``DenseBlock`` / ``DomainHook``: the seam every mechanism plugs into (mdr_tf.layers.blocks)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from mdr_tf.layers.blocks import BLOCKS, HOOKS, DenseBlock, DomainHook, PlainDense, block_class, hook_class


def test_plain_dense_is_x_w_plus_b():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    blk = PlainDense(2)
    blk.build((None, 3))
    w = rng.normal(size=(3, 2)).astype(np.float32)
    b = np.array([0.5, -1.0], np.float32)
    blk.set_weights([w, b])
    np.testing.assert_allclose(np.asarray(blk(x)), x @ w + b, rtol=1e-6, atol=1e-6)
    # By hand on one row: [1, 2, 3] @ [[1, 0], [0, 1], [1, 1]] + [0.5, -1] = [4.5, 4].
    blk.set_weights([np.array([[1, 0], [0, 1], [1, 1]], np.float32), b])
    np.testing.assert_allclose(np.asarray(blk(np.array([[1, 2, 3]], np.float32))), [[4.5, 4.0]])
    # ctx is accepted and ignored by the plain block.
    np.testing.assert_allclose(np.asarray(blk(x, {"domain": np.zeros(5, np.int32)})), np.asarray(blk(x)))
    assert blk.compute_output_shape((None, 7, 3)) == (None, 7, 2)


def test_no_bias_and_the_kernel_regularizer_loss():
    blk = DenseBlock(2, use_bias=False, kernel_initializer="ones", kernel_regularizer=keras.regularizers.L2(0.1))
    blk.build((None, 3))
    assert blk.bias is None and len(blk.weights) == 1
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_allclose(np.asarray(blk(x)), [[6.0, 6.0]])
    # L2(0.1) on a 3x2 kernel of ones: 0.1 * 6 = 0.6.
    np.testing.assert_allclose(float(sum(blk.losses)), 0.6, rtol=1e-6)


def test_block_config_round_trip_keeps_initializer_and_regularizer():
    blk = PlainDense(4, num_domains=3, context_dims={"all": 5}, use_bias=False,
                     kernel_initializer=keras.initializers.Constant(0.3),
                     kernel_regularizer=keras.regularizers.L2(0.01), name="p")
    cfg = json.loads(json.dumps(blk.get_config()))
    assert cfg["name"] == "p" and cfg["num_domains"] == 3 and cfg["context_dims"] == {"all": 5}
    clone = PlainDense.from_config(cfg)
    clone.build((None, 2))
    np.testing.assert_array_equal(np.asarray(clone.kernel), np.full((2, 4), 0.3, np.float32))
    assert clone.bias is None and isinstance(clone.kernel_regularizer, keras.regularizers.L2)
    assert clone.kernel_regularizer.l2 == pytest.approx(0.01)


def test_hook_base_is_the_identity_and_round_trips():
    hook = DomainHook(num_domains=2, context_dims={"ids": 4})
    h = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(hook(h, {})), h)
    clone = DomainHook.from_config(json.loads(json.dumps(hook.get_config())))
    assert clone.num_domains == 2 and clone.context_dims == {"ids": 4}


def test_registry_names_blocks_and_hooks_and_rejects_unknown_names():
    assert block_class("plain") is PlainDense
    for name in ("mlora", "star", "dwm", "apg"):
        assert issubclass(block_class(name), DenseBlock), name  # importing registers the mechanisms
    for name in ("ppnet", "adasparse", "hamur"):
        assert issubclass(hook_class(name), DomainHook), name
    assert set(BLOCKS) >= {"plain", "mlora", "star"} and set(HOOKS) >= {"ppnet", "hamur"}
    with pytest.raises(ValueError, match="unknown dense block 'nope'; available: .*plain"):
        block_class("nope")
    with pytest.raises(ValueError, match="unknown hook 'nope'"):
        hook_class("nope")
