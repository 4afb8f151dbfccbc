"""Issue 18.1: the faster MI-DPG / DPG, AdaSparse and APG computations give today's outputs.

The reference methods below are the implementations as they were before the speed work
(commit fa28473), kept verbatim. Each test runs one model twice on the same weights, random
state and inputs: once with the package's methods, once with the reference methods
patched onto the classes. Forward outputs, the added losses (MIR) and the gradients of
``sum(c · ŷ) + Σ losses`` w.r.t. every trainable weight must agree to ~1e-5.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from mdr_tf.layers.mechanisms.apg import APGDense
from mdr_tf.layers.mechanisms.dwm import DWMDense
from mdr_tf.layers.mechanisms.gates import AdaSparsePruner
from mdr_tf.models.adasparse import build_adasparse
from mdr_tf.models.backbones import BackboneModel
from mdr_tf.models.midpg import build_midpg
from tests.helpers import random_inputs


# --------------------------------------------------------------- reference: DWMDense (fa28473)
def _ref_dwm_generate(self, x, ctx):
    z = self._condition(ctx)
    h = ops.concatenate([z, ops.cast(x, self.compute_dtype)], axis=-1)
    if self.stop_gradient_inputs:
        h = ops.stop_gradient(h)
    for layer in self.aux_layers:
        h = layer(h)
    g = self.aux_out(h)
    a, b, k = self.a, self.b, self.k
    out = {"z": z}
    if self.variant == "non":
        out["S"] = self.scale * ops.sigmoid(ops.reshape(g, [-1, self.input_dim, self.units]))
        return out
    if self.variant == "rc":
        p = ops.reshape(g[:, : a * k], [-1, a, k])
        q = ops.reshape(g[:, a * k:], [-1, k, b])
        pq = ops.matmul(p, q)
    elif self.variant == "r":
        p = ops.reshape(g, [-1, a, k])
        q = self.q_shared
        pq = ops.einsum("bik,kj->bij", p, ops.cast(q, p.dtype))
    else:
        q = ops.reshape(g, [-1, k, b])
        p = self.p_shared
        pq = ops.einsum("ik,bkj->bij", ops.cast(p, q.dtype), q)
    out.update({"P": p, "Q": q, "S": self.scale * ops.sigmoid(pq)})
    return out


def _ref_dwm_apply(self, x, s):
    w = ops.cast(self.kernel, self.compute_dtype)
    n, m = self.input_dim, self.units
    if self.variant == "non" or self.compute == "materialize":
        return ops.einsum("bn,bnm->bm", x, w[None] * self._tile(s))
    a, b, tr, tc = self.a, self.b, self.rows_rep, self.cols_rep
    n_pad, m_pad = a * tr, b * tc
    if n_pad != n:
        x = ops.pad(x, [[0, 0], [0, n_pad - n]])
        w = ops.pad(w, [[0, n_pad - n], [0, 0]])
    if m_pad != m:
        w = ops.pad(w, [[0, 0], [0, m_pad - m]])
    if self.repeat == "block":
        xt = ops.transpose(ops.reshape(x, [-1, a, tr]), [1, 0, 2])
        wt = ops.reshape(w, [a, tr, m_pad])
    else:
        xt = ops.transpose(ops.reshape(x, [-1, tr, a]), [2, 0, 1])
        wt = ops.transpose(ops.reshape(w, [tr, a, m_pad]), [1, 0, 2])
    t = ops.matmul(xt, wt)
    s_t = ops.transpose(s, [1, 0, 2])
    st = ops.repeat(s_t, tc, axis=2) if self.repeat == "block" else ops.tile(s_t, [1, 1, tc])
    y = ops.sum(t * st, axis=0)
    return y[:, :m] if m_pad != m else y


def _ref_dwm_discriminator(self, z, s):
    mvec = ops.reshape(s, [-1, self.a * self.b]) if self.variant != "non" else \
        self.mir_proj(ops.reshape(s, [-1, self.input_dim * self.units]))
    h = ops.concatenate([z, mvec], axis=-1)
    for layer in self.mir_layers:
        h = layer(h)
    return h


def _ref_dwm_mir_from_pairs(self, z, z_neg, s):
    pos, neg = _ref_dwm_discriminator(self, z, s), _ref_dwm_discriminator(self, z_neg, s)
    return ops.mean(-ops.softplus(-pos)) - ops.mean(ops.softplus(neg))


def _ref_dwm_mir(self, z, s, training=None):
    perm = keras.random.shuffle(ops.arange(ops.shape(z)[0]), seed=self.seed_generator)
    return _ref_dwm_mir_from_pairs(self, z, ops.take(z, perm, axis=0), s)


def _ref_dwm_call(self, x, ctx=None, training=None):
    x = ops.cast(x, self.compute_dtype)
    gen = _ref_dwm_generate(self, x, ctx)
    y = _ref_dwm_apply(self, x, gen["S"])
    if self.bias is not None:
        y = y + ops.cast(self.bias, y.dtype)
    if training and self.mir_weight > 0:
        mir = ops.cast(_ref_dwm_mir(self, gen["z"], gen["S"], training), "float32")
        self.add_loss(-self.mir_weight * mir)
        self.mir_estimate.assign(mir)
    return y


# --------------------------------------------------------- reference: AdaSparsePruner (fa28473)
def _ref_ada_logits(self, h, ctx):
    v = ops.matmul(ops.concatenate([ctx[self.domain_key], h], axis=-1), self.kernel)
    return v + self.bias if self.bias is not None else v


def _ref_ada_gate_values(self, h, ctx, training=None):
    v = _ref_ada_logits(self, h, ctx)
    alpha = ops.cast(self.alpha, v.dtype)
    if self.form == "scaling":
        return self.beta * ops.sigmoid(v)
    soft = ops.sigmoid(alpha * v)
    if self.form == "binarization":
        hard = ops.cast(v > 0, v.dtype)
        if training is not True:
            return hard
        if self.straight_through:
            return soft + ops.stop_gradient(hard - soft)
        return soft
    pi = self.beta * soft
    return pi * ops.cast(pi >= self.epsilon, v.dtype)


def _ref_ada_soft_zero_ratio(self, h, ctx):
    import math
    v = _ref_ada_logits(self, h, ctx)
    if self.form == "binarization":
        return ops.mean(ops.sigmoid(-ops.cast(self.alpha, v.dtype) * v))
    t = math.log(self.epsilon / (self.beta - self.epsilon)) if self.beta > self.epsilon else 0.0
    a = ops.cast(self.alpha, v.dtype) if self.form == "fusion" else 1.0
    return ops.mean(ops.sigmoid(t - a * v))


def _ref_ada_call(self, h, ctx=None, training=None):
    out = _ref_ada_gate_values(self, h, ctx, training=training) * h
    if training is True:
        if self.sparsity_weight > 0:
            r = _ref_ada_soft_zero_ratio(self, h, ctx)
            self.add_loss(self.sparsity_weight * ops.square(ops.cast(r, "float32") - self.sparsity_target))
        new = self.alpha + self.delta_alpha
        if self.alpha_max is not None:
            new = ops.minimum(new, self.alpha_max)
        self.alpha.assign(new)
    return out


# ------------------------------------------------------------------ reference: APGDense (fa28473)
def _ref_apg_condition_input(self, x, ctx):
    parts = []
    if self.condition in ("group", "mix"):
        z = ctx[self.condition_key]
        parts.append(ops.stop_gradient(z) if self.stop_gradient_condition else z)
    if self.condition in ("self", "mix"):
        parts.append(x)
    return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]


def _ref_apg_core(self, x, ctx=None):
    g = ops.cast(_ref_apg_condition_input(self, x, ctx), x.dtype)
    last = len(self.gen_kernels) - 1
    for i, (w, b) in enumerate(zip(self.gen_kernels, self.gen_biases)):
        g = ops.matmul(g, w) + b
        if i < last:
            g = ops.relu(g)
    k = self.k
    s = ops.reshape(g[:, : k * k], [-1, k, k])
    if self.identity_core:
        s = s + ops.eye(k, dtype=s.dtype)
    gen_bias = g[:, k * k:] if self.generate_bias else None
    return s, gen_bias


def _ref_apg_call(self, x, ctx=None, training=None):
    s, gen_bias = _ref_apg_core(self, x, ctx)
    if self.overparam_dim:
        xu = ops.matmul(ops.matmul(x, self.u_left), self.u_right)
    else:
        xu = ops.matmul(x, self.u)
    t = ops.einsum("bk,bkl->bl", xu, s)
    y = ops.matmul(ops.matmul(t, self.v_left), self.v_right) if self.overparam_dim else ops.matmul(t, self.v)
    if self.bias is not None:
        y = y + self.bias
    if gen_bias is not None:
        y = y + gen_bias
    return y


REFERENCE = {DWMDense: {"call": _ref_dwm_call}, AdaSparsePruner: {"call": _ref_ada_call},
             APGDense: {"call": _ref_apg_call}}


# ----------------------------------------------------------------------------- harness
def _run(model, x, training):
    """Prediction, added losses and gradients of ``sum(c·ŷ) + Σ losses``, then restores every variable."""
    saved = [np.array(v.numpy()) for v in model.variables]
    weights = model.trainable_variables
    with tf.GradientTape() as tape:
        pred = model(x, training=training)
        losses = [ops.convert_to_numpy(v) for v in model.losses]
        c = tf.constant(np.linspace(-1.0, 2.0, int(pred.shape[0])).reshape(pred.shape), pred.dtype)
        total = tf.reduce_sum(c * pred) + (tf.add_n(model.losses) if model.losses else 0.0)
    grads = tape.gradient(total, weights)
    out = (np.asarray(pred), losses, [None if g is None else np.asarray(tf.convert_to_tensor(g)) for g in grads])
    for v, s in zip(model.variables, saved):
        v.assign(s)
    return out


def _compare(model, cls, x, monkeypatch, training=True, atol=1e-5):
    new = _run(model, x, training)
    with monkeypatch.context() as mp:
        for name, fn in REFERENCE[cls].items():
            mp.setattr(cls, name, fn)
        ref = _run(model, x, training)
    np.testing.assert_allclose(new[0], ref[0], rtol=1e-5, atol=atol)
    assert len(new[1]) == len(ref[1])
    for a, b in zip(new[1], ref[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)
    for w, a, b in zip(model.trainable_variables, new[2], ref[2]):
        assert (a is None) == (b is None), w.path
        if a is not None:
            # Sums in another order: compare on the scale of the gradient (float32 rounding of
            # its largest terms), not element by element on entries that nearly cancel.
            scale = max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=3 * atol * scale, err_msg=f"{w.path} (scale {scale:.3g})")
    return new


def _perturb(model, seed=0, std=0.3):
    """Non-trivial weights: every bias / factor / discriminator weight matters."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        if "embedding" in v.path:
            v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
        else:
            v.assign(np.asarray(v) + rng.normal(0, std, v.shape).astype("float32"))


