"""Exact evaluation of a split from its columnar shards (``mdr_tf.training.evaluation``)."""

import os
import shutil
import tracemalloc

import keras
import numpy as np
import pytest

from mdr_tf import columnar, registry
from mdr_tf.data import load_arrays
from mdr_tf.schema import Schema
from mdr_tf.training import evaluation


@pytest.fixture(scope="module")
def eval_dir(columnar_synth_dir) -> str:
    """The shared columnar synthetic dataset (tests/conftest.py)."""
    return columnar_synth_dir


@pytest.fixture(scope="module")
def trained(eval_dir):
    """A small DNN trained one epoch (in memory), so that its predictions carry signal."""
    schema = Schema.load(eval_dir)
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    m = registry.get("dnn").build(schema, hidden_units=[16, 8], embedding_dim=8)
    m.build()
    m.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.BinaryCrossentropy())
    x, y = load_arrays(schema, "train")
    m.fit(x, y.reshape(-1, 1), batch_size=256, epochs=2, verbose=0, shuffle=False)
    return m


def test_columnar_evaluation_equals_in_memory(eval_dir, trained, monkeypatch):
    schema = Schema.load(eval_dir)
    for domains in (None, [0, 2]):
        mem = evaluation.evaluate_split(trained, schema, "valid", 256, domains=domains, source="memory")
        col = evaluation.evaluate_split(trained, schema, "valid", 256, domains=domains, source="columnar")
        assert mem.keys() == col.keys()
        for k in mem:
            if np.isnan(mem[k]):
                assert np.isnan(col[k]), k
            else:
                assert col[k] == pytest.approx(mem[k], abs=1e-6), k
        assert mem["auc"] > 0.6  # a model that learnt: the comparison is not between constants
    # The same predictions, row for row (as multisets of (label, domain, probability)).
    ym, pm, dm = evaluation.predict_split(trained, schema, "valid", 256, source="memory")
    yc, pc, dc = evaluation.predict_split(trained, schema, "valid", 256, source="columnar")
    a = np.stack([ym, dm, pm], 1).astype(np.float64)
    b = np.stack([yc, dc, pc], 1).astype(np.float64)
    np.testing.assert_allclose(a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])], atol=1e-6)
    # "auto" picks the columnar shards only when the split does not fit in memory.
    import mdr_tf.data as data

    assert evaluation.eval_source(schema, "valid") == "memory"
    monkeypatch.setattr(data, "IN_MEMORY_MAX_VALUES", 10)
    assert evaluation.eval_source(schema, "valid") == "columnar"
    assert evaluation.eval_source(schema, "test") == "memory"  # no columnar shards: read the TFRecords

    def no_memory(*a, **k):
        raise AssertionError("the split was read into memory")

    monkeypatch.setattr(evaluation, "_cached_arrays", no_memory)
    auto = evaluation.evaluate_split(trained, schema, "valid", 256)
    assert auto["auc"] == pytest.approx(evaluation.evaluate_split(trained, schema, "valid", 256,
                                                                  source="columnar")["auc"], abs=1e-12)
    with pytest.raises(AssertionError, match="read into memory"):  # the control: the test split has no shards
        evaluation.evaluate_split(trained, schema, "test", 256)


def _inflated_valid(src: str, dst: str, times: int) -> Schema:
    """A copy of the dataset whose valid columnar shards repeat every row ``times`` times."""
    import json

    shutil.copytree(src, dst)
    schema = Schema.load(dst)
    for p in columnar.shard_paths(schema, "valid"):
        n, cols = columnar.open_shard(p)
        rows = {k: np.array(v) for k, v in cols.items()}
        w = columnar.ColumnarShardWriter(p, {k: v.dtype for k, v in rows.items()})
        for _ in range(times):
            w.append(rows)
        w.close()
    with open(os.path.join(dst, "schema.json")) as f:
        raw = json.load(f)
    for per in raw["counts"].values():
        per["valid"]["examples"] *= times
    with open(os.path.join(dst, "schema.json"), "w") as f:
        json.dump(raw, f)
    return Schema.load(dst)


