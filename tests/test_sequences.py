"""Behaviour sequences (docs/datasets/sequences.md): ml100k_seq leakage audit from the raw ratings, the
sequence feature kind through data / fused training / export, and the DIN / TEM4CTR layers."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from data_prep.sequences import build_sequences, encode_list_examples, prepare_ml100k_seq
from mdr_tf import registry
from mdr_tf.data import feature_spec, load_arrays, make_dataset
from mdr_tf.layers.sequence import SequenceInterest, TargetAttention, project_onto
from mdr_tf.schema import Schema

L_SMALL, R_SMALL = 6, 2


@pytest.fixture(scope="module")
def raw_ml100k():
    from data_prep.movielens import read_ml100k
    from data_prep.sources import DEFAULT_CACHE, RawSource, fetch_recbole_wheel

    src = RawSource(fetch_recbole_wheel(DEFAULT_CACHE), prefix_in_zip="recbole/dataset_example/ml-100k/")
    frame, _ = read_ml100k(src)
    return frame


@pytest.fixture(scope="module")
def raw_seq(raw_ml100k):
    f = raw_ml100k
    return build_sequences(f["user"].to_numpy(), f["ts"].to_numpy(), f["rating"].to_numpy() >= 4,
                           f["item"].to_numpy(), 30, 5)


@pytest.fixture(scope="module")
def seq_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("seq") / "ml100k_seq")
    prepare_ml100k_seq(d, history_length=L_SMALL, window=R_SMALL)
    return d


@pytest.fixture(scope="module")
def seq_schema(seq_dir):
    return Schema.load(seq_dir)


# ----------------------------------------------------------------------------- data


def _raw_lookup(frame):
    """(user, item) → rating, ts as dense tables (a user rates an item at most once)."""
    u, i = frame["user"].to_numpy(), frame["item"].to_numpy()
    rating = np.zeros((u.max() + 1, i.max() + 1), np.int64)
    ts = np.zeros_like(rating)
    rating[u, i] = frame["rating"].to_numpy()
    ts[u, i] = frame["ts"].to_numpy()
    return rating, ts


def test_history_is_strictly_earlier_clicks_and_windows_are_aligned_unclicks(raw_ml100k, raw_seq):
    f, s = raw_ml100k, raw_seq
    rating, ts = _raw_lookup(f)
    user, t_target = f["user"].to_numpy(), f["ts"].to_numpy()
    n = len(f)
    # padding <=> mask, for both sequences
    for name in ("click", "unclick"):
        assert np.array_equal(s[f"{name}_ids"] == 0, s[f"{name}_mask"] == 0)
        assert set(np.unique(s[f"{name}_mask"])) <= {0, 1}
    cm = s["click_mask"].astype(bool)
    um = s["unclick_mask"].astype(bool)
    assert cm.sum(1).mean() > 10 and um.sum((1, 2)).mean() > 50  # the audit is not vacuous
    # every history member is the user's own rating, with the stored time, strictly before the target
    cu = np.broadcast_to(user[:, None], cm.shape)
    assert np.array_equal(ts[cu[cm], s["click_ids"][cm]], s["click_ts"][cm])
    assert (rating[cu[cm], s["click_ids"][cm]] >= 4).all()
    assert (s["click_ts"][cm] < np.broadcast_to(t_target[:, None], cm.shape)[cm]).all()
    uu = np.broadcast_to(user[:, None, None], um.shape)
    assert np.array_equal(ts[uu[um], s["unclick_ids"][um]], s["unclick_ts"][um])
    assert (rating[uu[um], s["unclick_ids"][um]] <= 3).all()
    assert (s["unclick_ts"][um] < np.broadcast_to(t_target[:, None, None], um.shape)[um]).all()
    # windows: slots 0..R-1 before their click, R..2R-1 after it; no window on a padded click
    click_ts = s["click_ts"][:, :, None]
    before, after = um[:, :, :5], um[:, :, 5:]
    assert (s["unclick_ts"][:, :, :5][before] <= np.broadcast_to(click_ts, before.shape)[before]).all()
    assert (s["unclick_ts"][:, :, 5:][after] >= np.broadcast_to(click_ts, after.shape)[after]).all()
    assert not um[~cm].any()
    # history is oldest → newest and left-padded
    assert (np.diff(np.where(cm, s["click_ts"], 0), axis=1) >= 0).all()
    assert n == 100_000


def test_history_matches_a_brute_force_reference_on_a_sample(raw_ml100k, raw_seq):
    f = raw_ml100k.reset_index(drop=True)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(f), 120, replace=False)
    by_user = {u: g for u, g in f.assign(row=np.arange(len(f))).groupby("user")}
    L, R = 30, 5
    for r in rows:
        u, t = f["user"][r], f["ts"][r]
        g = by_user[u].sort_values(["ts", "row"], kind="stable")
        log_ = list(zip(g["item"], g["ts"], g["rating"] >= 4))
        clicks = [k for k, (_, ts_, c) in enumerate(log_) if c and ts_ < t][-L:]
        want_c = [0] * (L - len(clicks)) + [log_[k][0] for k in clicks]
        assert raw_seq["click_ids"][r].tolist() == want_c, r
        for slot, k in enumerate(clicks):
            before = [x for x in range(k) if not log_[x][2]][-R:]
            after = [x for x in range(k + 1, len(log_)) if not log_[x][2]][:R]
            win = [0] * (R - len(before)) + [log_[x][0] for x in before]
            win += [log_[x][0] for x in after] + [0] * (R - len(after))
            win = [w if w and log_ts < t else 0 for w, log_ts in
                   zip(win, [0] * (R - len(before)) + [log_[x][1] for x in before] + [log_[x][1] for x in after]
                       + [0] * (R - len(after)))]
            got = raw_seq["unclick_ids"][r, L - len(clicks) + slot].tolist()
            assert got == win, (r, slot)


def test_tfrecords_round_trip_in_both_input_modes_and_temporal_split(raw_ml100k, seq_dir, seq_schema):
    s = seq_schema
    assert [q.name for q in s.sequences] == ["click", "unclick"]
    assert s.sequence("unclick").shape == (L_SMALL, 2 * R_SMALL)
    assert s.raw["sequences"][0]["kind"] == "sequence"
    feats, labels = load_arrays(s, "test", with_timestamps=True)
    assert feats["click_ids"].shape == (len(labels), L_SMALL) and feats["unclick_ts"].shape[1] == L_SMALL * 2 * R_SMALL
    # the in-memory path serves the same rows as the stream
    x_mem, _ = next(iter(make_dataset(s, "test", 64, shuffle=False, in_memory=True)))
    x_str, _ = next(iter(make_dataset(s, "test", 64, shuffle=False, in_memory=False)))
    assert set(x_mem) == set(x_str) and "click_ts" not in x_mem
    for k in x_mem:
        np.testing.assert_array_equal(x_mem[k].numpy(), x_str[k].numpy())
    # targets' raw time (from user/item through the vocabularies) is later than every history event
    vocab = {n: np.array(open(os.path.join(seq_dir, "vocab", f"{n}.txt")).read().split("\n")[:-1])
             for n in ("user_id", "item_id")}
    user = vocab["user_id"][feats["user_id"]].astype(int)
    item = vocab["item_id"][feats["item_id"]].astype(int)
    rating, ts = _raw_lookup(raw_ml100k)
    t = ts[user, item]
    assert (rating[user, item] >= 4).astype(np.float32).tolist() == labels.tolist()
    for name in ("click", "unclick"):
        m = feats[f"{name}_mask"].astype(bool)
        assert (feats[f"{name}_ts"][m] < np.broadcast_to(t[:, None], m.shape)[m]).all()
        ids = vocab["item_id"][feats[f"{name}_ids"][m]].astype(int)
        np.testing.assert_array_equal(ts[np.broadcast_to(user[:, None], m.shape)[m], ids], feats[f"{name}_ts"][m])
    # temporal split: every train rating precedes every test rating
    tr, _ = load_arrays(s, "train")
    t_train = ts[vocab["user_id"][tr["user_id"]].astype(int), vocab["item_id"][tr["item_id"]].astype(int)]
    assert t_train.max() <= t.min()


def test_list_encoder_matches_tf_example():
    ids = np.array([[0, 3, 300], [7, 0, 2 ** 40]], np.int64)
    rec = encode_list_examples([("a", np.array([5, 1 << 20])), ("seq", ids)], [("x", np.array([0.5, -2.0]))])
    spec = {"a": tf.io.FixedLenFeature([], tf.int64), "seq": tf.io.FixedLenFeature([3], tf.int64),
            "x": tf.io.FixedLenFeature([], tf.float32)}
    got = tf.io.parse_example([bytes(r) for r in rec], spec)
    np.testing.assert_array_equal(got["seq"].numpy(), ids)
    np.testing.assert_array_equal(got["a"].numpy(), [5, 1 << 20])
    np.testing.assert_array_equal(got["x"].numpy(), [0.5, -2.0])
    ex = tf.train.Example.FromString(bytes(rec[1]))
    assert list(ex.features.feature["seq"].int64_list.value) == ids[1].tolist()


def test_datasets_without_sequences_are_unchanged(synth_schema):
    cfg = synth_schema.to_config()
    assert "sequences" not in cfg and synth_schema.sequences == ()
    assert synth_schema.values_per_example == len(synth_schema.features) + 2
    spec = feature_spec(synth_schema)
    assert all(v.shape == [] for v in spec.values())
    with pytest.raises(ValueError, match="embed_with"):
        Schema.from_config({**cfg, "sequences": [{"name": "c", "kind": "sequence", "shape": [3],
                                                  "embed_with": "nope"}]})


# ----------------------------------------------------------------------------- layers


def test_projection_parallel_idempotent_and_zero_safe():
    rng = np.random.default_rng(1)
    u = rng.normal(size=(5, 7, 8)).astype(np.float32)
    c = rng.normal(size=(5, 7, 8)).astype(np.float32)
    c[0, 0] = 0.0
    p = keras.ops.convert_to_numpy(project_onto(u, c))
    want = (np.sum(u * c, -1, keepdims=True) / (np.sum(c * c, -1, keepdims=True) + 1e-12)) * c
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)
    cross = p[..., :, None] * c[..., None, :] - p[..., None, :] * c[..., :, None]  # p ∥ c ⇔ p∧c = 0
    assert np.abs(cross).max() < 1e-4
    assert np.abs(np.sum((u - p) * c, -1)).max() < 1e-4  # the residual is orthogonal to c
    np.testing.assert_allclose(keras.ops.convert_to_numpy(project_onto(p, c)), p, rtol=1e-4, atol=1e-5)
    assert np.all(p[0, 0] == 0) and np.isfinite(p).all()
    cz = tf.zeros([2, 8])
    uz = tf.constant(rng.normal(size=(2, 8)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(cz)
        y = tf.reduce_sum(project_onto(uz, cz))
    assert np.isfinite(tape.gradient(y, cz).numpy()).all()


def test_target_attention_matches_numpy():
    rng = np.random.default_rng(2)
    att = TargetAttention(units=(5,), activation="relu")
    q = rng.normal(size=(3, 4)).astype(np.float32)
    k = rng.normal(size=(3, 6, 4)).astype(np.float32)
    m = (rng.random((3, 6)) > 0.3).astype(np.float32)
    m[1] = 0.0  # all padded
    out = keras.ops.convert_to_numpy(att(q, k * m[..., None], m))
    w1, b1 = att.hidden[0].get_weights()
    w2, b2 = att.score.get_weights()
    qb = np.broadcast_to(q[:, None], k.shape)
    km = k * m[..., None]
    h = np.maximum(np.concatenate([qb, km, qb - km, qb * km], -1) @ w1 + b1, 0)
    s = (h @ w2 + b2)[..., 0]
    s = np.where(m > 0, s, -(2.0 ** 32) + 1)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.sum(w[..., None] * km, 1), rtol=1e-4, atol=1e-5)
    assert np.all(out[1] == 0)  # an all-padded sequence gives 0


def _seq_inputs(batch=6, L=4, W=4, vocab=20, seed=0):
    rng = np.random.default_rng(seed)
    e = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    cm = (rng.random((batch, L)) > 0.3).astype(np.float32)
    um = (rng.random((batch, L, W)) > 0.4).astype(np.float32) * cm[..., None]
    um[0, 0] = 0.0
    cm[0, 0] = 1.0
    return e(batch, 8), e(batch, L, 8), cm, e(batch, L, W, 8), um


@pytest.mark.parametrize("enhance", ["projection", "add"])
def test_control_only_the_click_parallel_part_of_the_unclicks_enhances_clicks(enhance):
    """TEM4CTR's projection keeps only the component of ū_j along c_j: moving ū_j orthogonally
    to c_j leaves c̃_j unchanged. Neutralising the projection (c̃ = c + ū) breaks that."""
    t, c, cm, u, um = _seq_inputs()
    layer = SequenceInterest(mode="tem4ctr", attention_units=(6,), enhance=enhance)
    layer(t, c, cm, u, um)
    c_tilde, u_bar = (keras.ops.convert_to_numpy(a) for a in layer.enhanced_clicks(c, cm, u, um))
    cmm = c * cm[..., None]
    np.testing.assert_allclose(c_tilde - cmm, project_onto(u_bar, cmm) if enhance == "projection" else u_bar,
                               atol=1e-5)
    rng = np.random.default_rng(3)
    z = rng.normal(size=u_bar.shape).astype(np.float32)
    ortho = z - keras.ops.convert_to_numpy(project_onto(z, cmm))
    shifted = cmm + keras.ops.convert_to_numpy(project_onto(u_bar + ortho, cmm)) if enhance == "projection" \
        else cmm + u_bar + ortho
    moved = np.abs(shifted - c_tilde).max()
    if enhance == "projection":
        assert moved < 1e-4
    else:
        assert moved > 1e-2


def test_control_alignment_each_click_uses_its_own_window():
    """Giving click j the window of another click changes TEM4CTR's output; DIN ignores windows."""
    t, c, cm, u, um = _seq_inputs(seed=4)
    cm[:] = 1.0
    um = np.maximum(um, 0)
    um[:, :, 0] = 1.0
    tem = SequenceInterest(mode="tem4ctr", attention_units=(6,))
    a = keras.ops.convert_to_numpy(tem(t, c, cm, u, um))
    rolled = keras.ops.convert_to_numpy(tem(t, c, cm, np.roll(u, 1, axis=1), np.roll(um, 1, axis=1)))
    assert np.abs(a - rolled).max() > 1e-6
    din = SequenceInterest(mode="din", attention_units=(6,))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(din(t, c, cm, u, um)),
                               keras.ops.convert_to_numpy(din(t, c, cm, np.roll(u, 1, axis=1), um)))