MIDPG_CASES = [
    dict(),  # registry defaults: R, a = b = 8, k = 4, tile, λ1 0.1 mean, plain head, uneven pad
    dict(mir_weight=0.0),  # DPG
    dict(variant="rc", output_dwm=True),
    dict(variant="c", repeat="block"),
    dict(variant="r", repeat="block", mir_reduction="sum", a=4, b=2, k=3),
    dict(variant="non", block_extra={"mir_proj_dim": 4}),
    dict(variant="r", block_extra={"compute": "materialize"}),
]


@pytest.mark.parametrize("case", MIDPG_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_midpg_matches_reference(synth_schema, monkeypatch, case):
    keras.utils.set_random_seed(0)
    kw = {"hidden_units": [16, 8]} if case.get("variant") == "non" else {"hidden_units": [24, 16, 8]}
    # "shuffle": the negatives drawn exactly as before; "roll" (an option) is
    # compared in expectation below.
    model = build_midpg(synth_schema.to_config(), mir_negatives="shuffle", **{**kw, **case})
    model.build()
    _perturb(model)
    x = random_inputs(synth_schema, 32, seed=3)
    new = _compare(model, DWMDense, x, monkeypatch, training=True)
    if case.get("mir_weight", 0.1) > 0:
        assert len(new[1]) > 0 and abs(float(sum(new[1]))) > 1e-3  # the MIR term was compared
    _compare(model, DWMDense, x, monkeypatch, training=False)


def test_mir_from_pairs_matches_reference():
    """The fused discriminator call against the two-pass one, given negatives."""
    keras.utils.set_random_seed(1)
    lay = DWMDense(12, context_dims={"domain_side": 5}, a=4, b=3, k=2, mir_weight=1.0, mir_units=[7, 6])
    lay.build((None, 8))
    rng = np.random.default_rng(2)
    for v in lay.trainable_variables:
        v.assign(rng.normal(0, 1.0, v.shape).astype("float32"))
    z = rng.normal(size=(9, 5)).astype("float32")
    s = rng.random((9, 4, 3)).astype("float32")
    perm = rng.permutation(9)
    np.testing.assert_allclose(float(lay.mir_from_pairs(z, z[perm], s)),
                               float(_ref_dwm_mir_from_pairs(lay, z, z[perm], s)), rtol=1e-5, atol=1e-6)


def test_roll_negatives_have_the_shuffle_expectation():
    """"roll" and "shuffle" pair each sample with a partner uniform over the batch: averaged over
    all B shifts, resp. all B! permutations, the estimate is the same number (the mean over all
    (i, j) pairs of the negative term); a training call with "roll" is one of the B shifts."""
    import itertools

    keras.utils.set_random_seed(4)
    lay = DWMDense(6, context_dims={"domain_side": 3}, a=2, b=3, k=2, mir_weight=1.0, mir_units=[5],
                   mir_negatives="roll")
    lay.build((None, 4))
    rng = np.random.default_rng(5)
    for v in lay.trainable_variables:
        v.assign(rng.normal(0, 1.5, v.shape).astype("float32"))
    batch = 5
    x = rng.normal(size=(batch, 4)).astype("float32")
    z = rng.normal(size=(batch, 3)).astype("float32")
    s = lay.weighting_matrix(x, {"domain_side": z})
    rolls = [float(lay.mir_from_pairs(z, np.roll(z, -r, axis=0), s)) for r in range(batch)]
    perms = [float(lay.mir_from_pairs(z, z[list(p)], s)) for p in itertools.permutations(range(batch))]
    np.testing.assert_allclose(np.mean(rolls), np.mean(perms), rtol=1e-5, atol=1e-6)
    assert np.std(perms) > 1e-2  # the negatives matter: the identity would not pass as a check
    lay(x, {"domain_side": z}, training=True)
    got = float(np.asarray(lay.mir_estimate))
    assert min(abs(got - r) for r in rolls) < 1e-5, (got, rolls)
    with pytest.raises(ValueError, match="mir_negatives"):
        DWMDense(4, context_dims={"domain_side": 3}, mir_negatives="sorted")


ADASPARSE_CASES = [dict(), dict(form="binarization"), dict(form="binarization", straight_through=True),
                   dict(form="scaling", sparsity_weight=0.5, sparsity_target=0.3),
                   dict(sparsity_weight=0.5, sparsity_target=0.2, epsilon=0.5)]


@pytest.mark.parametrize("case", ADASPARSE_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_adasparse_matches_reference(synth_schema, monkeypatch, case):
    keras.utils.set_random_seed(0)
    model = build_adasparse(synth_schema.to_config(), hidden_units=[24, 16, 8], **case)
    model.build()
    _perturb(model)
    x = random_inputs(synth_schema, 32, seed=3)
    new = _compare(model, AdaSparsePruner, x, monkeypatch, training=True)
    if case.get("sparsity_weight"):
        assert len(new[1]) == 4
    _compare(model, AdaSparsePruner, x, monkeypatch, training=False)


APG_CASES = [dict(condition="group"), dict(condition="self"), dict(condition="mix", generator_units=[6]),
             dict(condition="group", overparam_dim=12, generate_bias=True),
             dict(condition="group", stop_gradient_condition=True, identity_core=False)]


@pytest.mark.parametrize("case", APG_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_apg_matches_reference(synth_schema, monkeypatch, case):
    keras.utils.set_random_seed(0)
    model = BackboneModel(synth_schema.to_config(), backbone="mlp", hidden_units=[24, 16, 8], block="apg",
                          block_config=case)
    model.build()
    _perturb(model)
    x = random_inputs(synth_schema, 32, seed=3)
    _compare(model, APGDense, x, monkeypatch, training=True)


def test_sublayers_take_the_dtype_policy():
    """Issue 12.8: sublayers built in ``build()`` get the parent's dtype policy (mixed precision)."""
    from mdr_tf.layers.mechanisms.gates import EPNet, PPNetGate

    lay = DWMDense(8, context_dims={"domain_side": 3}, a=2, b=2, k=2, mir_weight=1.0, mir_negatives="roll",
                   dtype="mixed_bfloat16")
    lay.build((None, 6))
    subs = lay.aux_layers + [lay.aux_out] + lay.mir_layers
    assert subs and all(s.dtype_policy.name == "mixed_bfloat16" for s in subs)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6)).astype("float32")
    y = lay(x, {"domain_side": rng.normal(size=(4, 3)).astype("float32")}, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16" and np.isfinite(float(np.asarray(lay.mir_estimate)))
    ep = EPNet(2, 3, dtype="mixed_bfloat16")
    ep.build([(None, 6), (None, 3)])
    pp = PPNetGate(context_dims={"ids": 4, "all": 6}, dtype="mixed_bfloat16")
    pp.build((None, 5))
    assert ep.gate.dtype_policy.name == pp.gate.dtype_policy.name == "mixed_bfloat16"
