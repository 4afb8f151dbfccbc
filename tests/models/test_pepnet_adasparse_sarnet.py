"""PEPNet / PPNet / EPNet, AdaSparse, APG, SAR-Net: registry builds, round trips, structure, ML-100k."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from mdr_tf import registry
from mdr_tf.layers.mechanisms.gates import AdaSparsePruner, PPNetGate
from mdr_tf.models.pepnet import PEPNetModel
from mdr_tf.models.sarnet import SARNetModel
from mdr_tf.params import parameter_report
from mdr_tf.training import TrainConfig, run_trial
from tests.helpers import assert_config_json, assert_roundtrips, random_inputs

SMALL = {
    "pepnet": {"hidden_units": [8, 4]},
    "ppnet": {"hidden_units": [8, 4]},
    "epnet": {"hidden_units": [8, 4], "epnet_granularity": "field"},
    "adasparse": {"hidden_units": [8, 4]},
    "apg": {"hidden_units": [8, 4]},
    "sarnet": {"hidden_units": [8], "expert_units": 4, "num_shared_experts": 3},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_registry_model_config_and_roundtrip(name, synth_schema, tmp_path):
    m = registry.get(name).build(synth_schema, **SMALL[name])
    m.build()
    x = random_inputs(synth_schema, 32)
    p = m.predict(x, verbose=0)
    assert p.shape == (32, 1)
    assert_config_json(m)
    if name in ("pepnet", "adasparse", "sarnet"):
        # ppnet / epnet are PEPNetModel flags; apg's round trip is in tests/layers/test_apg.py.
        assert_roundtrips(m, str(tmp_path), x)


def _ppnet_gates(m):
    return [lyr for lyr in m._flatten_layers() if isinstance(lyr, PPNetGate)]


def test_pepnet_structure_and_gate_positions(synth_schema):
    cfg = synth_schema.to_config()
    models = {pos: PEPNetModel(cfg, hidden_units=[8, 6, 4], ppnet_gate_position=pos)
              for pos in ("paper", "after", "before")}
    for m in models.values():
        m.build()
    w = models["paper"].context_dims["all"]
    # paper (default): the input of every layer incl. the output layer, L + 1 gates;
    # after: each hidden output (L gates); before: each hidden layer's input (L gates).
    widths = {pos: sorted(g.gate.units for g in _ppnet_gates(m)) for pos, m in models.items()}
    assert widths == {"paper": sorted([w, 8, 6, 4]), "after": [4, 6, 8], "before": sorted([w, 8, 6])}
    assert PEPNetModel(cfg).ppnet_gate_position == "paper"
    paper = models["paper"]
    # gate inputs: the gates' own embeddings ⊕ stop_grad(main-path view)
    gdims = paper.gate_embedding.output_dims
    assert _ppnet_gates(paper)[0].gate.w1.shape[0] == gdims["ids"] + w
    assert paper.epnet.gate.w1.shape[0] == gdims["domain_side"] + w
    # the gate table holds only what the gates read: the id features and the domain id
    ids = [f.name for f in synth_schema.categorical if f.is_id]
    assert [f.name for f in paper.gate_embedding.schema.features] == ids
    # the gates are the per-sample generated parameters: δ_dom (width of e) + δ_pp per gate
    assert parameter_report(paper)["generated_per_sample"] == w + (w + 8 + 6 + 4)
    ppnet = registry.get("ppnet").build(synth_schema, hidden_units=[8, 4])
    epnet = registry.get("epnet").build(synth_schema, hidden_units=[8, 4])
    ppnet.build(), epnet.build()
    assert not hasattr(ppnet, "epnet") and len(_ppnet_gates(ppnet)) == 3
    assert hasattr(epnet, "epnet") and len(_ppnet_gates(epnet)) == 0
    with pytest.raises(ValueError, match="ppnet_gate_position"):
        PEPNetModel(cfg, ppnet_gate_position="middle")
    old = paper.get_config()  # a config saved before the gate tables existed
    del old["gate_embeddings"]
    assert not PEPNetModel.from_config(old).gate_embeddings


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _gatenu(gate, parts):
    x = np.concatenate([_np(p) for p in parts], axis=1)
    w1, b1, w2, b2 = (_np(v) for v in (gate.w1, gate.b1, gate.w2, gate.b2))
    return gate.gamma / (1 + np.exp(-(np.maximum(x @ w1 + b1, 0) @ w2 + b2)))


def _randomised_pepnet(schema, **kw):
    m = PEPNetModel(schema.to_config(), hidden_units=[5, 3], **kw)
    m.build()
    rng = np.random.default_rng(0)
    for v in m.trainable_weights:  # large enough that every gate is far from 1
        v.assign(rng.normal(0, 0.6, v.shape).astype("float32"))
    return m


def test_pepnet_paper_layout_matches_equation(synth_schema):
    """e' = δ_ep ⊙ e; h_{l+1} = ReLU((δ_l ⊙ h_l) W_l + b_l); logit = (δ_L ⊙ h_L) w + b,
    every δ_l = GateNU_l(E_g(ids) ⊕ e') — against NumPy."""
    m = _randomised_pepnet(synth_schema)
    x = random_inputs(synth_schema, 16)
    e, g = _np(m.embedding(x)["all"]), m.gate_embedding(x)
    e_ep = _gatenu(m.epnet.gate, [g["domain_side"], e]) * e
    gates = [m.deep.input_hook] + m.deep.hook_layers
    h = e_ep
    for blk, gate in zip(m.deep.blocks, gates):
        h = np.maximum((_gatenu(gate.gate, [g["ids"], e_ep]) * h) @ _np(blk.kernel) + _np(blk.bias), 0)
    logit = (_gatenu(gates[-1].gate, [g["ids"], e_ep]) * h) @ _np(m.head.kernel) + _np(m.head.bias)
    np.testing.assert_allclose(m.predict(x, verbose=0), 1 / (1 + np.exp(-logit)), rtol=1e-4, atol=1e-6)


def test_ppnet_reads_the_epnet_output(synth_schema, monkeypatch):
    """The PPNet gates see O_ep = EPNet(e), not the raw embedding: changing only EPNet's
    gate changes every PPNet gate value, and the context they read equals O_ep."""
    m = _randomised_pepnet(synth_schema)
    x = random_inputs(synth_schema, 16)
    seen = []
    original = PPNetGate.call

    def spy(self, h, ctx=None, training=None):
        seen.append((_np(self.gate(self.gate_input(ctx))), _np(ctx["all"])))
        return original(self, h, ctx, training=training)

    monkeypatch.setattr(PPNetGate, "call", spy)
    ctx = m.gate_context(x, m.embedding(x))
    o_ep = _np(m.epnet([ctx["all"], ctx["gate_side"]]))
    m(x)
    assert len(seen) == 3  # L + 1 gates
    for _, context in seen:
        np.testing.assert_allclose(context, o_ep, rtol=1e-6)
        assert np.abs(context - _np(ctx["all"])).max() > 1e-3  # O_ep is not the raw e
    before = [d for d, _ in seen]
    seen.clear()
    m.epnet.gate.b2.assign(m.epnet.gate.b2.numpy() + 1.0)  # touches EPNet only
    m(x)
    for (after, _), old in zip(seen, before):
        assert np.abs(after - old).max() > 1e-4


@pytest.mark.parametrize("gate_embeddings", [True, False])
def test_gate_gradients_reach_only_gate_embeddings(synth_schema, monkeypatch, gate_embeddings):
    """What flows back through a gate reaches the gates' own embedding rows, never the
    main path's: the main table's gradient is the same with every gate's output held
    constant (stop-gradient). The control (``gate_embeddings=False``, the gates reuse
    the main rows) fails that equality."""
    from mdr_tf.layers.mechanisms.gates import GateNU

    m = _randomised_pepnet(synth_schema, gate_embeddings=gate_embeddings)
    x = random_inputs(synth_schema, 32)
    y = tf.constant(np.random.default_rng(1).integers(0, 2, [32, 1]).astype("float32"))
    tables = [m.embedding.table] + ([m.gate_embedding.table] if gate_embeddings else [])

    def grads():
        with tf.GradientTape() as tape:
            loss = keras.losses.binary_crossentropy(y, m(x, training=True))
        return [tf.convert_to_tensor(gr).numpy()
                for gr in tape.gradient(loss, [t.value for t in tables],
                                        unconnected_gradients=tf.UnconnectedGradients.ZERO)]

    full = grads()
    original = GateNU.call
    monkeypatch.setattr(GateNU, "call", lambda self, z: keras.ops.stop_gradient(original(self, z)))
    held = grads()
    if gate_embeddings:
        np.testing.assert_allclose(full[0], held[0], rtol=1e-5, atol=1e-9)
        assert np.abs(full[1]).sum() > 0 and np.abs(held[1]).sum() == 0  # the gate table: gates only
    else:
        assert np.abs(full[0] - held[0]).max() > 1e-6


def test_adasparse_prunes_input_and_every_hidden_layer(synth_schema):
    m = registry.get("adasparse").build(synth_schema, hidden_units=[8, 4])
    m.build()
    widths = [lyr.kernel.shape[1] for lyr in m._flatten_layers() if isinstance(lyr, AdaSparsePruner)]
    assert sorted(widths) == sorted([m.context_dims["all"], 8, 4])
    assert parameter_report(m)["generated_per_sample"] == m.context_dims["all"] + 8 + 4


def test_sarnet_transform_and_domain_routing(synth_schema):
    # Seeded: with an unseeded 4-unit ReLU tower, a draw whose hidden units are all dead predicts exactly
    # 0.5 everywhere and the routing check below cannot see the experts.
    keras.utils.set_random_seed(3)
    m = SARNetModel(synth_schema.to_config(), hidden_units=[4], expert_units=3, num_shared_experts=2,
                    num_specific_experts=2, expert_batch_norm=False)
    m.build()
    x = random_inputs(synth_schema, 12)
    ctx = m.embedding(x)
    rng = np.random.default_rng(0)
    m.transform.scale.assign(rng.normal(1, 0.5, m.transform.scale.shape).astype("float32"))
    m.transform.shift.assign(rng.normal(0, 0.5, m.transform.shift.shape).astype("float32"))
    e, dom = keras.ops.convert_to_numpy(ctx["all"]), x["domain_id"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(m.transform(ctx["all"], ctx["domain"])),
                               e * m.transform.scale.numpy()[dom] + m.transform.shift.numpy()[dom], rtol=1e-5)
    g = keras.ops.convert_to_numpy(m.experts.gate_weights(ctx["all"], ctx["domain"]))
    assert g.shape == (12, 4)
    # Training computes the experts and gate as wide matmuls, inference per scenario: same values.
    e_t = m.experts(ctx["all"], ctx["domain"], training=True)
    e_i = m.experts(ctx["all"], ctx["domain"], training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(e_t), keras.ops.convert_to_numpy(e_i), rtol=1e-5,
                               atol=1e-6)
    g_t = keras.ops.convert_to_numpy(m.experts.gate_weights(ctx["all"], ctx["domain"], training=True))
    np.testing.assert_allclose(g_t, g, rtol=1e-5, atol=1e-6)
    # Changing domain 1's specific experts changes only the predictions of domain-1 samples.
    p0 = m.predict(x, verbose=0).ravel()
    k = m.experts.specific_kernel.numpy()  # columns: [domain, expert, unit]
    k[:, 1 * 2 * 3:2 * 2 * 3] += 1.0
    m.experts.specific_kernel.assign(k)
    p1 = m.predict(x, verbose=0).ravel()
    np.testing.assert_array_equal(p1[dom != 1], p0[dom != 1])
    assert np.all(np.abs(p1[dom == 1] - p0[dom == 1]) > 0)


def _bn_np(bn, x, training):
    if training:
        mean, var = x.mean(0), x.var(0)
    else:
        mean, var = _np(bn.moving_mean), _np(bn.moving_variance)
    return (x - mean) / np.sqrt(var + bn.epsilon) * _np(bn.gamma) + _np(bn.beta)


def _softmax(z):
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("gate", ["per_domain", "shared"])
def test_sarnet_experts_and_gate_match_equation_with_bn(synth_schema, gate):
    """h = fc · Σ_i softmax(e' G_d + g_d)_i ReLU(BN(e') K_i + c_i) over the S shared and the
    sample's own P specific experts; BN with batch moments in training, moving statistics
    at inference."""
    S, P, u = 2, 2, 3
    cfg = synth_schema.to_config()
    fc_name = synth_schema.dense[0].name
    m = SARNetModel(cfg, hidden_units=[4], expert_units=u, num_shared_experts=S, num_specific_experts=P,
                    gate=gate, fairness_feature=fc_name)
    m.build()
    rng = np.random.default_rng(0)
    for v in m.weights:  # incl. BN γ, β and moving statistics
        v.assign(rng.uniform(0.3, 1.5, v.shape).astype("float32") if "variance" in v.path
                 else rng.normal(0, 0.7, v.shape).astype("float32"))
    ex = m.experts
    x = random_inputs(synth_schema, 12)
    ctx = m.embedding(x)
    e = _np(m.transform(ctx["all"], ctx["domain"]))
    dom = x["domain_id"]
    fc = x[fc_name].reshape(-1, 1)
    D = synth_schema.num_domains
    ks, cs = _np(ex.shared_kernel), _np(ex.shared_bias)
    kp = _np(ex.specific_kernel).reshape(-1, D, P * u)
    cp = _np(ex.specific_bias).reshape(D, P * u)
    gk, gb = _np(ex.gate_kernel), _np(ex.gate_bias)
    if gate == "per_domain":
        assert gk.shape == (e.shape[1], D * (S + P))
        logits = np.stack([e[b] @ gk.reshape(-1, D, S + P)[:, dom[b]] + gb.reshape(D, S + P)[dom[b]]
                           for b in range(12)])
    else:
        assert gk.shape == (e.shape[1], S + P)
        logits = e @ gk + gb
    g = _softmax(logits)
    for training in (True, False):
        xn = _bn_np(ex.norm, e, training)
        shared = np.maximum(xn @ ks + cs, 0).reshape(12, S, u)
        spec = np.stack([np.maximum(xn[b] @ kp[:, dom[b]] + cp[dom[b]], 0) for b in range(12)]).reshape(12, P, u)
        want = fc * np.einsum("be,beu->bu", g, np.concatenate([shared, spec], axis=1))
        got = ex(e, ctx["domain"], keras.ops.convert_to_tensor(fc), training=training)
        np.testing.assert_allclose(_np(got), want, rtol=1e-4, atol=1e-5, err_msg=f"training={training}")
    # the model reads fc from its feature: with fc ≡ 1 it equals the model without fc
    plain = SARNetModel(cfg, hidden_units=[4], expert_units=u, num_shared_experts=S, num_specific_experts=P,
                        gate=gate)
    plain.build()
    plain.set_weights(m.get_weights())
    ones = {**x, fc_name: np.ones_like(x[fc_name])}
    np.testing.assert_allclose(m.predict(ones, verbose=0), plain.predict(ones, verbose=0), rtol=1e-6)
    assert np.abs(m.predict(x, verbose=0) - plain.predict(x, verbose=0)).max() > 1e-4
    with pytest.raises(ValueError, match="fairness_feature"):
        SARNetModel(cfg, fairness_feature="user_id")
    with pytest.raises(ValueError, match="gate must be one of"):
        SARNetModel(cfg, gate="nope")


@pytest.mark.parametrize("name", ["pepnet", "adasparse", "apg", "sarnet"])
def test_learns_on_ml100k(name, ml100k_schema):
    # One epoch, no XLA (compile time dominates a 1-epoch run; XLA is covered above).
    # Observed test AUC (seed 0, 1 epoch, no XLA): pepnet 0.771, adasparse 0.771, apg 0.769,
    # sarnet 0.773; the DNN gets 0.770 after 1 epoch, ~0.78 after 3.
    row = run_trial(name, ml100k_schema, TrainConfig(epochs=1, seed=0, jit_compile=False))
    assert row["test_auc"] > 0.75


def test_registry_pepnet_is_backbone_with_epnet_input_hook_equal_to_pepnet_model(synth_schema):
    """Issue 12.5: the registry's pepnet is BackboneModel(input_hook="epnet", hook="ppnet");
    same seed → the same weights and outputs as PEPNetModel's default, and with the
    (randomised) weights transferred the outputs stay equal."""
    from mdr_tf.layers.mechanisms.pepnet import EPNetInputHook
    from mdr_tf.models.backbones import BackboneModel

    cfg = synth_schema.to_config()
    keras.utils.set_random_seed(0)
    old = PEPNetModel(cfg, hidden_units=[8, 6, 4])
    old.build()
    keras.utils.set_random_seed(0)
    new = registry.get("pepnet").build(synth_schema, hidden_units=[8, 6, 4])
    new.build()
    assert isinstance(new, BackboneModel) and isinstance(new.input_hook_layer, EPNetInputHook)
    assert new.input_hook == "epnet" and new.hook == "ppnet"
    x = random_inputs(synth_schema, 32, seed=2)
    np.testing.assert_array_equal(new.predict(x, verbose=0), old.predict(x, verbose=0))
    rng = np.random.default_rng(1)
    for v in old.weights:
        v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))
    assert [tuple(v.shape) for v in new.weights] == [tuple(v.shape) for v in old.weights]
    new.set_weights(old.get_weights())
    np.testing.assert_allclose(new.predict(x, verbose=0), old.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    assert parameter_report(new) == parameter_report(old)


@pytest.mark.parametrize("backbone", ["dcn", "wdl", "deepfm"])
def test_pepnet_on_other_backbones_trains_and_its_input_hook_matters(synth_schema, monkeypatch, backbone):
    """PEPNet on DCN / W&D / DeepFM: builds, a few training steps lower the loss, and the
    EPNet input hook matters (control: its gate neutralised to 1 changes the outputs)."""
    from mdr_tf.layers.mechanisms.gates import EPNet

    keras.utils.set_random_seed(0)
    m = registry.get("pepnet").build(synth_schema, hidden_units=[8, 4], backbone=backbone)
    m.build()
    assert m.backbone == backbone and m.input_hook_layer is not None
    x = random_inputs(synth_schema, 256, seed=3)
    rng = np.random.default_rng(0)
    for v in m.input_hook_layer.epnet.trainable_weights:  # a gate far from its near-constant init
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    for v in m.embedding.trainable_weights:  # embeddings far from their N(0, 1e-4) init, so gating them shows
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    ref = np.asarray(m(x, training=False))
    with monkeypatch.context() as mp:
        mp.setattr(EPNet, "gate_values", lambda self, inputs: ops.ones_like(inputs[0]))
        neutral = np.asarray(m(x, training=False))
    assert np.abs(neutral - ref).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(m(x, training=False)), ref)
    y = (x["item_id"] % 2).astype("float32").reshape(-1, 1)
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.BinaryCrossentropy())
    hist = m.fit(x, y, batch_size=64, epochs=4, verbose=0).history["loss"]
    assert hist[-1] < hist[0], hist
    assert_config_json(m)