# ----------------------------------------------------------------------------- models


def _model_inputs(schema, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = {f.name: (rng.integers(0, f.vocab_size, batch) if f.kind == "categorical"
                  else rng.random(batch).astype(np.float32)) for f in schema.features}
    x["domain_id"] = np.arange(batch) % schema.num_domains
    for q in schema.sequences:
        mask = (rng.random((batch, q.length)) > 0.4).astype(np.int64)
        x[q.ids_key] = rng.integers(1, schema.feature(q.embed_with).vocab_size, (batch, q.length)) * mask
        x[q.mask_key] = mask
    return {k: np.asarray(v, np.float32 if v.dtype.kind == "f" else np.int64) for k, v in x.items()}


@pytest.mark.parametrize("name", ["din", "tem4ctr", "star_tem4ctr"])
def test_padded_ids_do_not_change_the_output_and_save_load(seq_schema, name, tmp_path):
    m = registry.get(name).build(seq_schema, embedding_dim=8, **({"attention_units": [8]} if name != "star_tem4ctr"
                                                                  else {}))
    m.build()
    x = _model_inputs(seq_schema)
    base = m.predict(x, verbose=0)
    rng = np.random.default_rng(5)
    y = dict(x)
    for q in seq_schema.sequences:
        pad = x[q.mask_key] == 0
        y[q.ids_key] = np.where(pad, rng.integers(1, 50, pad.shape), x[q.ids_key])
    np.testing.assert_allclose(m.predict(y, verbose=0), base, atol=1e-6)
    # a real id change does change it (the sequences are used)
    z = dict(x, click_ids=np.where(x["click_mask"] > 0, (x["click_ids"] % 50) + 1, 0))
    assert np.abs(m.predict(z, verbose=0) - base).max() > 1e-7
    path = str(tmp_path / "m.keras")
    m.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), base, atol=1e-6)


