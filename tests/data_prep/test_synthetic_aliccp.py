"""The Ali-CCP-sized streaming generator: layout, columnar train shards, resume after an interruption."""

import filecmp
import os

import numpy as np
import pytest

from data_prep import synthetic_aliccp as sa
from data_prep.aliccp import DENSE_FIELDS, SPARSE_FIELDS
from mdr_tf import columnar
from mdr_tf.data import load_arrays
from mdr_tf.schema import Schema


def test_layout_columnar_and_resume(tmp_path, monkeypatch):
    ref = str(tmp_path / "ref")
    sa.generate(ref, num_rows=4000, num_shards=2, chunk_rows=700, progress=lambda m: None)
    schema = Schema.load(ref)
    assert [f.name for f in schema.features] == [f"f{f}" for f in SPARSE_FIELDS] + [f"d{f}" for f in DENSE_FIELDS]
    assert schema.num_domains == 3 and list(schema.label_keys) == ["click", "purchase"]
    assert schema.feature("f205").vocab_size == sa.VOCAB["205"] + 1
    x, y = load_arrays(schema, "train")
    # Domain shares follow Ali-CCP's (domain 1 is ~0.75 % of the rows); f301 is the domain.
    share = np.bincount(x["domain_id"], minlength=3) / len(y)
    assert abs(share[2] - 52.44 / 85.32) < 0.05 and share[1] < 0.03
    np.testing.assert_array_equal(x["f301"], x["domain_id"] + 1)
    assert 0.01 < y.mean() < 0.15 and (load_arrays(schema, "train", label_key="purchase")[1] <= y).all()
    for f in SPARSE_FIELDS:
        ids = x[f"f{f}"]
        assert ids.min() >= 1, f"f{f} holds the OOV id 0"
        assert ids.max() <= sa.VOCAB[f], f"f{f} exceeds its vocabulary"
    # The columnar train shards hold exactly the TFRecords' rows and are current.
    assert columnar.available(schema, "train", check_source=True)
    n = sum(columnar.open_shard(p)[0] for p in columnar.shard_paths(schema, "train"))
    assert n == len(y)
    # Interrupted after shard 0: the rerun writes only shard 1 and the output is byte-identical.
    out = str(tmp_path / "resumed")
    real = sa._unit
    calls = []

    def failing(work, index, rows, opt, w):
        calls.append(index)
        if index == 1 and len(calls) == 2:
            raise KeyboardInterrupt
        return real(work, index, rows, opt, w)

    monkeypatch.setattr(sa, "_unit", failing)
    with pytest.raises(KeyboardInterrupt):
        sa.generate(out, num_rows=4000, num_shards=2, chunk_rows=700, progress=lambda m: None)
    assert not os.path.exists(out)  # the output appears only when complete
    sa.generate(out, num_rows=4000, num_shards=2, chunk_rows=700, progress=lambda m: None)
    assert calls == [0, 1, 1]
    for d in range(3):
        for s in ("train", "valid", "test"):
            for i in range(2):
                name = f"domain_{d}/{s}-{i:05d}-of-00002.tfrecord"
                assert filecmp.cmp(os.path.join(ref, name), os.path.join(out, name), shallow=False), name
