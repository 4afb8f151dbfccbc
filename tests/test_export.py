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