def test_export_parity_with_sequences(seq_schema, tmp_path):
    from mdr_tf.export import export_saved_model, serialize_examples

    m = registry.get("tem4ctr").build(seq_schema, embedding_dim=8, attention_units=[8])
    m.build()
    x = _model_inputs(seq_schema, batch=5, seed=7)
    want = m.predict(x, verbose=0).reshape(-1)
    sm = tf.saved_model.load(export_saved_model(m, str(tmp_path / "exp"), version=1))
    raw = sm.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})["probability"].numpy()
    ex = sm.signatures["serve_examples"](examples=tf.constant(serialize_examples(seq_schema, x)))["probability"]
    np.testing.assert_allclose(raw, want, atol=1e-6)
    np.testing.assert_allclose(ex.numpy(), want, atol=1e-6)


def test_tem4ctr_learns_on_ml100k_seq_through_the_fused_path(seq_schema):
    from mdr_tf import metrics, training

    m = registry.get("tem4ctr").build(seq_schema, embedding_dim=8, attention_units=[8], hidden_units=[16])
    m.build()
    cfg = training.TrainConfig(epochs=1, batch_size=512, seed=0, learning_rate=3e-3)
    dom = [2]  # one domain (28k rows) keeps the test short
    assert training._fused_input(seq_schema, cfg, dom) is not None  # the fused path takes sequences
    training.fit(m, seq_schema, cfg, domains=dom)
    assert "install_fused_train_function" in m.train_function.__qualname__  # it did run fused
    labels, probs, _ = training.predict_split(m, seq_schema, "test", domains=dom)
    auc = metrics.auc(labels, probs)
    assert auc > 0.62, auc


