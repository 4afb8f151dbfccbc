"""APG block: decomposed = materialised U S(z) V, conditions, over-parameterisation merge."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mdr_tf.layers.mechanisms.apg import APGDense, merge_overparameterization
from mdr_tf.models.backbones import BackboneModel
from tests.helpers import assert_config_json, assert_roundtrips, random_inputs

DIMS = {"domain_side": 3}


def _block(units=5, n=7, **kw):
    blk = APGDense(units, num_domains=2, context_dims=DIMS, **kw)
    blk.build((None, n))
    rng = np.random.default_rng(0)
    for w in blk.trainable_weights:  # non-zero biases / generator so every term matters
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    return blk


def _inputs(b=6, n=7, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1, [b, n]).astype("float32"),
            {"domain_side": rng.normal(0, 1, [b, 3]).astype("float32")})


def _np(w):
    return keras.ops.convert_to_numpy(w)


def _generator_np(blk, z):
    g = z
    for i, (w, b) in enumerate(zip(blk.gen_kernels, blk.gen_biases)):
        g = g @ _np(w) + _np(b)
        if i < len(blk.gen_kernels) - 1:
            g = np.maximum(g, 0)
    return g


@pytest.mark.parametrize("overparam", [None, 9])
def test_decomposed_equals_materialised(overparam):
    blk = _block(generator_units=[4], generate_bias=True, overparam_dim=overparam, rank=3)
    x, ctx = _inputs()
    y = _np(blk(x, ctx))
    g = _generator_np(blk, ctx["domain_side"])
    k = 3
    s = g[:, : k * k].reshape(-1, k, k) + np.eye(k)
    np.testing.assert_allclose(_np(blk.core(x, ctx)[0]), s, rtol=1e-5, atol=1e-6)
    u, v = blk.merged_factors()
    if overparam:
        np.testing.assert_allclose(u, _np(blk.u_left) @ _np(blk.u_right), rtol=1e-6)
    w = np.einsum("nk,bkl,lu->bnu", u, s, v)  # materialised per-sample kernels [B, n, u]
    ref = np.einsum("bn,bnu->bu", x, w) + g[:, k * k:]  # the generated bias replaces the shared one
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    assert blk.bias is None and not any(v.path.endswith("/bias") for v in blk.weights)
    assert blk.generated_parameters_per_sample() == k * k + 5
    shared = _block(generator_units=[4], rank=3)  # without: the shared bias b
    g = _generator_np(shared, ctx["domain_side"])
    w = np.einsum("nk,bkl,lu->bnu", _np(shared.u), g.reshape(-1, 3, 3) + np.eye(3), _np(shared.v))
    np.testing.assert_allclose(_np(shared(x, ctx)), np.einsum("bn,bnu->bu", x, w) + _np(shared.bias),
                               rtol=1e-4, atol=1e-5)


def test_default_rank_and_identity_core():
    blk = APGDense(16, context_dims=DIMS)
    blk.build((None, 40))
    assert blk.k == 4  # ceil(min(40, 16) / 4), MMLRec's mf_k = 4
    assert blk.generated_parameters_per_sample() == 16
    x, ctx = _inputs(n=40)
    # fresh generator (zero bias, tiny condition) → S ≈ I → the layer starts as x U V + b
    ctx = {"domain_side": np.zeros_like(ctx["domain_side"])}
    np.testing.assert_allclose(_np(blk(x, ctx)), x @ _np(blk.u) @ _np(blk.v), rtol=1e-4, atol=1e-5)
    assert_config_json(blk)
    with pytest.raises(ValueError, match="condition must be one of"):
        APGDense(4, condition="nope")


@pytest.mark.parametrize("condition", ["group", "self", "mix"])
def test_condition_modes_select_what_drives_S(condition):
    blk = _block(condition=condition, rank=2)
    x, ctx = _inputs()
    x2, ctx2 = _inputs(seed=2)
    s = _np(blk.core(x, ctx)[0])
    s_other_x = _np(blk.core(x2, ctx)[0])
    s_other_dom = _np(blk.core(x, ctx2)[0])
    depends_on_x = not np.allclose(s, s_other_x)
    depends_on_dom = not np.allclose(s, s_other_dom)
    assert depends_on_x == (condition in ("self", "mix"))
    assert depends_on_dom == (condition in ("group", "mix"))


@pytest.mark.parametrize("stop", [True, False])
def test_group_condition_stop_gradient(stop):
    blk = _block(stop_gradient_condition=stop, rank=2)
    x, ctx = _inputs()
    z = tf.constant(ctx["domain_side"])
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = tf.reduce_sum(blk(tf.constant(x), {"domain_side": z}))
    grad = tape.gradient(loss, z, unconnected_gradients=tf.UnconnectedGradients.ZERO).numpy()
    assert (np.abs(grad).sum() == 0) == stop


def test_overparameterised_model_merges_to_identical_predictions(synth_schema, tmp_path):
    m = BackboneModel(synth_schema.to_config(), hidden_units=[8, 4], block="apg",
                      block_config={"overparam_dim": 12, "generate_bias": True})
    m.build()
    rng = np.random.default_rng(0)
    for w in m.trainable_weights:  # move away from init so the merge is not trivially exact
        w.assign(w.numpy() + rng.normal(0, 0.1, w.shape).astype("float32"))
    x = random_inputs(synth_schema, 32)
    merged = merge_overparameterization(m)
    assert not any("u_left" in v.path for v in merged.weights)
    assert merged.get_config()["block_config"]["overparam_dim"] is None
    np.testing.assert_allclose(merged.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-6)
    assert_roundtrips(merged, str(tmp_path), x)
