"""GateNU / EPNet / PPNet hook / AdaSparse pruner: equations vs NumPy, stop-gradients, α schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mdr_tf.layers.mechanisms.gates import EPNet, GateNU, PPNetGate, AdaSparsePruner
from mdr_tf.models.adasparse import build_adasparse
from tests.helpers import assert_config_json, random_inputs


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _gatenu_np(gate: GateNU, x: np.ndarray) -> np.ndarray:
    w1, b1, w2, b2 = (keras.ops.convert_to_numpy(w) for w in (gate.w1, gate.b1, gate.w2, gate.b2))
    return gate.gamma * _sigmoid(np.maximum(x @ w1 + b1, 0.0) @ w2 + b2)


def _randomise(layer, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    for w in layer.trainable_weights:
        w.assign(rng.normal(0, scale, w.shape).astype("float32"))


def test_gatenu_matches_numpy_and_range():
    gate = GateNU(5)
    x = np.random.default_rng(1).normal(0, 1, [64, 7]).astype("float32")
    gate.build(x.shape)
    assert gate.w1.shape == (7, 5) and gate.w2.shape == (5, 5)  # hidden width defaults to the output width
    _randomise(gate, scale=0.8)
    out = keras.ops.convert_to_numpy(gate(x))
    np.testing.assert_allclose(out, _gatenu_np(gate, x), rtol=1e-5, atol=1e-6)
    # γ = 2: the gate amplifies (> 1) as well as suppresses (< 1); with γ = 1 it could not.
    assert out.min() < 0.5 and out.max() > 1.5
    assert_config_json(gate)
    # called on a list of parts, the gate equals the gate of their concatenation
    parts = GateNU(5, name="parts")
    parts.build([(None, 3), (None, 4)])
    for a, b in zip(parts.weights, gate.weights):
        a.assign(b)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(parts([x[:, :3], x[:, 3:]])), out, rtol=1e-5, atol=1e-6)
    assert GateNU(5, hidden_units=3, gamma=1.0).get_config()["hidden_units"] == 3


@pytest.mark.parametrize("granularity", ["dimension", "field"])
def test_epnet_numerics_and_stop_gradient(granularity):
    F, d, nd, ds, B = 3, 2, 1, 4, 5
    ep = EPNet(F, d, num_dense=nd, granularity=granularity)
    rng = np.random.default_rng(0)
    e = rng.normal(0, 1, [B, F * d + nd]).astype("float32")
    side = rng.normal(0, 1, [B, ds]).astype("float32")
    ep.build([e.shape, side.shape])
    _randomise(ep.gate, seed=2)
    delta = _gatenu_np(ep.gate, np.concatenate([side, e], axis=1))
    if granularity == "field":
        assert delta.shape == (B, F + nd)
        delta = np.concatenate([np.repeat(delta[:, :F], d, axis=1), delta[:, F:]], axis=1)
    else:
        assert delta.shape == (B, F * d + nd)
    et, st = tf.constant(e), tf.constant(side)
    c = tf.constant(rng.normal(0, 1, e.shape).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([et, st])
        out = ep([et, st])
        loss = tf.reduce_sum(out * c)
    np.testing.assert_allclose(out.numpy(), delta * e, rtol=1e-5, atol=1e-6)
    # d loss / d e is δ ⊙ c exactly: no gradient reaches e through the gate input.
    np.testing.assert_allclose(tape.gradient(loss, et).numpy(), delta * c.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(tape.gradient(loss, st).numpy()).sum() > 0  # the domain side is trained through the gate
    assert_config_json(ep)


def test_ppnet_hook_numerics_and_stop_gradient():
    dims = {"ids": 4, "all": 6}
    hook = PPNetGate(num_domains=3, context_dims=dims, hidden_units=None)
    rng = np.random.default_rng(0)
    h = tf.constant(np.abs(rng.normal(0, 1, [5, 3])).astype("float32"))
    ids = tf.constant(rng.normal(0, 1, [5, 4]).astype("float32"))
    emb = tf.constant(rng.normal(0, 1, [5, 6]).astype("float32"))
    hook.build(h.shape)
    assert hook.gate.w1.shape == (10, 3)
    _randomise(hook.gate, seed=3)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([h, ids, emb])
        out = hook(h, {"ids": ids, "all": emb})
        loss = tf.reduce_sum(out)
    delta = _gatenu_np(hook.gate, np.concatenate([ids.numpy(), emb.numpy()], axis=1))
    np.testing.assert_allclose(out.numpy(), delta * h.numpy(), rtol=1e-5, atol=1e-6)
    grad_emb = tape.gradient(loss, emb, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    np.testing.assert_array_equal(grad_emb.numpy(), 0.0)  # stop-gradient input
    assert np.abs(tape.gradient(loss, ids).numpy()).sum() > 0  # the id prior is trained through the gate
    np.testing.assert_allclose(tape.gradient(loss, h).numpy(), delta, rtol=1e-5)
    # ids only (context_key=None): a gate on the ids alone.
    hook2 = PPNetGate(context_dims=dims, context_key=None)
    hook2.build(h.shape)
    assert hook2.gate.w1.shape == (4, 3)
    assert_config_json(hook)


def _pruner(form, units=6, ds=3, **kw):
    p = AdaSparsePruner(num_domains=2, context_dims={"domain_side": ds}, form=form, **kw)
    p.build((None, units))
    return p


def _pruner_np(p, h, side, alpha=None):
    v = np.concatenate([side, h], axis=1) @ keras.ops.convert_to_numpy(p.kernel)
    a = float(keras.ops.convert_to_numpy(p.alpha)) if alpha is None else alpha
    if p.form == "scaling":
        return p.beta * _sigmoid(v), v
    if p.form == "binarization":  # the inference form
        return (v > 0).astype("float32"), v
    pi = p.beta * _sigmoid(a * v)
    return pi * (pi >= p.epsilon), v


def test_adasparse_fusion_zeroes_pruned_units():
    p = _pruner("fusion", alpha_init=3.0)
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.5, [9, 6]).astype("float32")
    kernel[:3, :2] = -5.0  # units 0 and 1 get a large negative logit from the domain side → pruned
    p.kernel.assign(kernel)
    h = np.abs(rng.normal(0, 1, [8, 6])).astype("float32")  # post-ReLU activations
    side = np.abs(rng.normal(1, 0.1, [8, 3])).astype("float32")
    out = keras.ops.convert_to_numpy(p(h, {"domain_side": side}))
    pi, _ = _pruner_np(p, h, side)
    np.testing.assert_allclose(out, pi * h, rtol=1e-5, atol=1e-7)
    assert np.all(out[:, :2] == 0.0)  # exactly zero, not sign-flipped
    assert np.all(out >= 0.0)
    assert np.all(out[:, 2:][pi[:, 2:] > 0] > 0)


def test_adasparse_binarization_sharpens_with_alpha_and_scaling():
    rng = np.random.default_rng(1)
    h = np.abs(rng.normal(0, 1, [8, 6])).astype("float32")
    side = rng.normal(0, 1, [8, 3]).astype("float32")
    ctx = {"domain_side": side}
    pb = _pruner("binarization", delta_alpha=0.0)
    _randomise(pb, seed=4)
    _, v = _pruner_np(pb, h, side)
    step = (v > 0).astype("float32")
    assert 0 < step.mean() < 1
    # inference: the step 1[v > 0], whatever α
    for a in (1.0, 7.0):
        pb.alpha.assign(a)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(pb(h, ctx, training=False)), step * h)
    # training: σ(α v) — α changes the forward pass, and it tends to the step as α grows
    outs = {}
    for a in (1.0, 4.0, 1e4):
        pb.alpha.assign(a)
        outs[a] = keras.ops.convert_to_numpy(pb(h, ctx, training=True))
        np.testing.assert_allclose(outs[a], _sigmoid(a * v) * h, rtol=1e-5, atol=1e-6)
    assert np.abs(outs[1.0] - outs[4.0]).max() > 0.05
    assert np.abs(outs[1.0] - step * h).max() > np.abs(outs[4.0] - step * h).max() > np.abs(outs[1e4] - step * h).max()
    np.testing.assert_allclose(outs[1e4], step * h, atol=1e-3)
    # straight-through option: the step in the training forward too, gradient of σ(α v)
    pst = _pruner("binarization", delta_alpha=0.0, straight_through=True)
    pst.kernel.assign(pb.kernel)
    ht = tf.constant(h)
    with tf.GradientTape() as tape:
        out = pst(ht, ctx, training=True)
        loss = tf.reduce_sum(out)
    np.testing.assert_allclose(out.numpy(), step * h, rtol=1e-6)
    assert np.abs(tape.gradient(loss, pst.kernel.value).numpy()).sum() > 0  # sign() would give 0
    ps = _pruner("scaling")
    _randomise(ps, seed=5)
    pi, _ = _pruner_np(ps, h, side)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ps(h, ctx)), pi * h, rtol=1e-5)
    with pytest.raises(ValueError, match="form must be one of"):
        _pruner("sign")


def test_adasparse_sparsity_regulariser_only_in_training():
    p = _pruner("fusion", sparsity_target=0.3, sparsity_weight=0.5, delta_alpha=0.0, alpha_init=2.0)
    _randomise(p, seed=6)
    rng = np.random.default_rng(2)
    h = np.abs(rng.normal(0, 1, [8, 6])).astype("float32")
    side = rng.normal(0, 1, [8, 3]).astype("float32")
    p(h, {"domain_side": side}, training=False)
    assert len(p.losses) == 0
    p(h, {"domain_side": side}, training=True)
    _, v = _pruner_np(p, h, side)
    t = np.log(p.epsilon / (p.beta - p.epsilon))
    r = _sigmoid(t - 2.0 * v).mean()
    assert len(p.losses) == 1
    np.testing.assert_allclose(float(p.losses[0]), 0.5 * (r - 0.3) ** 2, rtol=1e-4)
    assert_config_json(p)


def test_adasparse_alpha_advances_only_in_training_and_is_saved(synth_schema, tmp_path):
    from mdr_tf.training import TrainConfig, compile_model

    m = build_adasparse(synth_schema.to_config(), hidden_units=[8, 4], delta_alpha=0.01)
    m.build()
    pruners = [lyr for lyr in m._flatten_layers() if isinstance(lyr, AdaSparsePruner)]
    assert len(pruners) == 3  # input + 2 hidden layers
    assert all(not p.alpha.trainable for p in pruners)
    x = random_inputs(synth_schema, 64)
    y = np.random.default_rng(0).integers(0, 2, [64, 1]).astype("float32")
    alpha0 = [float(p.alpha.numpy()) for p in pruners]
    compile_model(m, TrainConfig(steps_per_execution=2))
    m.predict(x, batch_size=16, verbose=0)
    m.evaluate(x, y, batch_size=16, verbose=0)
    m(x, training=False)
    assert [float(p.alpha.numpy()) for p in pruners] == alpha0
    m.fit(x, y, batch_size=16, epochs=1, verbose=0)  # 4 training steps
    alpha1 = [float(p.alpha.numpy()) for p in pruners]
    np.testing.assert_allclose(alpha1, np.array(alpha0) + 4 * 0.01, rtol=1e-6)
    path = str(tmp_path / "m.keras")
    m.save(path)
    loaded = keras.models.load_model(path)
    lp = [lyr for lyr in loaded._flatten_layers() if isinstance(lyr, AdaSparsePruner)]
    np.testing.assert_allclose([float(p.alpha.numpy()) for p in lp], alpha1, rtol=0)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-6)
