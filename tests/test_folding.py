"""First-layer folding for serving (mdr_tf.folding, issue 18): equal outputs, and the fold is used."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mdr_tf import registry
from mdr_tf.folding import SMALL_BATCH, fold_first_layer, fused_rows
from tests.helpers import random_inputs


def _perturbed(name, schema, seed=0, **kwargs):
    """A registry model whose every weight is non-trivial (PN statistics, W_d, biases)."""
    keras.utils.set_random_seed(seed)
    m = registry.get(name).build(schema, **kwargs)
    m.build()
    rng = np.random.default_rng(seed)
    for v in m.weights:
        x = np.asarray(v)
        new = rng.uniform(0.5, 1.5, x.shape) if "moving_variance" in v.path else x + rng.normal(0, 0.1, x.shape)
        v.assign(new.astype(x.dtype))
    return m


def _with_oov(schema, x):
    x = {k: v.copy() for k, v in x.items()}
    f = schema.categorical[0]
    x[f.name][::3] = f.vocab_size + 4  # out of vocabulary: the field's row 0
    x[f.name][1::5] = -2
    x[f.name][2::7] = 2 ** 32 + 1  # not read as 1 (checked in int64)
    return x


def _feed(x):
    return {k: tf.constant(v) for k, v in x.items()}


@pytest.mark.parametrize("name,kwargs", [("dnn", {}), ("dnn", {"batch_norm": True}), ("star", {}), ("mmoe", {}),
                                         ("mmoe", {"expert_units": [16, 8], "tower_units": [8, 4]})])
def test_folded_forward_equals_the_model_and_uses_the_folded_table(name, kwargs, synth_schema):
    m = _perturbed(name, synth_schema, **kwargs)
    fold = fold_first_layer(m)
    assert fold is not None and fold.nbytes > 0
    x = _with_oov(synth_schema, random_inputs(synth_schema, 48, seed=3))
    small = {k: v[:5] for k, v in x.items()}  # per-sample path (<= SMALL_BATCH rows); 48 rows: per-domain tiles
    assert 5 <= SMALL_BATCH < 48
    want = np.asarray(m(x, training=False)).reshape(-1)
    fn = tf.function(fold)
    got, got_small = fn(_feed(x)).numpy(), fn(_feed(small)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_small, want[:5], atol=1e-5)
    # the dynamic-shape trace (a tf.cond between the two paths) gives the same
    dyn = tf.function(fold, input_signature=[{k: tf.TensorSpec([None], v.dtype) for k, v in _feed(x).items()}])
    np.testing.assert_allclose(dyn(_feed(x)).numpy(), got, atol=1e-6)
    np.testing.assert_allclose(dyn(_feed(small)).numpy(), got_small, atol=1e-6)
    # Control: the folded forward reads only its own snapshot (folded table, packed weights): zeroing every
    # weight of the model leaves it unchanged ...
    for v in m.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    np.testing.assert_array_equal(fn(_feed(x)).numpy(), got)
    np.testing.assert_array_equal(fn(_feed(small)).numpy(), got_small)
    assert not np.allclose(np.asarray(m(x, training=False)).reshape(-1), want)  # ... but changes the model


def test_fused_rows_follow_the_embeddings_oov_rule(synth_schema):
    m = registry.get("dnn").build(synth_schema)
    m.build()
    x = _with_oov(synth_schema, random_inputs(synth_schema, 12, seed=1))
    rows, domain = fused_rows(m.embedding, x)
    rows = rows.numpy()
    f = synth_schema.categorical[0]
    want = np.where((x[f.name] < 0) | (x[f.name] >= f.vocab_size), 0, x[f.name])  # OOV → the field's row 0
    np.testing.assert_array_equal(rows[:, 0], want + m.embedding.offsets[0])
    np.testing.assert_array_equal(rows[:, -1], x["domain_id"] + m.embedding.offsets[-1])
    np.testing.assert_array_equal(domain.numpy(), x["domain_id"])
    # the rows are the ones FeatureEmbedding reads: its "fields" view equals the table's rows
    np.testing.assert_allclose(np.asarray(m.embedding(x)["fields"]), np.asarray(m.embedding.table)[rows], atol=0)


def test_folded_star_reads_each_domains_statistics(synth_schema):
    m = _perturbed("star", synth_schema, seed=1)
    fold = fold_first_layer(m)
    x = random_inputs(synth_schema, 30, seed=2)
    base = tf.function(fold)(_feed(x)).numpy()
    # Control: a fold of the same model whose domain-1 PN statistics differ changes domain 1's rows only.
    mv = np.asarray(m.pn.moving_mean)
    mv[1] += 1.0
    m.pn.moving_mean.assign(mv)
    moved = tf.function(fold_first_layer(m))(_feed(x)).numpy()
    d = x["domain_id"]
    assert not np.allclose(moved[d == 1], base[d == 1])
    np.testing.assert_array_equal(moved[d != 1], base[d != 1])


def test_folded_mmoe_uses_each_samples_own_gate_and_tower(synth_schema):
    m = _perturbed("mmoe", synth_schema, seed=2)
    x = random_inputs(synth_schema, 4, seed=4)  # small path: one gather of the domain's towers
    base = tf.function(fold_first_layer(m))(_feed(x)).numpy()
    # Control: changing domain 2's gate and tower weights changes domain 2's samples only.
    for v in (m.gates.kernels[0], m.towers.kernels[0]):
        w = np.asarray(v)
        w[2] += 0.5
        v.assign(w)
    moved = tf.function(fold_first_layer(m))(_feed(x)).numpy()
    d = x["domain_id"]
    assert not np.allclose(moved[d == 2], base[d == 2])
    np.testing.assert_array_equal(moved[d != 2], base[d != 2])


def test_models_that_do_not_fold_return_none(synth_schema):
    assert fold_first_layer(registry.get("ple").build(synth_schema)) is None
    assert fold_first_layer(registry.get("mmoe").build(synth_schema, gate_batch_norm=True)) is None
    assert fold_first_layer(registry.get("dnn").build(synth_schema, input_hook="epnet")) is None  # EPNet gate
    m = registry.get("dnn").build(synth_schema)
    m.build()
    assert fold_first_layer(m, max_bytes=16) is None  # over the size limit


def test_fold_check_catches_a_wrong_fold(synth_schema):
    from mdr_tf.folding import check_folded

    m = _perturbed("star", synth_schema, seed=3)
    fold = fold_first_layer(m)
    fold.domain_params.assign(fold.domain_params * 1.5)  # a wrong per-domain weight
    with pytest.raises(AssertionError, match="differs from the model"):
        check_folded(m, fold)


@pytest.mark.parametrize("name", ["star", "mmoe"])
def test_exported_folded_model_matches_keras(name, synth_schema, tmp_path):
    from mdr_tf.export import export_saved_model

    # STAR and MMoE here; the DNN's folded export is tests/test_export.py's fixture
    m = _perturbed(name, synth_schema)
    path = export_saved_model(m, str(tmp_path / name), version=1, fold=True)
    sm = tf.saved_model.load(path)
    shapes = [shape for _, shape in tf.train.list_variables(path + "/variables/variables")]
    rows = m.embedding.total_rows
    folded = ([m.num_domains * rows, m.fcn.blocks[0].units + m.aux.blocks[0].units] if name == "star"
              else [rows, m.num_experts * m.expert_units[0] + m.num_domains * m.num_experts])
    assert folded in shapes  # the folded tables
    for n in (1, 21):  # padded to 1 (per-sample path) and 24 rows (per-domain tiles)
        x = _with_oov(synth_schema, random_inputs(synth_schema, n, seed=5 + n))
        want = np.asarray(m(x, training=False)).reshape(-1)
        feed = _feed(x)
        np.testing.assert_allclose(sm.signatures["serving_default"](**feed)["probability"].numpy(), want,
                                   atol=1e-5)
        np.testing.assert_allclose(sm.signatures["serve_portable"](**feed)["probability"].numpy(), want,
                                   atol=1e-6)
    if name == "star":
        with pytest.raises(ValueError, match="does not fold"):
            export_saved_model(registry.get("ple").build(synth_schema), str(tmp_path / "ple"), version=1,
                               fold=True)
