"""M2M: no attention across the batch, meta units against NumPy, round trip, ML-100k."""

import numpy as np
import pytest

from mdr_tf.layers.experts import MetaAttention, MetaDense
from mdr_tf.models.m2m import M2M
from mdr_tf.params import parameter_report
from tests.helpers import assert_config_json, assert_roundtrips, random_inputs

SMALL = {"num_experts": 3, "expert_units": [8], "scenario_units": 4, "task_dim": 4, "attention_units": 4,
         "tower_layers": 1, "ff_units": 8, "output_units": [6]}


def _take(x, idx):
    return {k: v[idx] for k, v in x.items()}


def test_prediction_does_not_depend_on_other_samples_in_the_batch(synth_schema):
    m = M2M(synth_schema.to_config(), **SMALL)
    m.build()
    x = random_inputs(synth_schema, 16, seed=1)
    other = random_inputs(synth_schema, 16, seed=2)
    perm = np.random.default_rng(0).permutation(16)
    for training in (False, True):
        ref = np.asarray(m(x, training=training))
        # the same samples in another order
        np.testing.assert_allclose(np.asarray(m(_take(x, perm), training=training)), ref[perm], rtol=1e-5, atol=1e-6)
        # sample 0 next to entirely different samples, and alone
        mixed = {k: np.concatenate([x[k][:1], other[k][1:]]) for k in x}
        np.testing.assert_allclose(np.asarray(m(mixed, training=training))[0], ref[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(m(_take(x, [0]), training=training))[0], ref[0], rtol=1e-5, atol=1e-6)


def test_meta_dense_generates_weights_from_condition():
    rng = np.random.default_rng(0)
    layer = MetaDense(3, condition_dim=2)
    layer.build((None, 4))
    gk, gb, k, b = (rng.normal(size=s) for s in [(2, 12), (2, 3), (4, 3), (3,)])
    layer.set_weights([gk, gb, k, b])
    x, s = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32)
    want = np.stack([x[i] @ ((s[i] @ gk).reshape(4, 3) + k) + s[i] @ gb + b for i in range(5)])
    np.testing.assert_allclose(np.asarray(layer(x, s)), want, rtol=1e-5, atol=1e-5)
    assert layer.generated_parameters_per_sample() == 4 * 3 + 3
    assert_config_json(layer)


def _leaky(z, a=0.1):
    return np.where(z > 0, z, a * z)


def _meta_dense_np(layer, x, s):
    gk, gb, k, b = (np.asarray(v) for v in layer.weights)
    w = (s @ gk).reshape(len(s), *k.shape) + k
    return np.einsum("bkn,bnu->bku", x, w) + (s @ gb + b)[:, None, :]


@pytest.mark.parametrize("learned_task, depth", [(True, 1), (False, 2)])
def test_meta_attention_against_numpy(learned_task, depth):
    rng = np.random.default_rng(0)
    att = MetaAttention(units=3, condition_dim=2, task_dim=2, leaky_alpha=0.1, learned_task=learned_task,
                        meta_layers=depth)
    att.build((None, 4, 5))  # 4 experts of width 5
    experts = rng.normal(size=(6, 4, 5)).astype(np.float32)
    s = rng.normal(size=(6, 2)).astype(np.float32)
    t = rng.normal(size=(6, 2)).astype(np.float32)  # per-sample task representation
    task = np.tile(np.asarray(att.task), (6, 1)) if learned_task else t
    assert (att.task is not None) == learned_task
    z = np.concatenate([experts, np.repeat(task[:, None, :], 4, axis=1)], axis=2)
    for unit in att.meta_units:
        z = _leaky(_meta_dense_np(unit, z, s))
    a = np.exp(z @ np.asarray(att.v)[:, 0])
    a /= a.sum(axis=1, keepdims=True)
    want = np.einsum("bk,bkh->bh", a, experts)
    np.testing.assert_allclose(np.asarray(att(experts, s, None if learned_task else t)), want, rtol=1e-5, atol=1e-5)
    assert_config_json(att)


def test_m2m_task_vector_from_scenario_embedding_and_output_mlp(synth_schema):
    """t = LeakyReLU(Dense_t(e_s)) (no learned constant), one meta tower layer, output MLP,
    head — the model's logit against NumPy from its parts."""
    m = M2M(synth_schema.to_config(), **SMALL)
    m.build()
    rng = np.random.default_rng(3)
    for v in m.trainable_weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    assert m.meta_attention.task is None and m.task_source == "scenario"
    x = random_inputs(synth_schema, 9)
    ctx = m.embedding(x)
    side = np.asarray(ctx["domain_side"])
    t = _leaky(side @ np.asarray(m.task.kernel) + np.asarray(m.task.bias))
    np.testing.assert_allclose(np.asarray(m.task_representation(ctx)), t, rtol=1e-5, atol=1e-6)
    assert np.abs(t[0] - t[1]).max() > 1e-3  # domains 0 and 1 get different task vectors
    s = _leaky(side @ np.asarray(m.scenario.kernel) + np.asarray(m.scenario.bias))
    fields = np.asarray(m.encoder(ctx["fields"]))
    flat = np.concatenate([fields.reshape(9, -1), np.asarray(ctx["dense"])], axis=1)
    experts = np.transpose(np.asarray(m.experts(flat)), (1, 0, 2))
    r = np.asarray(m.meta_attention(experts, s, t))
    r = _leaky(_meta_dense_np(m.meta_tower[0], r[:, None, :], s)[:, 0] + r)
    blk = m.output_mlp.blocks[0]
    r = np.maximum(r @ np.asarray(blk.kernel) + np.asarray(blk.bias), 0)
    logit = r @ np.asarray(m.head.kernel) + np.asarray(m.head.bias)
    np.testing.assert_allclose(m.predict(x, verbose=0), 1 / (1 + np.exp(-logit)), rtol=1e-4, atol=1e-5)
    old = m.get_config()  # saved before issue 13: learned task vector, no output MLP
    del old["task_source"], old["output_units"]
    old_m = M2M.from_config(old)
    assert old_m.task_source == "learned" and old_m.output_mlp is None
    with pytest.raises(ValueError, match="task_source"):
        M2M(synth_schema.to_config(), task_source="nope")


