"""STAR: star-topology dense block and partitioned normalisation against NumPy; the STAR model."""

import numpy as np
import pytest

from mdr_tf.layers.blocks import block_class
from mdr_tf.layers.mechanisms.star import PartitionedNorm, StarDense
from mdr_tf.models.backbones import BackboneModel
from mdr_tf.models.star import STAR
from mdr_tf.params import is_per_domain, parameter_report
from tests.helpers import assert_config_json, assert_roundtrips, random_inputs

DOMAIN = np.array([0, 1, 2, 0, 1, 2], np.int32)


@pytest.mark.parametrize("routing", ["bucket", "stacked", "masked", "gather", "partition"])
def test_star_dense_effective_weight_per_domain(routing):
    rng = np.random.default_rng(0)
    layer = StarDense(3, num_domains=3, routing=routing)
    layer.build((None, 4))
    w, wd = rng.normal(size=(4, 3)), rng.normal(size=(3, 4, 3))
    b, bd = rng.normal(size=3), rng.normal(size=(3, 3))
    layer.set_weights([w, b, wd, bd])
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = np.asarray(layer(x, {"domain": DOMAIN}))
    for d in range(3):
        np.testing.assert_allclose(np.asarray(layer.effective_kernels())[d], w * wd[d], rtol=1e-6, atol=1e-6)
    want = np.stack([x[i] @ (w * wd[DOMAIN[i]]) + b + bd[DOMAIN[i]] for i in range(6)])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert is_per_domain(layer.kernel_d) and is_per_domain(layer.bias_d) and not is_per_domain(layer.kernel)
    assert block_class("star") is StarDense
    assert_config_json(layer)


@pytest.mark.parametrize("domain", [
    [0] * 70,  # one domain only
    [2, 2, 0] * 23 + [2],  # domain 1 absent, 70 rows (not a multiple of the tile)
    [1],  # a single sample
    list(np.random.default_rng(3).integers(0, 10, 300)),  # D = 10
])
def test_bucket_routing_equals_compute_all(domain):
    from mdr_tf.layers.routing import domain_dense

    rng = np.random.default_rng(0)
    dom = np.asarray(domain, np.int32)
    d = 10 if dom.max() > 2 else 3
    x = rng.normal(size=(len(dom), 5)).astype(np.float32)
    k, b = rng.normal(size=(d, 5, 4)).astype(np.float32), rng.normal(size=(d, 4)).astype(np.float32)
    want = np.einsum("bn,bnu->bu", x, k[dom]) + b[dom]
    for routing in ("bucket", "stacked", "masked", "gather", "partition"):
        np.testing.assert_allclose(np.asarray(domain_dense(x, k, b, dom, routing)), want, rtol=1e-5, atol=1e-5)


def _pn(dim=3, momentum=0.9, seed=0):
    rng = np.random.default_rng(seed)
    pn = PartitionedNorm(3, momentum=momentum, epsilon=1e-3)
    pn.build((None, dim))
    g, bt = rng.uniform(0.5, 1.5, dim), rng.normal(size=dim)
    gd, bd = rng.uniform(0.5, 1.5, (3, dim)), rng.normal(size=(3, dim))
    mm, mv = rng.normal(size=(3, dim)), rng.uniform(0.5, 2.0, (3, dim))
    pn.set_weights([g, bt, gd, bd, mm, mv])
    return pn, (g, bt, gd, bd, mm, mv)


def test_pn_inference_uses_domain_moving_statistics():
    pn, (g, bt, gd, bd, mm, mv) = _pn()
    z = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    out = np.asarray(pn(z, DOMAIN, training=False))
    d = DOMAIN
    want = (g * gd[d]) * (z - mm[d]) / np.sqrt(mv[d] + 1e-3) + (bt + bd[d])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # inference leaves the moving statistics alone
    np.testing.assert_allclose(np.asarray(pn.moving_mean), mm, rtol=1e-6)


