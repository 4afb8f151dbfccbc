"""StackedDense / stacked_dense: the one stacked per-branch dense layer (issue 12.4)."""

import keras
import numpy as np
import pytest

from mdr_tf.layers.experts import StackedMLP
from mdr_tf.layers.mechanisms.hamur import HyperAdapter, HyperNetwork, PerDomainBatchNorm, PerDomainDense
from mdr_tf.layers.routing import all_domains_dense
from mdr_tf.layers.stacked import StackedDense, stacked_dense
from mdr_tf.params import is_per_domain
from tests.helpers import assert_config_json

K, B, N, U = 3, 5, 4, 2


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(K, N, U)).astype("float32"), rng.normal(size=(K, U)).astype("float32"))


def _numpy(x, w, b, layout):
    """y_k = x_k W_k + b_k, by hand."""
    if x.ndim == 2:
        y = np.stack([x @ w[k] + b[k] for k in range(K)])                       # [K, B, U]
    elif layout == "branch_major":
        y = np.stack([x[k] @ w[k] + b[k] for k in range(K)])
    else:
        y = np.stack([x[:, k] @ w[k] + b[k] for k in range(K)])
    return y if layout == "branch_major" else np.transpose(y, (1, 0, 2))


@pytest.mark.parametrize("implementation", ["einsum", "loop"])
@pytest.mark.parametrize("layout", ["branch_major", "batch_major"])
@pytest.mark.parametrize("shared", [True, False])
def test_stacked_dense_matches_numpy(implementation, layout, shared):
    w, b = _weights()
    rng = np.random.default_rng(1)
    shape = (B, N) if shared else ((K, B, N) if layout == "branch_major" else (B, K, N))
    x = rng.normal(size=shape).astype("float32")
    got = np.asarray(stacked_dense(x, w, b, layout, implementation))
    np.testing.assert_allclose(got, _numpy(x, w, b, layout), rtol=1e-5, atol=1e-5)
    layer = StackedDense(U, K, layout=layout, implementation=implementation)
    layer.build(shape)
    layer.kernel.assign(w)
    layer.bias.assign(b)
    np.testing.assert_allclose(np.asarray(layer(x)), got, rtol=1e-6, atol=1e-6)
    assert tuple(layer.compute_output_shape(shape)) == got.shape


def test_each_branch_uses_only_its_own_weights():
    """Control: changing branch 1's kernel changes branch 1's output only."""
    w, b = _weights()
    x = np.random.default_rng(2).normal(size=(B, N)).astype("float32")
    y0 = np.asarray(stacked_dense(x, w, b))
    w2 = w.copy()
    w2[1] += 1.0
    y1 = np.asarray(stacked_dense(x, w2, b))
    np.testing.assert_array_equal(y1[[0, 2]], y0[[0, 2]])
    assert not np.allclose(y1[1], y0[1])
    np.testing.assert_allclose(np.asarray(all_domains_dense(x, w, b)), y0, rtol=1e-6)  # the routing helper is it


def test_auto_implementation():
    layer = StackedDense(U, K, implementation="auto")
    x2, x3 = np.zeros((B, N), "float32"), np.zeros((K, B, N), "float32")
    assert layer.resolve_implementation(x2, training=True) == "einsum"
    assert layer.resolve_implementation(x2, training=False) == "loop"  # a branch's output never depends on K
    assert layer.resolve_implementation(x3, training=True) == "loop"
    with pytest.raises(ValueError, match="layout"):
        StackedDense(U, K, layout="bku")
    with pytest.raises(ValueError, match="implementation"):
        StackedDense(U, K, implementation="fast")


def test_branches_initialised_as_separate_kernels():
    keras.utils.set_random_seed(0)
    layer = StackedDense(64, 4, kernel_initializer=keras.initializers.GlorotUniform(seed=3))
    layer.build((None, 64))
    w = np.asarray(layer.kernel)
    assert not np.allclose(w[0], w[1])  # a seeded initializer is re-seeded per branch
    limit = np.sqrt(6.0 / (64 + 64))  # fans of one [64, 64] kernel (not folded with K)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit


def test_config_round_trip_and_per_domain_marks():
    layer = StackedDense(U, K, layout="batch_major", implementation="loop", per_domain=True,
                         kernel_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=1))
    assert_config_json(layer)
    cfg = layer.get_config()
    assert cfg["kernel_initializer"]["class_name"] == "RandomNormal"
    clone = StackedDense.from_config(cfg)
    assert clone.get_config() == cfg
    layer.build((None, N))
    assert is_per_domain(layer.kernel) and is_per_domain(layer.bias)
    hamur = PerDomainDense(U, K, implementation="einsum")
    assert_config_json(hamur)
    assert PerDomainDense.from_config(hamur.get_config()).get_config() == hamur.get_config()


def test_stacked_mlp_layers_are_stacked_dense():
    mlp = StackedMLP(K, [4], output_units=1)
    y = mlp(np.ones((B, N), "float32"))
    assert y.shape == (K, B, 1)
    assert all(isinstance(d, StackedDense) for d in mlp.denses)
    assert [tuple(k.shape) for k in mlp.kernels] == [(K, N, 4), (K, 4, 1)]


def test_sublayers_take_the_layer_dtype_policy():
    """Mixed precision: sublayers created in build() compute in the layer's dtype."""
    mlp = StackedMLP(K, [4], batch_norm=True, dtype="mixed_float16")
    y = mlp(np.ones((B, N), "float32"))
    assert keras.backend.standardize_dtype(y.dtype) == "float16" and mlp.denses[0].kernel.dtype == "float32"
    assert mlp.norms[0].dtype_policy.name == "mixed_float16"
    hyper = HyperNetwork(k=2, hidden_units=[4], dtype="mixed_float16")
    assert keras.backend.standardize_dtype(hyper(np.ones((B, N), "float32")).dtype) == "float16"
    assert all(d.dtype_policy.name == "mixed_float16" for d in hyper.denses + hyper.norms)
    adapter = HyperAdapter(k=2, bottleneck=3, dtype="mixed_float16")
    adapter.build((None, N))
    assert adapter.norm.dtype_policy.name == "mixed_float16"
    norm = PerDomainBatchNorm(dtype="mixed_float16")
    norm.build((None, K, N))
    assert norm.bn.dtype_policy.name == "mixed_float16"
