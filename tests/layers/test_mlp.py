"""``DomainMLP``: ``[block → (BN) → act → (dropout) → (hook)] × L`` against NumPy (mdr_tf.layers.mlp)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from mdr_tf.layers import blocks
from mdr_tf.layers.blocks import DomainHook
from mdr_tf.layers.mlp import DomainMLP


class ScaleByDomain(DomainHook):
    """Test hook: ``h · (1 + domain)`` (a hand-checkable domain-dependent transform)."""

    def call(self, h, ctx=None, training=None):
        d = keras.ops.cast(keras.ops.reshape(ctx["domain"], (-1, 1)), h.dtype)
        return h * (1.0 + d)


@pytest.fixture
def scale_hook(monkeypatch):
    monkeypatch.setitem(blocks.HOOKS, "test_scale", ScaleByDomain)
    return "test_scale"


def _relu(z):
    return np.maximum(z, 0.0)


def _set_random(mlp, seed=0):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(scale=0.7, size=np.shape(w)).astype(np.float32) for w in mlp.get_weights()]
    mlp.set_weights(ws)
    return ws


def test_plain_mlp_matches_numpy():
    mlp = DomainMLP([4, 3], activation="relu")
    mlp.build((None, 5))
    (w0, b0, w1, b1) = _set_random(mlp)
    x = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    want = _relu(_relu(x @ w0 + b0) @ w1 + b1)
    np.testing.assert_allclose(np.asarray(mlp(x, {})), want, rtol=1e-5, atol=1e-5)
    assert mlp.output_dim == 3 and mlp.compute_output_shape((None, 5)) == (None, 3)


def test_batch_norm_in_inference_uses_moving_statistics():
    mlp = DomainMLP([2], batch_norm=True, bn_epsilon=1e-3, activation="linear")
    mlp.build((None, 2))
    w = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    b = np.zeros(2, np.float32)
    gamma, beta = np.array([2.0, 1.0], np.float32), np.array([0.0, 1.0], np.float32)
    mean, var = np.array([1.0, -1.0], np.float32), np.array([4.0, 0.25], np.float32)
    mlp.set_weights([w, b, gamma, beta, mean, var])
    x = np.array([[3.0, 1.0]], np.float32)  # z = [3, 2]
    want = gamma * (np.array([3.0, 2.0]) - mean) / np.sqrt(var + 1e-3) + beta
    np.testing.assert_allclose(np.asarray(mlp(x, {}, training=False)), [want], rtol=1e-5)


def test_dropout_is_off_at_inference_and_on_in_training():
    mlp = DomainMLP([64], dropout=0.5, activation="linear", block_config={"kernel_initializer": "ones"})
    mlp.build((None, 4))
    x = np.ones((8, 4), np.float32)
    np.testing.assert_allclose(np.asarray(mlp(x, {}, training=False)), 4.0)
    y = np.asarray(mlp(x, {}, training=True))
    assert set(np.unique(y).round(4)) == {0.0, 8.0}  # kept units scaled by 1 / (1 - 0.5)


def test_hook_positions_and_input_hook(scale_hook):
    ctx = {"domain": np.array([0, 1, 2], np.int32)}
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    scale = np.array([[1.0], [2.0], [3.0]], np.float32)
    for positions, on_input, hooked in [(None, False, {0, 1, 2}), ([-1], False, {2}), ([0, -1], True, {0, 2})]:
        mlp = DomainMLP([3, 3, 2], num_domains=3, hook=scale_hook, hook_positions=positions, hook_on_input=on_input)
        mlp.build((None, 4))
        ws = _set_random(mlp, seed=3)
        assert mlp.hook_positions == sorted(hooked)
        h = x * scale if on_input else x
        for i in range(3):
            h = _relu(h @ ws[2 * i] + ws[2 * i + 1])
            if i in hooked:
                h = h * scale
        np.testing.assert_allclose(np.asarray(mlp(x, ctx)), h, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown hook"):
        DomainMLP([3], hook="nope")


def test_block_choice_changes_the_layers_and_config_round_trips():
    mlp = DomainMLP([4, 2], num_domains=3, context_dims={"all": 5}, block="mlora", block_config={"rank": 1},
                    batch_norm=True, dropout=0.1, name="deep")
    mlp.build((None, 5))
    assert [type(b).__name__ for b in mlp.blocks] == ["MLoRADense", "MLoRADense"]
    assert [b.r for b in mlp.blocks] == [1, 1]
    cfg = json.loads(json.dumps(mlp.get_config()))
    clone = DomainMLP.from_config(cfg)
    clone.build((None, 5))
    clone.set_weights(mlp.get_weights())
    x = np.random.default_rng(4).normal(size=(6, 5)).astype(np.float32)
    ctx = {"domain": np.arange(6, dtype=np.int32) % 3}
    np.testing.assert_allclose(np.asarray(clone(x, ctx)), np.asarray(mlp(x, ctx)), atol=0)