def test_pn_training_uses_per_domain_batch_moments_and_updates_present_domains_only():
    pn, (g, bt, gd, bd, mm, mv) = _pn(momentum=0.9)
    z = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32) * 3 + 1
    dom = np.array([0, 2, 0, 0, 2], np.int32)  # domain 1 absent
    out = np.asarray(pn(z, dom, training=True))
    want = np.zeros_like(z)
    new_mm, new_mv = mm.copy(), mv.copy()
    for d in (0, 2):
        rows = dom == d
        mu, var = z[rows].mean(0), z[rows].var(0)  # biased variance
        want[rows] = (g * gd[d]) * (z[rows] - mu) / np.sqrt(var + 1e-3) + (bt + bd[d])
        new_mm[d] = 0.9 * mm[d] + 0.1 * mu
        new_mv[d] = 0.9 * mv[d] + 0.1 * var
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(pn.moving_mean), new_mm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pn.moving_variance), new_mv, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pn.moving_mean)[1], mm[1].astype(np.float32))  # absent: untouched
    np.testing.assert_array_equal(np.asarray(pn.moving_variance)[1], mv[1].astype(np.float32))
    assert_config_json(pn)


def test_star_model_logit_is_main_plus_aux_and_not_relud(synth_schema):
    m = STAR(synth_schema.to_config(), hidden_units=[8, 4], aux_units=[4])
    m.build()
    x = random_inputs(synth_schema, 12)
    ctx = m.embedding(x)
    e = m.pn(ctx["all"], ctx["domain"], training=False)
    s_m = np.asarray(m.main_out(m.fcn(e, ctx), ctx))
    s_a = np.asarray(m.aux_out(m.aux(ctx["domain_side"])))
    np.testing.assert_allclose(np.asarray(m.compute_logit(x, ctx, training=False)), s_m + s_a, rtol=1e-5, atol=1e-6)
    assert m.aux.blocks[0].kernel.shape[0] == m.context_dims["domain_side"]  # aux net reads e_s
    # A strongly negative main logit must reach the output (the benchmark ReLUs it to >= 0).
    m.main_out.bias_d.assign(np.full((3, 1), -10.0, np.float32))
    assert np.all(m.predict(x, verbose=0) < 0.01)


def test_star_model_roundtrip_and_pn_off(synth_schema, tmp_path):
    from mdr_tf.training import TrainConfig, compile_model

    m = STAR(synth_schema.to_config(), hidden_units=[8, 4], aux_units=[4])
    m.build()
    rep, n = parameter_report(m), m.context_dims["all"]
    # per domain: PN γ_d, β_d (2n) + W_d, b_d of the three star layers n→8→4→1
    assert rep["per_domain"] == 3 * (2 * n + (n * 8 + 8) + (8 * 4 + 4) + (4 + 1))
    # fit (several steps per execution) updates every present domain's PN stats
    x = random_inputs(synth_schema, 32)
    before = np.asarray(m.pn.moving_mean).copy()
    compile_model(m, TrainConfig(steps_per_execution=2, jit_compile=False))
    m.fit(x, np.ones((32, 1), np.float32), batch_size=8, epochs=1, verbose=0)
    assert np.all(np.abs(np.asarray(m.pn.moving_mean) - before).max(axis=1) > 0)
    assert_config_json(m)
    assert_roundtrips(m, str(tmp_path), random_inputs(synth_schema))
    m2 = STAR(synth_schema.to_config(), hidden_units=[8], partitioned_norm=False)
    m2.build()
    assert m2.pn is None and not any("pn" in w.path for w in m2.weights)


def test_star_block_plugs_into_backbones(synth_schema, tmp_path):
    m = BackboneModel(synth_schema.to_config(), backbone="dcn", hidden_units=[8, 4], block="star",
                      block_config={"routing": "masked"})
    m.build()
    assert isinstance(m.deep.blocks[0], StarDense)
    assert_roundtrips(m, str(tmp_path), random_inputs(synth_schema))


def test_star_learns_ml100k(ml100k_schema):
    from mdr_tf.training import TrainConfig, run_trial

    row = run_trial("star", ml100k_schema, TrainConfig(epochs=1, seed=0))
    # observed: test AUC 0.774 (1 epoch, seed 0; DNN 0.770)
    assert row["test_auc"] > 0.75, row