def test_input_hook_registry_rejects_unknown_names(synth_schema):
    from mdr_tf.layers.blocks import INPUT_HOOKS, input_hook_class
    from mdr_tf.models.backbones import BackboneModel

    assert "epnet" in INPUT_HOOKS and input_hook_class("epnet").__name__ == "EPNetInputHook"
    with pytest.raises(ValueError, match="unknown input hook 'nope'"):
        BackboneModel(synth_schema.to_config(), input_hook="nope")


MIXED = {"m2m": dict(expert_units=[8], output_units=[4]), "ple": dict(expert_units=[8], tower_units=[4]),
         "sarnet": dict(hidden_units=[8], expert_units=4, num_shared_experts=2),
         "pepnet_dcn": dict(hidden_units=[8, 4], backbone="dcn")}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_mixed_precision_policy_reaches_every_sublayer(name):
    """Hygiene (issue 12.8): M2M, PLE, SAR-Net and PEPNet-on-DCN give the model's dtype policy to
    every sublayer; the float16 forward matches float32 with the same weights."""
    from tests.test_dtype_and_config import SCHEMA, _inputs

    spec = registry.get(name.split("_")[0])
    m = spec.build(SCHEMA, embedding_dim=4, dtype="mixed_float16", **MIXED[name])
    m.build()
    wrong = [(lyr.path, lyr.dtype_policy.name) for lyr in m._flatten_layers(include_self=False)
             if lyr.dtype_policy.name != "mixed_float16"]
    assert not wrong, wrong
    assert all(v.dtype == "float32" for v in m.weights if "int" not in str(v.dtype))
    x = _inputs()
    p = np.asarray(m(x, training=False))
    ref = spec.build(SCHEMA, embedding_dim=4, **MIXED[name])
    ref.build()
    ref.set_weights(m.get_weights())
    np.testing.assert_allclose(p, np.asarray(ref(x, training=False)), atol=5e-3)
