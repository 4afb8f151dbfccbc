"""M2M: no attention across the batch, meta units against NumPy, round trip, ML-100k."""

import numpy as np

from mdr_tf.layers.experts import MetaAttention, MetaDense
from mdr_tf.models.m2m import M2M
from mdr_tf.params import parameter_report
from tests.helpers import assert_config_json, assert_roundtrips, random_inputs

SMALL = {"num_experts": 3, "expert_units": [8], "scenario_units": 4, "task_dim": 4, "attention_units": 4,
         "tower_layers": 1, "ff_units": 8}


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


def test_meta_attention_softmax_over_each_samples_experts():
    rng = np.random.default_rng(0)
    att = MetaAttention(units=3, condition_dim=2, task_dim=2, leaky_alpha=0.1)
    att.build((None, 4, 5))  # 4 experts of width 5
    experts = rng.normal(size=(6, 4, 5)).astype(np.float32)
    s = rng.normal(size=(6, 2)).astype(np.float32)
    gk, gb, k, b = (np.asarray(v) for v in att.meta.weights)
    t, v = np.asarray(att.task), np.asarray(att.v)[:, 0]
    want = []
    for i in range(6):
        w = (s[i] @ gk).reshape(7, 3) + k
        z = np.concatenate([experts[i], np.tile(t, (4, 1))], axis=1) @ w + (s[i] @ gb + b)
        z = np.where(z > 0, z, 0.1 * z)
        a = np.exp(z @ v)
        a /= a.sum()
        want.append(a @ experts[i])
    alpha = np.asarray(att.weights_over_experts(experts, s))
    np.testing.assert_allclose(alpha.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(att(experts, s)), np.stack(want), rtol=1e-5, atol=1e-5)


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