def test_m2m_roundtrip(synth_schema, tmp_path):
    m = M2M(synth_schema.to_config(), **SMALL)
    m.build()
    assert parameter_report(m)["generated_per_sample"] == (8 + 4) * 4 + 4 + 8 * 8 + 8
    assert_config_json(m)
    assert_roundtrips(m, str(tmp_path), random_inputs(synth_schema))


def test_m2m_learns_ml100k(ml100k_schema):
    from mdr_tf.training import TrainConfig, run_trial

    row = run_trial("m2m", ml100k_schema, TrainConfig(epochs=1, seed=0))
    # observed: test AUC 0.769 (1 epoch, seed 0; DNN 0.770)
    assert row["test_auc"] > 0.75, row


def _encoder_reference(enc, h, training=None):
    """FieldTransformer.call before issue 18 (Keras' MultiHeadAttention called as a layer)."""
    for mha, ln1, ff1, ff2, ln2 in zip(enc.attn, enc.ln1, enc.ff1, enc.ff2, enc.ln2):
        h = ln1(h + mha(h, h, training=training))
        h = ln2(h + ff2(ff1(h)))
    return h


def _outputs_and_gradients(m, x):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        p = m(x, training=True)
        loss = tf.reduce_sum(p * p)
    return np.asarray(m(x, training=False)), [np.asarray(tf.convert_to_tensor(g))
                                              for g in tape.gradient(loss, m.trainable_variables)]


@pytest.mark.parametrize("config", [{}, {**SMALL, "encoder_layers": 2, "num_heads": 4}])
def test_fast_encoder_equals_keras_mha_outputs_and_gradients(synth_schema, monkeypatch, config):
    """Issue 18: the within-sample attention (GEMMs + broadcast-reduce on the MHA layer's own
    weights) computes today's function: outputs and every gradient equal to ~1e-5 against the
    pre-issue-18 computation (Keras' MHA called as a layer), the default M2M included."""
    from mdr_tf.layers.mechanisms.m2m import FieldTransformer

    m = M2M(synth_schema.to_config(), **config)
    m.build()
    rng = np.random.default_rng(5)
    for v in m.encoder.trainable_weights:  # non-trivial attention (not the near-uniform init)
        v.assign(rng.normal(0, 0.4, v.shape).astype("float32"))
    x = random_inputs(synth_schema, 32, seed=4)
    h = m.embedding(x)["fields"]
    np.testing.assert_allclose(np.asarray(m.encoder(h)), np.asarray(_encoder_reference(m.encoder, h)),
                               rtol=1e-5, atol=1e-5)
    fast_out, fast_grads = _outputs_and_gradients(m, x)
    monkeypatch.setattr(FieldTransformer, "call", _encoder_reference)
    ref_out, ref_grads = _outputs_and_gradients(m, x)
    np.testing.assert_allclose(fast_out, ref_out, rtol=1e-5, atol=1e-6)
    assert len(fast_grads) == len(ref_grads) == len(m.trainable_variables)
    for v, g, r in zip(m.trainable_variables, fast_grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5, err_msg=v.path)
    # control: the attention matters (a uniform attention gives other outputs)
    monkeypatch.setattr(FieldTransformer, "call", lambda self, h, training=None: h)
    assert np.abs(np.asarray(m(x, training=False)) - ref_out).max() > 1e-3


def test_old_import_paths_still_resolve():
    """Issue 12: M2M's and PLE's layers moved to layers/mechanisms/; the old path re-exports them."""
    from mdr_tf.layers import experts
    from mdr_tf.layers.mechanisms import m2m, ple

    assert experts.MetaDense is m2m.MetaDense and experts.MetaAttention is m2m.MetaAttention
    assert experts.FieldTransformer is m2m.FieldTransformer and experts.CGCLevel is ple.CGCLevel
    import keras

    for cls in (m2m.MetaDense, m2m.MetaAttention, m2m.FieldTransformer, ple.CGCLevel):
        assert keras.saving.get_registered_name(cls) == f"mdr_tf>{cls.__name__}"
    with pytest.raises(AttributeError):
        experts.NoSuchLayer  # noqa: B018