@pytest.mark.parametrize("name", ["mlora", "hamur", "hierrec", "adasparse"])
def test_interest_is_an_extra_input_of_multi_domain_models(seq_schema, name):
    m = registry.get(name).build(seq_schema, interest={"mode": "din", "attention_units": [4]})
    m.build()
    x = _model_inputs(seq_schema, seed=2)
    base = m.predict(x, verbose=0)
    z = dict(x, click_ids=np.where(x["click_mask"] > 0, (x["click_ids"] % 50) + 1, 0))
    assert np.abs(m.predict(z, verbose=0) - base).max() > 1e-7  # the interest reaches the output
    assert m.context_dims["interest"] == m.embedding_dim


def test_models_that_cannot_use_the_interest_say_so(seq_schema, synth_schema):
    with pytest.raises(ValueError, match="M2M does not take a sequence interest"):
        registry.get("m2m").build(seq_schema, interest={"mode": "din"})
    with pytest.raises(ValueError, match="no sequence 'click'"):
        registry.get("dnn").build(synth_schema, interest={"mode": "din"})


def test_writer_rejects_padding_that_disagrees_with_the_mask(tmp_path):
    from data_prep.common import DataError, FeatureDef
    from data_prep.sequences import write_sequence_dataset

    ids = np.array([[0, 4], [3, 5]])
    with pytest.raises(DataError, match="sequence 'click'.*padding"):
        write_sequence_dataset(
            str(tmp_path / "bad"), dataset="t", features=[FeatureDef("item_id", "categorical", vocab_size=9)],
            columns={"item_id": np.array([1, 2])},
            sequences=[{"name": "click", "shape": [2], "embed_with": "item_id"}],
            seq_columns={"click_ids": ids, "click_mask": np.ones_like(ids)}, domain=np.array([0, 0]),
            domain_names=["a"], labels={"label": np.array([0.0, 1.0], np.float32)}, split=np.array([0, 2]),
            vocabs={}, fp="x", metadata={})
    assert not (tmp_path / "bad").exists()
