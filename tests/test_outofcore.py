"""Columnar shards and the out-of-core input path (``mdr_tf.columnar``, ``mdr_tf.outofcore``)."""

import os
import shutil

import keras
import numpy as np
import pytest

from mdr_tf import columnar, outofcore, registry
from mdr_tf.data import load_arrays, make_dataset
from mdr_tf.schema import Schema


@pytest.fixture(scope="module")
def ooc_dir(columnar_synth_dir) -> str:
    """The shared columnar synthetic dataset (tests/conftest.py)."""
    return columnar_synth_dir


def _rows(feats: dict, labels: np.ndarray) -> np.ndarray:
    """Rows as a lexsorted float64 matrix (a multiset that can be compared exactly)."""
    m = np.stack([np.asarray(feats[k], np.float64) for k in sorted(feats)] + [np.ravel(labels)], 1)
    return m[np.lexsort(m.T[::-1])]


def _plan_rows(plan: outofcore.BufferPlan, keys) -> tuple[np.ndarray, list[np.ndarray]]:
    rows, order = [], []
    for cols, blocks in plan.buffers():
        for blk in blocks:
            assert blk.ndim == 2
            for idx in blk:
                rows.append(np.stack([cols[k][idx].astype(np.float64) for k in sorted(keys)]
                                     + [cols[plan.label_key][idx]], 1))
                order.append(rows[-1])
    m = np.concatenate(rows)
    return m[np.lexsort(m.T[::-1])], order


def test_converter_mirrors_tfrecords_resumes_and_detects_damage(ooc_dir, tmp_path):
    schema = Schema.load(ooc_dir)
    assert columnar.available(schema, "train", check_source=True)
    assert not columnar.available(schema, "test")
    # Every shard holds exactly the rows of its TFRecord, in file order.
    for d in range(3):
        for i in range(2):
            n, cols = columnar.open_shard(columnar.shard_dir(ooc_dir, d, "train", i, 2))
            ref = {}
            import tensorflow as tf

            from mdr_tf.data import feature_spec
            for ex in tf.data.TFRecordDataset(schema.files("train", [d])[i]).batch(10_000).map(
                    lambda s: tf.io.parse_example(s, feature_spec(schema))):
                ref = {k: v.numpy() for k, v in ex.items()}
            assert n == len(ref["label"]) == schema.raw["counts"][str(d)]["train"]["examples"] // 2 + (
                i < schema.raw["counts"][str(d)]["train"]["examples"] % 2)
            for k, v in ref.items():
                np.testing.assert_array_equal(np.asarray(cols[k]), v)
                assert (cols[k].dtype.kind == "i") == (v.dtype.kind == "i")
    # Resumable: a rerun rewrites nothing; a replaced TFRecord makes its shard stale and is redone.
    d = str(tmp_path / "copy")
    shutil.copytree(ooc_dir, d)
    meta = os.path.join(columnar.shard_dir(d, 1, "train", 0, 2), "meta.json")
    t0 = os.stat(meta).st_mtime_ns
    done = []
    columnar.convert(d, ["train"], progress=done.append)
    assert done == [] and os.stat(meta).st_mtime_ns == t0
    src = Schema.load(d).files("train", [1])[0]
    os.utime(src, ns=(t0 + 10**9, t0 + 10**9))
    assert not columnar.available(Schema.load(d), "train", check_source=True)
    columnar.convert(d, ["train"], progress=done.append)
    assert len(done) == 1 and "domain_1/train-00000" in done[0]
    # A truncated column file is refused with its name and the expected size.
    f = os.path.join(columnar.shard_dir(d, 2, "train", 1, 2), "item_id.bin")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) - 4)
    with pytest.raises(ValueError, match="item_id.bin.*truncated"):
        columnar.open_shard(os.path.dirname(f))
    # An id that does not fit the stored int32 is refused (no silent wrap-around).
    w = columnar.ColumnarShardWriter(str(tmp_path / "w"), {"a": np.int32})
    with pytest.raises(ValueError, match="outside int32"):
        w.append({"a": np.array([1, 2**31], np.int64)})
    w.abort()
    assert not os.path.exists(str(tmp_path / "w")) and not [p for p in os.listdir(tmp_path) if ".part-" in p]


