"""TFRecord round trip and the tf.data pipeline's batch modes."""

import numpy as np
import pytest

from data_prep.common import FeatureDef, write_dataset
from mdr_tf.data import load_arrays, make_dataset
from mdr_tf.schema import Schema


@pytest.fixture()
def tiny(tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    domain = rng.integers(0, 3, n)
    cols = {"a": rng.integers(0, 5, n), "x": rng.random(n).astype(np.float32)}
    label = rng.integers(0, 2, n).astype(np.float32)
    split = rng.integers(0, 3, n).astype(np.int8)
    out = str(tmp_path / "tiny")
    write_dataset(out, dataset="tiny", features=[FeatureDef("a", "categorical", 5), FeatureDef("x", "dense")],
                  columns=cols, domain=domain, domain_names=["p", "q", "r"], labels={"label": label}, split=split,
                  vocabs={"a": ["<OOV>", "1", "2", "3", "4"]}, fp="f", metadata={}, num_shards=2,
                  progress=lambda m: None)
    return Schema.load(out), cols, domain, label, split


def _rows(feats, labels):
    return sorted(zip(feats["a"].tolist(), np.round(feats["x"], 6).tolist(), feats["domain_id"].tolist(),
                      labels.tolist()))


def test_tfrecord_roundtrip_counts_and_values(tiny):
    schema, cols, domain, label, split = tiny
    assert schema.raw["counts"]["1"]["valid"]["examples"] == int(((domain == 1) & (split == 1)).sum())
    feats, labels = load_arrays(schema, "test")
    m = split == 2
    want = sorted(zip(cols["a"][m].tolist(), np.round(cols["x"][m], 6).tolist(), domain[m].tolist(),
                      label[m].tolist()))
    assert _rows(feats, labels) == want


@pytest.mark.parametrize("in_memory", [True, False])
def test_single_domain_batches_hold_one_domain(tiny, in_memory):
    schema = tiny[0]
    seen = []
    for x, y in make_dataset(schema, "train", 8, mode="single_domain", seed=3, in_memory=in_memory):
        d = x["domain_id"].numpy()
        assert (d == d[0]).all()
        seen.append(len(d))
    assert sum(seen) == sum(schema.counts("train"))


@pytest.mark.parametrize("in_memory", [True, False])
def test_mixed_batches_cover_split_and_shuffle_is_seeded(tiny, in_memory):
    schema = tiny[0]

    def order(seed):
        return np.concatenate([x["a"].numpy() * 10 + x["domain_id"].numpy()
                               for x, _ in make_dataset(schema, "train", 16, seed=seed, in_memory=in_memory)])

    a, b, c = order(5), order(5), order(6)
    assert len(a) == sum(schema.counts("train"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sorted(a.tolist()) == sorted(c.tolist())


def test_in_memory_epochs_reshuffle(tiny):
    ds = make_dataset(tiny[0], "train", 1000, seed=0, in_memory=True)
    e1 = next(iter(ds))[0]["x"].numpy()
    e2 = next(iter(ds))[0]["x"].numpy()
    assert not np.array_equal(e1, e2) and sorted(e1) == sorted(e2)


def test_missing_shard_is_a_clear_error(tiny, tmp_path):
    import os

    schema = tiny[0]
    os.remove(schema.files("valid", [2])[0])
    with pytest.raises(FileNotFoundError, match="domain_2.*valid-00000-of-00002.tfrecord"):
        make_dataset(schema, "valid", 8, in_memory=False)


def test_every_pipeline_runs_without_tfdata_autotuning(columnar_synth_dir):
    """Autotuning threads stall the epoch in which Python's collector frees a leaked Keras
    epoch iterator (mdr_tf.tfdata.without_autotune; experiments/bench_epoch_stalls.py), so every
    pipeline mdr_tf builds for training or evaluation has it off."""
    from mdr_tf import outofcore
    from mdr_tf.data import in_memory_index_batches
    from mdr_tf.fused import stack_batches
    from mdr_tf.schema import Schema

    schema = Schema.load(columnar_synth_dir)
    built = {
        "in memory": make_dataset(schema, "train", 64, in_memory=True),
        "TFRecord stream": make_dataset(schema, "train", 64, in_memory=False, columnar=False),
        "TFRecord stream by domain": make_dataset(schema, "train", 64, in_memory=False, columnar=False,
                                                  mode="single_domain"),
        "columnar stream": make_dataset(schema, "train", 64, in_memory=False, columnar=True),
        "index blocks": in_memory_index_batches(schema, "train", 64, shuffle=True, seed=0, mode="mixed",
                                                domains=[0, 1, 2], label_key=schema.label_keys[0],
                                                drop_remainder=True)[2],
        "stacked batches": stack_batches(make_dataset(schema, "train", 64, in_memory=True, drop_remainder=True), 4),
        "out-of-core blocks": outofcore.FusedStream(schema, "train", 64, 4, buffer_rows=1000,
                                                    chunk_rows=300).dataset(0),
    }
    on = [name for name, ds in built.items() if ds.options().autotune.enabled is not False]
    assert not on, f"autotuning left on in: {on}"
    # ...and the data still flows (one element of each).
    for name, ds in built.items():
        assert next(iter(ds)) is not None, name
