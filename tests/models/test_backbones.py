"""Backbones: shapes, round trips, block/hook plumbing, learning on real ML-100k."""

import numpy as np
import pytest

from mdr_tf.models.backbones import BackboneModel
from tests.helpers import assert_config_json, assert_roundtrips, random_inputs


@pytest.mark.parametrize("backbone", ["mlp", "wdl", "dcn", "deepfm"])
def test_backbone_roundtrip(backbone, synth_schema, tmp_path):
    m = BackboneModel(synth_schema.to_config(), backbone=backbone, hidden_units=[8, 4])
    m.build()
    x = random_inputs(synth_schema)
    p = m.predict(x, verbose=0)
    assert p.shape == (16, 1) and np.all((p > 0) & (p < 1))
    assert_config_json(m)
    assert_roundtrips(m, str(tmp_path), x)


def test_unknown_block_and_backbone_raise(synth_schema):
    with pytest.raises(ValueError, match="unknown dense block 'nope'"):
        BackboneModel(synth_schema.to_config(), block="nope")
    with pytest.raises(ValueError, match="unknown backbone"):
        BackboneModel(synth_schema.to_config(), backbone="nope")