@pytest.mark.parametrize("shuffle", [True, False])
def test_buffer_plan_serves_every_row_once_seeded_and_bounded(ooc_dir, shuffle):
    schema = Schema.load(ooc_dir)
    x, y = load_arrays(schema, "train")
    ref = _rows(x, y)
    n = len(y)
    kw = dict(steps=4, shuffle=shuffle, seed=7, buffer_rows=1000, chunk_rows=300)
    plan = outofcore.BufferPlan(schema, "train", 128, drop_remainder=False, **kw)
    got, order = _plan_rows(plan, x)
    np.testing.assert_array_equal(got, ref)  # the same multiset of rows as the in-memory path
    # Memory: no buffer holds more than buffer_rows + one chunk + one block, far below the split.
    assert plan.peak_rows <= 1000 + 300 + 4 * 128 < n
    # Every block is [steps, B] except the pass's last full-batch block and its final partial batch.
    shapes = [b.shape for _, bl in outofcore.BufferPlan(schema, "train", 128, drop_remainder=False, **kw).buffers()
              for b in bl]
    assert all(s == (4, 128) for s in shapes[:-2]) and shapes[-1] == (1, n % 128)
    # drop_remainder drops only the final partial batch.
    dropped, _ = _plan_rows(outofcore.BufferPlan(schema, "train", 128, drop_remainder=True, **kw), x)
    assert len(dropped) == n - n % 128
    # Rows missing against schema.json's counts are an error naming the shards.
    bad = Schema.load(ooc_dir)
    bad.raw["counts"]["1"]["train"]["examples"] += 1
    with pytest.raises(ValueError, match="columnar/domain_1/train-00000-of-00002.*schema.json records"):
        outofcore.BufferPlan(bad, "train", 128, **kw)
    # Seeded: the same seed repeats the order, the next pass does not.
    _, again = _plan_rows(outofcore.BufferPlan(schema, "train", 128, drop_remainder=False, **kw), x)
    assert all(np.array_equal(a, b) for a, b in zip(order, again))
    if shuffle:
        plan2 = outofcore.BufferPlan(schema, "train", 128, drop_remainder=False, **kw)
        next(plan2.buffers(), None)
        _, second_pass = _plan_rows(plan2, x)
        assert not np.array_equal(np.concatenate(order), np.concatenate(second_pass))
        # Rows of different domains and shards meet in one batch (the chunks are shuffled).
        assert len(np.unique(order[0][:, sorted(x).index("domain_id")])) > 1
    else:  # shard order, rows in file order
        _, first = columnar.open_shard(columnar.shard_dir(ooc_dir, 0, "train", 0, 2))
        np.testing.assert_array_equal(order[0][:, sorted(x).index("user_id")], first["user_id"][:128])


def test_make_dataset_reads_columnar_shards_when_the_split_does_not_fit(ooc_dir, monkeypatch):
    import mdr_tf.data as data

    schema = Schema.load(ooc_dir)
    x, y = load_arrays(schema, "valid")
    monkeypatch.setattr(data, "IN_MEMORY_MAX_VALUES", 10)
    ds = make_dataset(schema, "valid", 100, seed=3)  # in_memory="auto" → too big → columnar
    batches = list(ds)
    assert [int(b[1].shape[0]) for b in batches[:-1]] == [100] * (len(batches) - 1)
    fx = {k: np.concatenate([b[0][k].numpy() for b in batches]) for k in x}
    fy = np.concatenate([b[1].numpy()[:, 0] for b in batches])
    np.testing.assert_array_equal(_rows(fx, fy), _rows(x, y))
    assert batches[0][0]["user_id"].dtype.name == "int64"
    # Without columnar shards (test split) the same call streams the TFRecords.
    assert sum(int(b[1].shape[0]) for b in make_dataset(schema, "test", 100)) == sum(schema.counts("test"))
    with pytest.raises(FileNotFoundError, match="columnar shard missing"):
        make_dataset(schema, "test", 100, columnar=True)


def _dnn(schema):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    m = registry.get("dnn").build(schema, hidden_units=[16, 8], embedding_dim=8)
    m.build()
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(), jit_compile=True)
    return m


def test_fused_stream_trains_exactly_like_keras_on_the_same_batches(ooc_dir):
    schema = Schema.load(ooc_dir)
    kw = dict(buffer_rows=1000, chunk_rows=300)
    # Reference: Keras' step-by-step fit on the batches of the same seeded plan, gathered in NumPy.
    plan = outofcore.BufferPlan(schema, "train", 128, steps=4, seed=5, drop_remainder=True, **kw)
    keys = plan.keys
    xs, ys = [], []
    for cols, blocks in plan.buffers():
        for blk in blocks:
            for idx in blk:
                xs.append({k: cols[k][idx] for k in keys})
                ys.append(cols[plan.label_key][idx].reshape(-1, 1))
    ref = _dnn(schema)
    for bx, by in zip(xs, ys):
        ref.train_on_batch(bx, by)
    stream = outofcore.FusedStream(schema, "train", 128, 4, **kw)
    fused = _dnn(schema)
    stream.install(fused)
    fused.fit(stream.dataset(5), epochs=1, verbose=0)
    assert int(fused.optimizer.iterations.numpy()) == len(xs) == sum(schema.counts("train")) // 128
    assert stream.buffers_loaded >= 4  # the trainer moved through several buffers
    for a, b in zip(ref.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Bounded: the producer never held more than two buffers ahead of the trainer.
    assert len(stream._pending) <= 2


def test_training_fit_uses_the_fused_stream_out_of_core(ooc_dir, monkeypatch):
    import mdr_tf.data as data
    from mdr_tf import training

    schema = Schema.load(ooc_dir)
    monkeypatch.setattr(data, "IN_MEMORY_MAX_VALUES", 10)
    import importlib

    fit_module = importlib.import_module("mdr_tf.training.fit")  # where fit reads the limit
    monkeypatch.setattr(fit_module, "IN_MEMORY_MAX_VALUES", 10)
    used = []
    real = outofcore.FusedStream.install

    def spy(self, model, jit_compile=True):
        used.append(self)
        return real(self, model, jit_compile)

    monkeypatch.setattr(outofcore.FusedStream, "install", spy)
    m = registry.get("dnn").build(schema, hidden_units=[16, 8], embedding_dim=8)
    m.build()
    cfg = training.TrainConfig(batch_size=128, epochs=2, steps_per_execution=4, patience=5, verbose=0)
    stopper = training.fit(m, schema, cfg)
    assert used and used[0].buffers_loaded >= 2
    assert int(m.optimizer.iterations.numpy()) == 2 * (sum(schema.counts("train")) // 128)
    # It learnt: validation AUC above chance on data with strong per-domain effects.
    assert len(stopper.history) == 2 and max(h["val_auc"] for h in stopper.history) > 0.6