def test_columnar_evaluation_memory_is_one_chunk(eval_dir, trained, tmp_path):
    schema = _inflated_valid(eval_dir, str(tmp_path / "big"), 40)
    n = sum(schema.counts("valid"))
    row_bytes = 8 * len(schema.input_names)  # every feature as int64 / float32-or-wider after widening
    small, whole = {}, {}
    peaks = []
    for chunk, st in ((256, small), (10**7, whole)):
        evaluation.predict_columnar(trained, schema, "valid", 256, chunk_rows=chunk)  # warm (traced function)
        tracemalloc.start()
        evaluation.predict_columnar(trained, schema, "valid", 256, chunk_rows=chunk, stats=st)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert small["rows"] == whole["rows"] == n > 20_000
    assert small["peak_chunk_bytes"] <= 256 * row_bytes
    assert small["chunks"] == sum(-(-r // 256) for _, r, _ in columnar.open_split(schema, "valid"))
    # The control: one chunk per shard copies each whole shard's features out of the map.
    assert whole["chunks"] == 6 and whole["peak_chunk_bytes"] > 20 * small["peak_chunk_bytes"]
    # Host memory follows the chunk, not the split: labels, domains and predictions of the
    # split (12 B/row) plus one chunk, against a whole shard's features in the control.
    assert peaks[0] < 12 * n + 4 * small["peak_chunk_bytes"] + 200_000, peaks
    assert peaks[1] > peaks[0] + 0.8 * whole["peak_chunk_bytes"], peaks
    # The inflated split still evaluates exactly like the same rows read in memory.
    y, p, d = evaluation.predict_columnar(trained, schema, "valid", 256, chunk_rows=1000)
    y1, p1, d1 = evaluation.predict_split(trained, Schema.load(eval_dir), "valid", 256, source="columnar")
    np.testing.assert_allclose(np.sort(p), np.sort(np.tile(p1, 40)), atol=1e-6)


def test_truncated_column_file_is_named(eval_dir, trained, tmp_path, monkeypatch):
    d = str(tmp_path / "copy")
    shutil.copytree(eval_dir, d)
    f = os.path.join(columnar.shard_dir(d, 1, "valid", 0, 2), "item_id.bin")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) - 4)
    schema = Schema.load(d)
    with pytest.raises(ValueError, match="domain_1/valid-00000-of-00002/item_id.bin.*truncated"):
        evaluation.evaluate_split(trained, schema, "valid", 256, source="columnar")
    import mdr_tf.data as data

    monkeypatch.setattr(data, "IN_MEMORY_MAX_VALUES", 10)  # "auto" does not fall back silently either
    with pytest.raises(ValueError, match="item_id.bin.*truncated"):
        evaluation.evaluate_split(trained, schema, "valid", 256)


def test_scale_run_times_every_stage_out_of_core(eval_dir, monkeypatch):
    """experiments.scale_run on a split "too large for memory": columnar training and validation."""
    import importlib

    import mdr_tf.data as data
    from experiments import scale_run

    monkeypatch.setattr(data, "IN_MEMORY_MAX_VALUES", 10)
    monkeypatch.setattr(importlib.import_module("mdr_tf.training.fit"), "IN_MEMORY_MAX_VALUES", 10)
    schema = Schema.load(eval_dir)
    row = scale_run.run_one("dnn", eval_dir, batch_size=128, steps=4, eval_batch_size=1024)
    assert row["train_path"] == "columnar_fused"
    assert (row["valid_source"], row["test_source"]) == ("columnar", "memory")
    assert row["steps"] == sum(schema.counts("train")) // 128
    assert row["valid_eval_s"] is not None and row["test_rows"] == sum(schema.counts("test"))
    assert row["valid_auc"] > 0.6 and row["test_auc"] > 0.6
    assert row["peak_rss_mb"] >= row["peak_rss_train_mb"] > 0
    # --max_train_steps: stops after that many steps (a block of 4 at a time); --noevaluate skips evaluation.
    short = scale_run.run_one("dnn", eval_dir, batch_size=128, steps=4, max_train_steps=8, evaluate=False)
    assert short["steps"] == 8 and short["valid_eval_s"] is None and "test_auc" not in short
    assert short["s_per_step_after_first_block"] > 0


def test_read_rows_is_a_plain_read_equal_to_the_slice(eval_dir):
    p = columnar.shard_dir(eval_dir, 2, "valid", 1, 2)
    n, cols = columnar.open_shard(p)
    for k, col in cols.items():
        for a, b in ((0, n), (3, 17), (n - 5, n), (4, 4)):
            got = columnar.read_rows(col, a, b)
            want = np.asarray(col[a:b])
            np.testing.assert_array_equal(got, want)
            assert not isinstance(got, np.memmap) and got.base is None or not isinstance(got.base, np.memmap)
            assert got.dtype == (np.int64 if want.dtype.kind == "i" else want.dtype.newbyteorder("="))
        assert columnar.read_rows(col, 0, n, widen=False).dtype.itemsize == col.dtype.itemsize
