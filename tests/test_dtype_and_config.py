"""Mixed precision reaches every sublayer; non-default initializers survive get_config/from_config.

A model built with ``dtype="mixed_float16"`` (the global policy left at float32) must give
that policy to every sublayer: float32 variables, 16-bit computation, a float32
probability, the float32 function up to half-precision rounding, and a save/load round trip.
Every registry model is covered (``SMALL``; mlora_2stage builds mlora).
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from mdr_tf import registry
from mdr_tf.layers.interaction import CrossNetwork
from mdr_tf.layers.mlp import DomainMLP
from mdr_tf.models.base import MultiDomainModel
from mdr_tf.schema import Schema

SCHEMA = {
    "features": [
        {"name": "user_id", "kind": "categorical", "vocab_size": 7, "group": "user", "is_id": True},
        {"name": "item_id", "kind": "categorical", "vocab_size": 5, "group": "item", "is_id": True},
        {"name": "ctx", "kind": "categorical", "vocab_size": 3, "group": "domain"},
        {"name": "price", "kind": "dense", "group": "item"},
    ],
    "num_domains": 3,
    "sequences": [
        {"name": "click", "kind": "sequence", "shape": [4], "embed_with": "item_id"},
        {"name": "unclick", "kind": "sequence", "shape": [4, 2], "embed_with": "item_id"},
    ],
}


def _inputs(n: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = {"user_id": rng.integers(0, 7, n), "item_id": rng.integers(0, 5, n), "ctx": rng.integers(0, 3, n),
         "price": rng.random(n).astype(np.float32), "domain_id": np.arange(n) % 3}
    for name, length in (("click", 4), ("unclick", 8)):
        mask = (rng.random((n, length)) < 0.7).astype(np.int64)
        x[f"{name}_ids"] = rng.integers(1, 5, (n, length)) * mask
        x[f"{name}_mask"] = mask
    return {k: (v if v.dtype == np.float32 else v.astype(np.int64)) for k, v in x.items()}


def _float_policy_16() -> str:
    """mixed_float16 where the CPU kernels exist (TF CPU has half matmuls), else mixed_bfloat16."""
    return "mixed_float16"


#: Every registry model, small (each case ~1-2 s on 2 CPU cores).
SMALL = {
    "dnn": dict(hidden_units=[8, 4]),
    "wdl": dict(hidden_units=[8]),
    "dcn": dict(hidden_units=[8], cross_layers=1),
    "deepfm": dict(hidden_units=[8]),
    "mlora": dict(hidden_units=[8, 4], block_config={"alpha": 2}),
    "mlora_wdl": dict(hidden_units=[8], block_config={"alpha": 2}),
    "mlora_dcn": dict(hidden_units=[8], block_config={"alpha": 2}),
    "mlora_deepfm": dict(hidden_units=[8], block_config={"alpha": 2}),
    "hamur": dict(hidden_units=[8, 4], k=3, hyper_dims=[4], bottleneck=2),
    "hamur_official": dict(hidden_units=[8, 4], k=3, hyper_dims=[4], bottleneck=2),
    "hamur_wdl": dict(hidden_units=[8], k=3, hyper_dims=[4], bottleneck=2),
    "hamur_dcn": dict(hidden_units=[8], k=3, hyper_dims=[4], bottleneck=2),
    "midpg": dict(hidden_units=[8, 4], a=2, b=2, k=2, aux_units=[4], mir_units=[4]),
    "dpg": dict(hidden_units=[8, 4], a=2, b=2, k=2, aux_units=[4]),
    "midpg_rc": dict(hidden_units=[8, 4], a=2, b=2, k=2, aux_units=[4], mir_units=[4]),
    "midpg_c": dict(hidden_units=[8, 4], a=2, b=2, k=2, aux_units=[4], mir_units=[4]),
    "midpg_non": dict(hidden_units=[8, 4], k=2, aux_units=[4], mir_units=[4]),
    "hierrec": dict(global_units=8, condition_dim=4, som_units=[4, 4], num_heads=2),
    "hierrec_large": dict(global_units=8, condition_dim=4, som_units=[4, 4], num_heads=3),
    "shared_bottom": dict(bottom_units=[8], tower_units=[4]),
    "mmoe": dict(num_experts=2, expert_units=[8], tower_units=[4]),
    "ple": dict(expert_units=[8], tower_units=[4]),
    "m2m": dict(ff_units=8, num_experts=2, expert_units=[8, 4], scenario_units=4, task_dim=4, attention_units=4),
    "pepnet": dict(hidden_units=[8, 4]),
    "ppnet": dict(hidden_units=[8, 4]),
    "epnet": dict(hidden_units=[8, 4]),
    "adasparse": dict(hidden_units=[8, 4]),
    "apg": dict(hidden_units=[8, 4]),
    "sarnet": dict(num_shared_experts=2, num_specific_experts=1, expert_units=4, hidden_units=[8]),
    "star": dict(hidden_units=[8, 4], aux_units=[4]),
    "tem4ctr": dict(hidden_units=[8], attention_units=[4]),
    "din": dict(hidden_units=[8], attention_units=[4]),
    "star_tem4ctr": dict(hidden_units=[8], aux_units=[4], interest={"mode": "tem4ctr", "attention_units": [4]}),
}
#: mlora_2stage builds mlora (it differs in the training procedure only).
POLICY_MODELS = sorted(SMALL)
#: Half-precision tolerance against float32; hamur_official normalises with the batch's own
#: statistics at inference (DomainNorm "batch"), dividing by a small-batch std (~3e-3 seen).
ATOL = {"hamur_official": 1e-2}


@pytest.mark.parametrize("name", POLICY_MODELS)
def test_model_dtype_policy_reaches_every_sublayer_and_the_forward_pass_runs(name, tmp_path):
    policy = _float_policy_16()
    assert keras.config.dtype_policy().name == "float32"  # the model's own policy, not the global one
    keras.utils.set_random_seed(0)
    x = _inputs()
    m = registry.get(name).build(SCHEMA, embedding_dim=4, dtype=policy, **SMALL[name])
    m.build()
    # Zero-initialised weights (biases, LoRA's B, APG's S) get small values: every path carries signal.
    rng = np.random.default_rng(1)
    m.set_weights([rng.normal(0.0, 0.1, w.shape).astype(w.dtype) if w.dtype.kind == "f" and not w.any() else w
                   for w in m.get_weights()])
    layers = m._flatten_layers(include_self=False, recursive=True)
    wrong = [(layer.path, layer.dtype_policy.name) for layer in layers if layer.dtype_policy.name != policy]
    assert not wrong, wrong
    floats = [v for v in m.weights if "int" not in str(v.dtype)]
    assert floats and all(v.dtype == "float32" for v in floats), {v.path: v.dtype for v in floats}
    assert {layer.compute_dtype for layer in layers} == {"float16"}
    ctx = m.embedding(x)
    assert keras.backend.standardize_dtype(ctx["all"].dtype) == "float16"  # the computation really is 16-bit
    p = np.asarray(m(x, training=False))
    assert p.dtype == np.float32 and p.shape == (12, 1) and np.all(np.isfinite(p))
    # The same weights in float32 give the same function up to half-precision rounding.
    ref = registry.get(name).build(SCHEMA, embedding_dim=4, **SMALL[name])
    ref.build()
    ref.set_weights(m.get_weights())
    want = np.asarray(ref(x, training=False))
    np.testing.assert_allclose(p, want, atol=ATOL.get(name, 5e-3))
    assert np.abs(p - want).max() > 0  # and the 16-bit path is a different computation
    # The policy is part of the config: a saved model loads with it.
    path = str(tmp_path / "m.keras")
    m.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.dtype_policy.name == policy and loaded.embedding.dtype_policy.name == policy
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), p, atol=0)


def test_the_policy_test_covers_every_registry_model():
    assert set(registry.REGISTRY) - {"mlora_2stage"} == set(POLICY_MODELS)


def test_gradients_under_mixed_float16_are_float32_and_finite():
    import tensorflow as tf

    m = registry.get("star").build(SCHEMA, embedding_dim=4, dtype=_float_policy_16(), **SMALL["star"])
    m.build()
    x = _inputs(32)
    y = (x["item_id"] % 2).astype(np.float32).reshape(-1, 1)
    with tf.GradientTape() as tape:
        loss = keras.losses.binary_crossentropy(y, m(x, training=True))
    grads = tape.gradient(loss, m.trainable_weights)
    assert all(g is not None and g.dtype == "float32" for g in grads)
    assert all(np.all(np.isfinite(np.asarray(tf.convert_to_tensor(g)))) for g in grads)
    nonzero = sum(float(np.abs(np.asarray(tf.convert_to_tensor(g))).max()) > 0 for g in grads)
    assert nonzero > len(grads) // 2, (nonzero, len(grads))
    # PartitionedNorm's moving statistics stay float32 and move in training.
    assert m.pn.moving_mean.dtype == "float32" and float(np.abs(np.asarray(m.pn.moving_mean)).max()) > 0


def test_domain_mlp_policy_reaches_blocks_hooks_norms():
    mlp = DomainMLP([4, 3], num_domains=2, context_dims={"domain_side": 4}, block="plain", batch_norm=True,
                    dropout=0.1, dtype="mixed_bfloat16")
    mlp.build((None, 5))
    subs = mlp._flatten_layers(include_self=False, recursive=True)
    assert len(subs) >= 6 and {s.dtype_policy.name for s in subs} == {"mixed_bfloat16"}
    y = mlp(np.ones((2, 5), np.float32), {"domain": np.array([0, 1], np.int32)})
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16" and all(v.dtype == "float32" for v in mlp.weights)


# ----------------------------------------------------------------------------- initializers


def test_non_default_embedding_initializer_survives_get_config_from_config():
    schema = Schema.from_config(SCHEMA).to_config()
    init = keras.initializers.RandomNormal(mean=0.0, stddev=0.3, seed=11)
    m = registry.get("star").build(schema, embedding_dim=4, embeddings_initializer=init,
                                   specific_initializer=keras.initializers.Constant(0.5), **SMALL["star"])
    cfg = m.get_config()
    text = json.dumps(cfg)  # serialised, not an Initializer object
    assert "RandomNormal" in text and "Constant" in text
    clone = type(m).from_config(json.loads(text))
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(cfg, sort_keys=True)
    m.build()
    clone.build()
    table, table2 = np.asarray(m.embedding.table), np.asarray(clone.embedding.table)
    np.testing.assert_array_equal(table, table2)  # same seeded initializer → same table
    assert 0.2 < table.std() < 0.4  # N(0, 0.3), not the default N(0, 1e-4)
    for blk in [clone.main_out] + clone.fcn.blocks:
        np.testing.assert_array_equal(np.asarray(blk.kernel_d), 0.5)


def test_default_embedding_initializer_is_serialised_n_0_1e4():
    m = MultiDomainModel(SCHEMA)
    cfg = m.get_config()
    init = keras.initializers.deserialize(cfg["embeddings_initializer"])
    assert isinstance(init, keras.initializers.RandomNormal) and init.stddev == 1e-4
    assert cfg["dtype"]["config"]["name"] == "float32" and cfg["name"] == m.name


def test_layer_initializers_survive_config():
    cross = CrossNetwork(2, kernel_initializer=keras.initializers.Constant(0.25))
    clone = CrossNetwork.from_config(json.loads(json.dumps(cross.get_config())))
    clone.build((None, 3))
    assert all(np.all(np.asarray(w) == 0.25) for w in clone.ws)
    mlp = DomainMLP([3], block_config={"kernel_initializer": {"class_name": "Constant", "config": {"value": -1.0}}})
    clone = DomainMLP.from_config(json.loads(json.dumps(mlp.get_config())))
    clone.build((None, 2))
    np.testing.assert_array_equal(np.asarray(clone.blocks[0].kernel), -1.0)
