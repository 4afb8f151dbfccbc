"""HierRec: explicit weights per scenario, implicit per instance, field softmax, SOM numerics, round trips."""

import keras
import numpy as np
import pytest

from mdr_tf.layers.mechanisms.som import ScenarioOrientedModule
from mdr_tf.models.hierrec import HierRec
from tests.helpers import assert_config_json, assert_roundtrips, random_inputs

SMALL = dict(global_units=8, condition_dim=6, som_units=[4, 8], num_heads=3)


def _model(schema, **kw):
    keras.utils.set_random_seed(0)
    m = HierRec(schema.to_config(), **{**SMALL, **kw})
    m.build()
    # Embeddings start at N(0, 1e-4); make them O(1) so that differences are visible.
    m.embedding.table.assign(np.random.default_rng(0).normal(size=m.embedding.table.shape).astype("float32"))
    return m


def _two_samples_same_domain(schema):
    x = random_inputs(schema, 4, seed=1)
    x[schema.domain_key][:] = [1, 1, 0, 2]
    for f in schema.categorical:  # sample 0 and 1: every feature differs
        x[f.name][1] = (x[f.name][0] + 1) % f.vocab_size
    for f in schema.dense:
        x[f.name][1] = x[f.name][0] + 0.5
    return x


def test_explicit_weights_per_scenario_implicit_per_instance(synth_schema):
    m = _model(synth_schema)
    x = _two_samples_same_domain(synth_schema)
    for w, b in m.explicit_weights(x):
        w, b = np.asarray(w), np.asarray(b)
        np.testing.assert_array_equal(w[0], w[1])  # same scenario, different features
        np.testing.assert_array_equal(b[0], b[1])
        assert not np.allclose(w[0], w[2]) and not np.allclose(w[0], w[3])  # other scenarios
    for w, b in m.implicit_weights(x):
        w = np.asarray(w)
        assert w.shape[:2] == (4, 3)
        assert not np.allclose(w[0], w[1])  # instance-level
        assert not np.allclose(w[0, 0], w[0, 1])  # heads have their own generators


def test_field_softmax_per_head(synth_schema):
    m = _model(synth_schema)
    w = np.asarray(m.field_weights(random_inputs(synth_schema, 5)))
    n_dense = len(synth_schema.dense)
    assert n_dense == 1 and m.num_fields == len(synth_schema.categorical)
    assert w.shape == (5, 3, m.num_fields + n_dense)  # embedding fields, then the dense feature
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("implicit_dense", [True, False])
def test_dense_features_in_the_implicit_path(synth_schema, implicit_dense):
    """IE_g = [w_{g,1} e_1; …; w_{g,F} e_F; w_{g,F+1} x_dense] (eq. 7 with the dense feature as
    a field), checked in NumPy; with implicit_dense=False the implicit weights ignore it."""
    m = _model(synth_schema, implicit_dense=implicit_dense)
    x = random_inputs(synth_schema, 4, seed=2)
    ctx = m.embedding(x)
    w = np.asarray(m.field_weights_from_ctx(ctx))
    fields, dense = np.asarray(ctx["fields"]), np.asarray(ctx["dense"])
    f = m.num_fields
    ie = (w[:, :, :f, None] * fields[:, None]).reshape(4, 3, -1)
    if implicit_dense:
        ie = np.concatenate([ie, w[:, :, f:] * dense[:, None]], axis=-1)
    want = ie @ np.asarray(m.sc_implicit.kernel) + np.asarray(m.sc_implicit.bias)
    np.testing.assert_allclose(np.asarray(m._implicit_condition(ctx)), want, rtol=1e-5, atol=1e-5)
    moved = dict(x)
    moved[synth_schema.dense[0].name] = x[synth_schema.dense[0].name] + 1.0  # a "context" feature: not in e_s
    w0, w1 = (np.asarray(m.implicit_weights(v)[0][0]) for v in (x, moved))
    assert (not np.allclose(w0, w1)) == implicit_dense


@pytest.mark.parametrize("static_weight,training", [(False, False), (True, False), (False, True)])
def test_som_matches_numpy(static_weight, training):
    # Per-scenario weights: generated row by row at inference, in one op in training.
    keras.utils.set_random_seed(0)
    som = ScenarioOrientedModule([3, 2], condition_dim=4, heads=2, static_weight=static_weight)
    som.build((None, 5))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype("float32")
    cond = rng.normal(size=(3, 2, 4)).astype("float32")  # per "scenario" (D = 3)
    index = np.array([0, 2, 1, 1, 0, 2])
    y = np.asarray(som(x, cond, index=index, training=training))
    h = np.repeat(x[:, None], 2, axis=1)
    fan_in = 5
    for i, out in enumerate([3, 2]):
        p = np.einsum("nhc,hcx->nhx", cond, np.asarray(som.gen_kernels[i])) + np.asarray(som.gen_biases[i])
        p = p[index]
        w = p[..., : fan_in * out].reshape(6, 2, fan_in, out)
        if static_weight:
            w = w + np.asarray(som.static_kernels[i])
        h = np.maximum(np.einsum("bhi,bhio->bho", h, w) + p[..., fan_in * out:], 0)
        fan_in = out
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-5)
    assert som.generated_parameters_per_sample() == 2 * (5 * 3 + 3 + 3 * 2 + 2)


def test_config_and_roundtrip(synth_schema, tmp_path):
    m = _model(synth_schema, static_weight=True)
    assert_config_json(m)
    assert_config_json(m.implicit_som)
    assert_roundtrips(m, str(tmp_path), random_inputs(synth_schema))


def test_hierrec_learns_ml100k(ml100k_schema):
    from mdr_tf.training import TrainConfig, run_trial

    # The registry "hierrec" widths (G 2, c 16, SOM 16→32) with h0 32; the class defaults
    # ("hierrec_large": G 4, c 64, SOM 32→64) cost ~40× the DNN's FLOPs per sample.
    small = dict(num_heads=2, condition_dim=16, som_units=[16, 32], global_units=32)
    row = run_trial("hierrec", ml100k_schema, TrainConfig(epochs=1, seed=0, jit_compile=False), model_kwargs=small)
    assert row["test_auc"] > 0.75, row  # observed 0.770 (seed 0, 1 epoch, reduced widths)
