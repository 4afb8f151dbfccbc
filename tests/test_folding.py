"""First-layer folding for serving (mdr_tf.folding, issue 18): equal outputs, and the fold is used."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mdr_tf import registry
from mdr_tf.folding import fold_first_layer
from tests.helpers import random_inputs


def _perturbed(name, schema, seed=0):
    """A registry model whose every weight is non-trivial (PN statistics, W_d, biases)."""
    keras.utils.set_random_seed(seed)
    m = registry.get(name).build(schema)
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
    return x


@pytest.mark.parametrize("name", ["dnn", "star"])
def test_folded_forward_equals_the_model_and_uses_the_folded_table(name, synth_schema):
    m = _perturbed(name, synth_schema)
    fold = fold_first_layer(m)
    assert fold is not None and fold.nbytes > 0
    x = _with_oov(synth_schema, random_inputs(synth_schema, 48, seed=3))
    feed = {k: tf.constant(v) for k, v in x.items()}
    want = np.asarray(m(x, training=False)).reshape(-1)
    got = tf.function(fold)(feed).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Control: the first layer's kernel is no longer read (the folded table replaces it) ...
    first = (m.deep if name == "dnn" else m.fcn).blocks[0]
    first.kernel.assign(np.zeros(first.kernel.shape, np.float32))
    np.testing.assert_array_equal(tf.function(fold)(feed).numpy(), got)
    assert not np.allclose(np.asarray(m(x, training=False)).reshape(-1), want)  # ... but the model did read it


def test_folded_star_reads_each_domains_statistics(synth_schema):
    m = _perturbed("star", synth_schema, seed=1)
    fold = fold_first_layer(m)
    x = random_inputs(synth_schema, 30, seed=2)
    base = tf.function(fold)({k: tf.constant(v) for k, v in x.items()}).numpy()
    # Control: a fold of the same model whose domain-1 PN statistics differ changes domain 1's rows only.
    mv = np.asarray(m.pn.moving_mean)
    mv[1] += 1.0
    m.pn.moving_mean.assign(mv)
    moved = tf.function(fold_first_layer(m))({k: tf.constant(v) for k, v in x.items()}).numpy()
    d = x["domain_id"]
    assert not np.allclose(moved[d == 1], base[d == 1])
    np.testing.assert_array_equal(moved[d != 1], base[d != 1])


def test_models_that_do_not_fold_return_none(synth_schema):
    assert fold_first_layer(registry.get("mmoe").build(synth_schema)) is None
    m = registry.get("dnn").build(synth_schema)
    m.build()
    assert fold_first_layer(m, max_bytes=16) is None  # over the size limit


def test_exported_folded_star_matches_keras(synth_schema, tmp_path):
    from mdr_tf.export import export_saved_model

    # STAR here; the DNN's folded export is tests/test_export.py's fixture (BackboneModel folds by default)
    m = _perturbed("star", synth_schema)
    path = export_saved_model(m, str(tmp_path / "star"), version=1, fold=True)
    sm = tf.saved_model.load(path)
    shapes = [shape for _, shape in tf.train.list_variables(path + "/variables/variables")]
    assert [m.num_domains * m.embedding.total_rows, m.fcn.blocks[0].units] in shapes  # the folded tables
    x = _with_oov(synth_schema, random_inputs(synth_schema, 21, seed=5))
    feed = {k: tf.constant(v) for k, v in x.items()}
    want = np.asarray(m(x, training=False)).reshape(-1)
    np.testing.assert_allclose(sm.signatures["serving_default"](**feed)["probability"].numpy(), want, atol=1e-5)
    np.testing.assert_allclose(sm.signatures["serve_portable"](**feed)["probability"].numpy(), want, atol=1e-6)
    with pytest.raises(ValueError, match="does not fold"):
        export_saved_model(registry.get("mmoe").build(synth_schema), str(tmp_path / "mmoe"), version=1, fold=True)
