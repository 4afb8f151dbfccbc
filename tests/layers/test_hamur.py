"""HAMUR: instance-wise adapter weights, re-associated product, domain norm modes,
per-domain towers, the shared core, serialisation, real-data learning."""

import numpy as np
import pytest

from mdr_tf import registry
from mdr_tf.layers.blocks import hook_class
from mdr_tf.layers.mechanisms.hamur import DomainNorm, HyperAdapter, HyperNetwork, PerDomainDense
from mdr_tf.layers.mlp import DomainMLP
from mdr_tf.models.hamur import HamurMLP
from mdr_tf.params import parameter_report
from mdr_tf.training import TrainConfig, run_trial
from tests.helpers import assert_config_json, assert_roundtrips, random_inputs

SMALL = {"hidden_units": [8, 4], "k": 3, "hyper_dims": [8], "bottleneck": 4}


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _random_adapter(m=5, k=3, p=4, norm_mode="batch"):
    adapter = HyperAdapter(k=k, bottleneck=p, adapter_initializer="random_normal", norm_mode=norm_mode)
    adapter.build((None, m))
    rng = np.random.default_rng(0)
    adapter.c1.assign(rng.normal(size=(p,)).astype("float32"))
    adapter.c2.assign(rng.normal(size=(m,)).astype("float32"))
    return adapter


def _numpy_adapter_output(adapter, h, core):
    u1, v1, c1 = adapter.u1.numpy(), adapter.v1.numpy(), adapter.c1.numpy()
    u2, v2, c2 = adapter.u2.numpy(), adapter.v2.numpy(), adapter.c2.numpy()
    w_dn = np.einsum("mi,bij,jn->bmn", u1, core, v1)  # materialised [B, m, p]
    w_up = np.einsum("pi,bij,jm->bpm", u2, core, v2)  # [B, p, m]
    if h.ndim == 2:
        a = _sigmoid(np.einsum("bm,bmn->bn", h, w_dn) + c1)
        return np.einsum("bn,bnm->bm", a, w_up) + c2
    a = _sigmoid(np.einsum("bdm,bmn->bdn", h, w_dn) + c1)
    return np.einsum("bdn,bnm->bdm", a, w_up) + c2


@pytest.mark.parametrize("shape", [(6, 5), (6, 3, 5)])
def test_reassociated_product_equals_materialised(shape):
    adapter = _random_adapter()
    rng = np.random.default_rng(1)
    h = rng.normal(size=shape).astype("float32")
    core = np.abs(rng.normal(size=(6, 3, 3))).astype("float32")
    o_ref = _numpy_adapter_output(adapter, h, core)
    np.testing.assert_allclose(adapter.adapter_output(h, core).numpy(), o_ref, rtol=1e-5, atol=1e-5)
    # Full cell: h + DN(o), DN with batch statistics (unbiased variance) and γ=1, β=0.
    out = adapter(h, {"hamur_core": core}, training=False).numpy()
    ref = h + (o_ref - o_ref.mean(0)) / np.sqrt(o_ref.var(0, ddof=1) + 1e-5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_generated_weights_differ_across_instances(synth_schema):
    m = HamurMLP(synth_schema.to_config(), **SMALL)
    m.build()
    x = random_inputs(synth_schema, 8)
    ctx = m.embedding(x)
    core = m.hyper(ctx["all"], training=False).numpy()
    assert core.shape == (8, 3, 3) and np.all(core >= 0)  # last layer BN → ReLU: non-negative core
    assert not np.allclose(core[0], core[1])
    w_dn, w_up = m.adapters[-1].materialized_weights(core)
    w_dn, w_up = w_dn.numpy(), w_up.numpy()
    assert w_dn.shape == (8, 4, 4) and w_up.shape == (8, 4, 4)
    assert not np.allclose(w_dn[0], w_dn[1]) and not np.allclose(w_up[0], w_up[1])
    # Official ones-init: at step 0 every generated weight equals ΣH_b.
    np.testing.assert_allclose(w_dn[:, 0, 0], core.sum(axis=(1, 2)), rtol=1e-5)


def test_domain_norm_batch_mode_unbiased_in_train_and_inference():
    x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0], [7.0, 0.0]], np.float32)
    dn = DomainNorm("batch", epsilon=1e-5)
    dn.build(x.shape)
    assert len(dn.weights) == 2  # γ, β only: no moving statistics
    # Column 0: mean 4, unbiased var 20/3; column 1: mean 3, unbiased var 20/3.
    hand = np.array([[-3, -1], [-1, 3], [1, 1], [3, -3]], np.float32) / np.sqrt(20 / 3 + 1e-5)
    for training in (True, False):
        np.testing.assert_allclose(dn(x, training=training).numpy(), hand, rtol=1e-5, atol=1e-6)
    # Batch of one: variance guarded to 0 (the official code gives NaN).
    np.testing.assert_allclose(dn(x[:1], training=False).numpy(), np.zeros((1, 2)), atol=1e-6)


