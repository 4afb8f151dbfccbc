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


def _sorted_rows(cols: dict, keys) -> np.ndarray:
    m = np.stack([np.asarray(cols[k], np.float64) for k in keys], 1)
    return m[np.lexsort(m.T[::-1])]


def test_columnar_valid_test_and_columnar_only_splits(tmp_path):
    from mdr_tf import registry
    from mdr_tf.training import evaluation

    splits = ("train", "valid", "test")
    kw = dict(num_rows=4000, num_shards=2, chunk_rows=700, progress=lambda m: None, columnar_splits=splits)
    full = str(tmp_path / "full")
    lean = str(tmp_path / "lean")
    sa.generate(full, **kw)
    sa.generate(lean, tfrecord_splits=["train"], **kw)
    fs, ls = Schema.load(full), Schema.load(lean)
    assert fs.raw["counts"] == ls.raw["counts"] and sum(ls.counts("test")) > 0
    assert ls.raw["tfrecord_splits"] == ["train"] and fs.raw["fingerprint"] != ls.raw["fingerprint"]
    for d in range(3):
        for i in range(2):
            name = f"domain_{d}/train-{i:05d}-of-00002.tfrecord"
            assert filecmp.cmp(os.path.join(full, name), os.path.join(lean, name), shallow=False)
            for s in ("valid", "test"):  # columnar only: no TFRecords, the same columnar rows
                assert not os.path.exists(os.path.join(lean, f"domain_{d}/{s}-{i:05d}-of-00002.tfrecord"))
                a, b = columnar.shard_dir(full, d, s, i, 2), columnar.shard_dir(lean, d, s, i, 2)
                for f in os.listdir(a):
                    if f.endswith(".bin"):
                        assert filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False), (a, f)
    for s in splits:
        assert columnar.available(fs, s, check_source=True) and columnar.available(ls, s, check_source=True)
    # The columnar valid shards hold exactly the rows of the valid TFRecords.
    x, y = load_arrays(fs, "valid")
    keys = sorted(fs.input_names)
    cols: dict = {}
    for _, n, c in columnar.open_split(fs, "valid"):
        for k in keys + ["click"]:
            cols.setdefault(k, []).append(np.asarray(c[k]))
    cols = {k: np.concatenate(v) for k, v in cols.items()}
    np.testing.assert_array_equal(_sorted_rows({**x, "click": y}, keys + ["click"]),
                                  _sorted_rows(cols, keys + ["click"]))
    # Evaluation reads a columnar-only split from its shards; metrics equal the TFRecord path's.
    assert evaluation.eval_source(ls, "valid") == "columnar" and evaluation.eval_source(fs, "valid") == "memory"
    import keras

    keras.utils.set_random_seed(0)
    m = registry.get("dnn").build(fs, hidden_units=[8], embedding_dim=2,
                                  embeddings_initializer=keras.initializers.RandomNormal(0.0, 0.5))
    m.build()
    ref = evaluation.evaluate_split(m, fs, "valid", 512)
    got = evaluation.evaluate_split(m, ls, "valid", 512)
    for k in ("auc", "logloss", "auc_d0", "auc_d2", "n"):
        assert got[k] == pytest.approx(ref[k], abs=1e-6), k
    # Options that would lose a split, or the train TFRecords, are refused.
    with pytest.raises(ValueError, match="neither as TFRecords nor as columnar"):
        sa.generate(str(tmp_path / "x"), num_rows=100, num_shards=1, tfrecord_splits=["train"])
    with pytest.raises(ValueError, match="must hold 'train'"):
        sa.generate(str(tmp_path / "x"), num_rows=100, num_shards=1, tfrecord_splits=["valid", "test"],
                    columnar_splits=splits)
