"""New-domain onboarding: growing a model by a domain and training only its private parameters.

The base models have domains 0..1 of the 3-domain synthetic dataset; domain 2 is the
"new" domain. Weights are perturbed with seeded noise so that the domains' slices differ
(fresh models have many zero / equal slices, which would hide a misplaced slice).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mdr_tf import registry
from mdr_tf.data import load_arrays
from mdr_tf.export import export_saved_model
from mdr_tf.onboarding import (MaskedAdam, add_domain, check_old_domains_unchanged, count_private_params,
                               domain_layouts, onboard_domain, private_masks)
from mdr_tf.training import TrainConfig, predict_arrays

# Tiny models; MLoRA with both routings (the default "matmul" computes per-domain
# matmuls at inference, so its predictions too are independent of D).
MODELS = {
    "dnn": {"hidden_units": [16, 8]},
    "mlora": {"hidden_units": [16, 8], "block_config": {"alpha": 4, "routing": "gather"}},
    "mlora_matmul": {"hidden_units": [16, 8], "block_config": {"alpha": 4}},
    "mlora_dcn": {"hidden_units": [16, 8], "block_config": {"alpha": 4}},
    "hierrec": {"global_units": 16, "condition_dim": 8, "som_units": [8, 8], "num_heads": 2},
    "mlora_bn": {"hidden_units": [16, 8], "block_config": {"alpha": 4, "routing": "gather"}, "batch_norm": True},
    "star": {"hidden_units": [16, 8], "aux_units": [4]},
    "ple": {"expert_units": [8], "tower_units": [4]},
    "pepnet": {"hidden_units": [16, 8]},
    "hamur": {"hidden_units": [16, 8], "k": 4, "hyper_dims": [8], "bottleneck": 4},
    "sarnet": {"hidden_units": [16], "num_shared_experts": 2, "num_specific_experts": 2, "expert_units": 8},
}


def _registry_name(name: str) -> str:
    return "mlora" if name in ("mlora_bn", "mlora_matmul") else name


@pytest.fixture(scope="module")
def base_schema(synth_schema) -> dict:
    cfg = synth_schema.to_config()
    cfg["num_domains"], cfg["domain_names"] = 2, list(synth_schema.domain_names[:2])
    return cfg


@pytest.fixture(scope="module")
def test_rows(synth_schema):
    """(old-domain rows, new-domain rows) of the synthetic test split."""
    feats, _ = load_arrays(synth_schema, "test")
    old = feats["domain_id"] < 2
    return {k: v[old] for k, v in feats.items()}, {k: v[~old] for k, v in feats.items()}


def _perturb(model: keras.Model, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for v in model.weights:
        x = np.asarray(v)
        noise = rng.uniform(0.1, 1.0, x.shape) if "variance" in v.name else rng.normal(0, 0.1, x.shape)
        v.assign((x + noise).astype(x.dtype))


def _base(name: str, schema_cfg: dict, seed: int = 0, **overrides) -> keras.Model:
    keras.utils.set_random_seed(seed)
    kwargs = {"embedding_dim": 8, **MODELS[name], **overrides}
    model = registry.get(_registry_name(name)).build(schema_cfg, **kwargs)
    model.build()
    _perturb(model, seed + 1)
    return model


@pytest.mark.parametrize("name", ["dnn", "mlora", "mlora_matmul", "mlora_dcn", "star", "ple", "pepnet", "hamur",
                                  "hierrec", "sarnet"])
def test_add_domain_keeps_old_predictions_bit_identical(name, base_schema, test_rows):
    base = _base(name, base_schema)
    new = add_domain(base, name="d2", init_from=0)
    assert new.num_domains == 3 and list(new.schema.domain_names) == ["d0", "d1", "d2"]
    assert type(new) is type(base)
    old_rows, _ = test_rows
    for batch_size in (4096, 33):
        np.testing.assert_array_equal(predict_arrays(new, old_rows, batch_size),
                                      predict_arrays(base, old_rows, batch_size))
    # init_from=0 copies every slice of domain 0: the new domain predicts exactly as domain 0.
    rows0 = {k: v[old_rows["domain_id"] == 0] for k, v in old_rows.items()}
    as_new = {**rows0, "domain_id": np.full_like(rows0["domain_id"], 2)}
    np.testing.assert_array_equal(predict_arrays(new, as_new), predict_arrays(base, rows0))


@pytest.mark.parametrize("name", [n for n in registry.names() if not registry.get(n).needs_sequences])
def test_every_registry_model_keeps_old_predictions(name, base_schema):
    """Every model of the registry, with its registry defaults, computes an old domain's
    row the same way with D + 1 domains (add_domain's own probe check, 4 batch sizes)."""
    keras.utils.set_random_seed(0)
    model = registry.get(name).build(base_schema, embedding_dim=8)
    model.build()
    _perturb(model, 1)
    new = add_domain(model, name="d2", init_from="mean", verify=False)
    same, diff = check_old_domains_unchanged(model, new)
    assert same, f"{name}: old-domain predictions differ by up to {diff:.3g}"


@pytest.mark.parametrize("name", ["mlora", "star", "hamur", "sarnet"])
def test_grown_variables(name, base_schema, test_rows):
    base = _base(name, base_schema)
    layouts = domain_layouts(base)
    new = add_domain(base, name="d2", init_from="mean")
    assert len(new.weights) == len(base.weights)
    grown = 0
    for v, nv, lay in zip(base.weights, new.weights, layouts):
        old, value = np.asarray(v), np.asarray(nv)
        if lay is None:
            np.testing.assert_array_equal(value, old, err_msg=v.path)
            continue
        grown += 1
        expected = list(old.shape)
        expected[lay.axis] += lay.block
        assert list(value.shape) == expected, v.path
        head = [slice(None)] * old.ndim
        head[lay.axis] = slice(0, lay.offset + 2 * lay.block)
        np.testing.assert_array_equal(value[tuple(head)], old[tuple(head)], err_msg=v.path)
        mean = np.mean([old[lay.index(old.ndim, d)] for d in range(2)], axis=0)
        np.testing.assert_allclose(value[lay.index(old.ndim, 2)], mean, rtol=1e-6, atol=1e-7, err_msg=v.path)
    assert grown >= 3
    table = base.embedding.table
    assert new.embedding.table.shape[0] == table.shape[0] + 1  # the new domain-id row
    paths = {p.split("/", 1)[1] for p in (v.path for v, lay in zip(base.weights, layouts) if lay is not None)}
    if name == "star":  # per-domain partitioned-norm statistics (non-trainable) grow too
        assert {"pn/moving_mean", "pn/moving_variance"} <= paths
    if name == "hamur":  # per-domain tower BatchNorm [D·u] and adapter domain-norm statistics [D, m]
        assert {"tower_bn_0/bn/moving_mean", "adapter_1/domain_norm/moving_variance"} <= paths
    if name == "sarnet":  # domain blocks on the last axis of [n, D·P·u]
        assert any(lay is not None and lay.axis == 1 for lay in layouts)
    old_rows, _ = test_rows
    np.testing.assert_array_equal(predict_arrays(new, old_rows), predict_arrays(base, old_rows))


def test_bad_arguments(base_schema):
    base = _base("dnn", base_schema)
    for bad in (2, -1, "nope", True, 1.5):
        with pytest.raises(ValueError, match="init_from"):
            add_domain(base, init_from=bad)
    with pytest.raises(ValueError, match="already exists"):
        add_domain(base, name="d0")
    with pytest.raises(ValueError, match="verify"):
        add_domain(base, verify="sometimes")
    # Two-level PLE: the shared gate spans [D·ns specific + nsh shared] experts, not whole
    # domain blocks; growing it would change every domain's shared branch.
    ple = _base("ple", base_schema, num_levels=2)
    with pytest.raises(ValueError, match="shared_gate"):
        add_domain(ple)


@pytest.mark.parametrize("name,jit", [("mlora_bn", True), ("star", False)])  # XLA-compiled train step or not
def test_onboarding_trains_only_the_new_domain(name, jit, base_schema, synth_schema, test_rows, tmp_path):
    base = _base(name, base_schema)
    old_rows, new_rows = test_rows
    p_old = predict_arrays(base, old_rows)
    new = add_domain(base, name="d2")
    before = [np.asarray(v).copy() for v in new.weights]
    flags = [v.trainable for v in new.weights]
    p_new = predict_arrays(new, new_rows)
    cfg = TrainConfig(epochs=1, batch_size=128, steps_per_execution=4, jit_compile=jit, seed=3)
    result = onboard_domain(new, synth_schema, cfg)
    assert result.domain == 2 and len(result.stopper.history) >= 1
    assert result.trainable_params == count_private_params(new) > 0
    # Old domains: bit-identical predictions; the new domain's predictions changed.
    np.testing.assert_array_equal(predict_arrays(new, old_rows), p_old)
    assert not np.array_equal(predict_arrays(new, new_rows), p_new)
    # Shared variables (incl. shared BatchNorm statistics) and the old slices are unchanged;
    # the new slices of trainable and non-trainable per-domain variables moved.
    moved = set()
    for v, old, mask in zip(new.weights, before, private_masks(new)):
        value = np.asarray(v)
        if mask is None:
            np.testing.assert_array_equal(value, old, err_msg=v.path)
        else:
            np.testing.assert_array_equal(value[~mask], old[~mask], err_msg=v.path)
            if not np.array_equal(value[mask], old[mask]):
                moved.add((v.path.split("/", 1)[1], v.trainable))
    assert any(trainable for _, trainable in moved)
    if name == "star":
        assert ("pn/moving_mean", False) in moved
    else:
        assert any("bn_" in p for p in (v.path for v in new.weights if not v.trainable))  # has shared BN
    # A normal model afterwards: flags restored, plain optimizer, save / load / export.
    assert [v.trainable for v in new.weights] == flags
    assert not isinstance(new.optimizer, MaskedAdam)
    if name == "star":
        x = {k: v[:64] for k, v in new_rows.items()}
        ref = predict_arrays(new, x)
        new.save(str(tmp_path / "onboarded.keras"))
        loaded = keras.models.load_model(str(tmp_path / "onboarded.keras"))
        np.testing.assert_array_equal(predict_arrays(loaded, x), ref)
        serving = tf.saved_model.load(export_saved_model(new, str(tmp_path / "export"), version=1))
        out = serving.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})["probability"]
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-6, rtol=0)