def test_domain_norm_moving_mode_uses_moving_stats_at_inference():
    x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0], [7.0, 0.0]], np.float32)
    dn = DomainNorm("moving", momentum=0.9, epsilon=1e-5)
    dn.build(x.shape)
    hand = np.array([[-3, -1], [-1, 3], [1, 1], [3, -3]], np.float32) / np.sqrt(20 / 3 + 1e-5)
    np.testing.assert_allclose(dn(x, training=True).numpy(), hand, rtol=1e-5, atol=1e-6)  # batch stats
    mm = 0.1 * np.array([4.0, 3.0])
    mv = 0.9 + 0.1 * np.array([20 / 3, 20 / 3])
    np.testing.assert_allclose(dn.moving_mean.numpy(), mm, rtol=1e-6)
    np.testing.assert_allclose(dn.moving_variance.numpy(), mv, rtol=1e-6)
    np.testing.assert_allclose(dn(x, training=False).numpy(), (x - mm) / np.sqrt(mv + 1e-5), rtol=1e-5)
    np.testing.assert_allclose(dn.moving_mean.numpy(), mm, rtol=1e-6)  # inference does not update


def test_prediction_batch_dependence_by_norm_mode(synth_schema):
    x = random_inputs(synth_schema, 16)
    first = {k: v[:4] for k, v in x.items()}
    preds = {}
    for mode in ("moving", "batch"):
        m = HamurMLP(synth_schema.to_config(), norm_mode=mode, adapter_initializer="random_normal", **SMALL)
        m.build()
        preds[mode] = (m(x, training=False).numpy()[:4], m(first, training=False).numpy())
    np.testing.assert_allclose(preds["moving"][0], preds["moving"][1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(preds["batch"][0], preds["batch"][1], rtol=1e-5, atol=1e-6)  # official: batch stats
    # The registry's official setting normalises with batch statistics, as the official code.
    official = registry.get("hamur_official").build(synth_schema, **SMALL)
    official.build()
    assert all(a.norm.mode == "batch" for a in official.adapters)
    assert not any("moving" in v.path for a in official.adapters for v in a.weights)
    assert registry.get("hamur").build(synth_schema, **SMALL).norm_mode == "moving"


@pytest.mark.parametrize("implementation", ["loop", "einsum"])
def test_per_domain_towers_match_numpy(implementation):
    layer = PerDomainDense(3, num_domains=2, implementation=implementation)
    layer.build((None, 4))
    w, b = layer.kernel.numpy(), layer.bias.numpy()
    assert not np.allclose(w[0], w[1])  # each domain's kernel drawn separately
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(layer(x).numpy(), np.stack([x @ w[d] + b[d] for d in range(2)], axis=1),
                               rtol=1e-5, atol=1e-6)
    x3 = np.random.default_rng(1).normal(size=(5, 2, 4)).astype("float32")
    np.testing.assert_allclose(layer(x3).numpy(), np.stack([x3[:, d] @ w[d] + b[d] for d in range(2)], axis=1),
                               rtol=1e-5, atol=1e-6)


def test_output_comes_from_own_domain_tower(synth_schema):
    # embed_domain=False: the domain id only selects the tower.
    m = HamurMLP(synth_schema.to_config(), embed_domain=False, **SMALL)
    m.build()
    x = random_inputs(synth_schema, 9)
    p = m(x, training=False).numpy()[:, 0]
    per_tower = np.stack([m(dict(x, domain_id=np.full(9, d, np.int64)), training=False).numpy()[:, 0]
                          for d in range(3)])  # [D, B]: every row through tower d
    np.testing.assert_allclose(p, per_tower[x["domain_id"], np.arange(9)], rtol=1e-6)
    assert not np.allclose(per_tower[0], per_tower[1])
    # Gradient isolation of the output layer: domain 0's tower weights get no gradient
    # from a batch without domain 0.
    import tensorflow as tf

    x12 = dict(x, domain_id=np.array([1, 2] * 4 + [1], np.int64))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(m(x12, training=False))
    g = tape.gradient(loss, m.out.kernel).numpy()
    assert np.all(g[0] == 0) and np.any(g[1] != 0) and np.any(g[2] != 0)


def test_core_computed_once_and_counted(synth_schema):
    m = HamurMLP(synth_schema.to_config(), **dict(SMALL, adapter_positions=[-2, -1]))
    m.build()
    hypers = [layer for layer in m._flatten_layers() if isinstance(layer, HyperNetwork)]
    assert len(hypers) == 1 and len(m.adapters) == 2
    assert parameter_report(m)["generated_per_sample"] == 3 * 3
    bb = registry.get("hamur_dcn").build(synth_schema, **dict(SMALL, hook_positions=[0, 1]))
    bb.build()
    hypers = [layer for layer in bb._flatten_layers() if isinstance(layer, HyperNetwork)]
    assert len(hypers) == 1 and len(bb.deep.hook_layers) == 2  # two adapters, one shared core
    assert parameter_report(bb)["generated_per_sample"] == 9


def test_hook_core_source(synth_schema):
    assert hook_class("hamur") is HyperAdapter
    dims = {"all": 6}
    mlp = DomainMLP([4, 3], num_domains=3, context_dims=dims, hook="hamur",
                    hook_config={"k": 2, "bottleneck": 3, "hyper_dims": [4]}, hook_positions=[-1])
    mlp.build((None, 6))
    e = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    with pytest.raises(ValueError, match="hamur_core"):
        mlp(e, {"all": e})
    standalone = DomainMLP([4, 3], num_domains=3, context_dims=dims, hook="hamur",
                           hook_config={"k": 2, "bottleneck": 3, "hyper_dims": [4], "standalone": True},
                           hook_positions=[-1])
    standalone.build((None, 6))
    assert standalone(e, {"all": e}).shape == (5, 3)
    assert HyperAdapter.context_provider({"standalone": True}, dims) is None


def test_configs_json():
    assert_config_json(HyperAdapter(3, {"all": 6}, k=4, bottleneck=8, hyper_dims=[5], norm_mode="batch",
                                    adapter_initializer="glorot_uniform", standalone=True))
    assert_config_json(HyperNetwork(4, [5, 6], dropout=0.1))
    assert_config_json(DomainNorm("batch", 0.8, 1e-3))
    assert_config_json(PerDomainDense(3, 2, implementation="einsum"))
    with pytest.raises(ValueError):
        DomainNorm("nope")


@pytest.mark.parametrize("name", ["hamur", "hamur_wdl", "hamur_dcn"])
def test_roundtrips(name, synth_schema, tmp_path):
    m = registry.get(name).build(synth_schema, **SMALL)
    m.build()
    assert_config_json(m)
    assert_roundtrips(m, str(tmp_path), random_inputs(synth_schema, 16), atol=1e-5)


def test_hamur_learns_on_ml100k(ml100k_schema):
    # Smaller than the registry "hamur" (towers 128-64-32, k 16) to keep the suite fast on CPU.
    row = run_trial("hamur", ml100k_schema, TrainConfig(epochs=1, seed=0),
                    model_kwargs={"hidden_units": [64, 32], "k": 8, "hyper_dims": [32]})
    # Observed 0.766 (1 epoch, seed 0); towers 256-128, k 35 ("hamur_official" with moving DN),
    # 3 epochs: 0.778; trivial 0.5.
    assert row["test_auc"] > 0.75
    assert row["params_generated_per_sample"] == 64
