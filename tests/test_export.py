"""Serving behaviour of the exported SavedModel: OOV ids, bad domain ids, versioned layout."""

import numpy as np
import pytest
import tensorflow as tf

from mdr_tf.export import export_saved_model
from mdr_tf.models.backbones import BackboneModel
from tests.helpers import random_inputs


@pytest.fixture(scope="module")
def exported(synth_schema, tmp_path_factory):
    m = BackboneModel(synth_schema.to_config(), hidden_units=[8])
    m.build()
    path = export_saved_model(m, str(tmp_path_factory.mktemp("export")), version=7)
    return m, tf.saved_model.load(path), path


def test_versioned_layout_and_signatures(exported):
    _, sm, path = exported
    assert path.endswith("/7")
    assert {"serving_default", "serve", "serve_examples"} <= set(sm.signatures)
    out = sm.signatures["serving_default"].structured_outputs
    assert list(out) == ["probability"]


def test_out_of_vocabulary_ids_are_served_as_oov_row(exported, synth_schema):
    m, sm, _ = exported
    x = random_inputs(synth_schema, 6)
    vocab = synth_schema.feature("item_id").vocab_size
    oov = dict(x, item_id=np.array([vocab, vocab + 100, -3, vocab, vocab, vocab], np.int64))
    zero = dict(x, item_id=np.zeros(6, np.int64))
    got = sm.signatures["serving_default"](**{k: tf.constant(v) for k, v in oov.items()})["probability"].numpy()
    want = m.predict(zero, verbose=0).reshape(-1)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("bad", [-1, 3])
def test_unknown_domain_id_is_rejected(exported, synth_schema, bad):
    _, sm, _ = exported
    x = random_inputs(synth_schema, 4)
    x["domain_id"][1] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match="domain_id"):
        sm.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})


# --- issue 18: XLA serving forward with padded batch sizes, folded first layer, portable signature ---

def _xla_functions(sm, signature):
    """Names of the functions reachable from a loaded signature that carry ``_XlaMustCompile``."""
    lib = sm.signatures[signature].graph.as_graph_def().library
    return [f.signature.name for f in lib.function if f.attr.get("_XlaMustCompile") and f.attr["_XlaMustCompile"].b]


def test_serving_batch_size_grid_bounds_padding():
    from mdr_tf.export import serving_batch_size

    assert [serving_batch_size(b) for b in (0, 1, 2, 3, 5, 8, 9, 11, 17, 4096, 4097)] == \
        [1, 1, 2, 4, 8, 8, 10, 12, 20, 4096, 5120]
    b = np.arange(9, 70000)
    sizes = np.array([serving_batch_size(int(n)) for n in b])
    assert (sizes >= b).all() and (sizes <= 1.25 * b).all()
    assert len(set(sizes)) <= 4 * 14  # a bounded number of XLA compilations
    assert serving_batch_size(2 ** 22 + 1) == 2 ** 22 + 1  # beyond the grid: unpadded


def test_xla_signatures_match_keras_at_unpadded_batch_sizes(exported, synth_schema):
    m, sm, path = exported
    assert _xla_functions(sm, "serving_default") and _xla_functions(sm, "serve_examples")
    assert not _xla_functions(sm, "serve_portable")
    # the DNN folds (mdr_tf.folding): the SavedModel holds the folded [rows, 8] table
    shapes = [shape for _, shape in tf.train.list_variables(path + "/variables/variables")]
    assert [m.embedding.total_rows, 8] in shapes
    from mdr_tf.export import serialize_examples

    for n in (1, 5, 13):  # padded to 1, 8, 14 rows; the padding rows are dropped
        x = random_inputs(synth_schema, n, seed=n)
        want = m.predict(x, verbose=0).reshape(-1)
        feed = {k: tf.constant(v) for k, v in x.items()}
        got = sm.signatures["serving_default"](**feed)["probability"].numpy()
        assert got.shape == (n,)
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(sm.signatures["serve_portable"](**feed)["probability"].numpy(), want, atol=1e-6)
        ex = sm.serve_examples(tf.constant(serialize_examples(synth_schema, x)))["probability"].numpy()
        np.testing.assert_allclose(ex, want, atol=1e-6)


def test_portable_signature_keeps_the_checks(exported, synth_schema):
    _, sm, _ = exported
    x = random_inputs(synth_schema, 4)
    x["domain_id"][2] = 7
    with pytest.raises(tf.errors.InvalidArgumentError, match="domain_id"):
        sm.signatures["serve_portable"](**{k: tf.constant(v) for k, v in x.items()})


def test_jit_compile_false_exports_without_xla(synth_schema, tmp_path):
    m = BackboneModel(synth_schema.to_config(), hidden_units=[8])
    m.build()
    sm = tf.saved_model.load(export_saved_model(m, str(tmp_path), version=1, jit_compile=False, fold=False))
    assert not _xla_functions(sm, "serving_default")
    x = random_inputs(synth_schema, 5)
    np.testing.assert_allclose(sm.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})[
        "probability"].numpy(), m.predict(x, verbose=0).reshape(-1), atol=1e-6)
    with pytest.raises(ValueError, match="jit_compile"):
        export_saved_model(m, str(tmp_path), version=2, jit_compile="yes")
