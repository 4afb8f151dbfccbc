"""Embedding assignment policies and the prequential stream (AutoAssign+, reconstructed; docs/models/autoassign.md)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mdr_tf import registry
from mdr_tf.layers.assignment import EmbeddingAssignment
from mdr_tf.streaming import (StreamCounter, apply_decisions, chunk_index, make_train_step, reset_allocation,
                              run_stream)

SCHEMA = {"features": [
    {"name": "user_id", "kind": "categorical", "vocab_size": 301, "group": "user", "is_id": True},
    {"name": "item_id", "kind": "categorical", "vocab_size": 121, "group": "item", "is_id": True},
    {"name": "genre", "kind": "categorical", "vocab_size": 5, "group": "item"},
    {"name": "x", "kind": "dense", "group": "domain"}], "num_domains": 2}


def _stream(n=800, seed=0, users=300, items=120):
    """Time-ordered synthetic events: users arrive over time, item effects drive labels."""
    rng = np.random.default_rng(seed)
    u = np.sort(rng.integers(1, users + 1, n))  # later users arrive later: cold ids every chunk
    it = rng.integers(1, items + 1, n)
    item_eff = rng.normal(0, 1.5, items + 1)
    y = (rng.random(n) < 1 / (1 + np.exp(-item_eff[it]))).astype(np.float32)
    feats = {"user_id": u.astype(np.int64), "item_id": it.astype(np.int64), "genre": (it % 5).astype(np.int64),
             "x": rng.random(n).astype(np.float32), "domain_id": (u % 2).astype(np.int64)}
    return feats, y


def _model(assignment=None, seed=0):
    keras.utils.set_random_seed(seed)
    m = registry.get("dnn").build(SCHEMA, hidden_units=[8], embedding_dim=4, embedding_assignment=assignment)
    m.build()
    return m


def test_counters_use_only_events_before_the_chunk():
    feats, y = _stream()
    chunks = chunk_index(len(y), 5)
    m = _model({"policy": "threshold", "threshold": 2, "fields": ["user_id", "item_id"]})
    layer = m.embedding.assignment
    seen = []

    def check(t, model, counter):
        past = chunks < t
        for k, f in enumerate(layer.fields):
            want = np.bincount(feats[f][past], minlength=layer.vocab[k])
            np.testing.assert_array_equal(layer.count[k].numpy(), want)
            np.testing.assert_array_equal(counter.counts[counter.fields.index(f)], want)
            # threshold policy: own row iff >= 2 events before the chunk
            np.testing.assert_array_equal(layer.kept[k].numpy(), (want >= 2).astype(np.float32))
            last = np.full(layer.vocab[k], -1)
            for c in range(t):
                last[feats[f][chunks == c]] = c
            np.testing.assert_array_equal(layer.last[k].numpy(), last)
        # the chunk's own events are not counted (control: counting them would differ)
        cur = np.bincount(feats["user_id"][chunks <= t], minlength=layer.vocab[0])
        assert not np.array_equal(layer.count[0].numpy(), cur)
        seen.append(t)

    res = run_stream(m, feats, y, chunks, on_test=check)
    assert seen == [0, 1, 2, 3, 4]
    # cold slice: user or item with < 5 events before the chunk
    for rec in res["chunks"]:
        t = rec["chunk"]
        cu = np.bincount(feats["user_id"][chunks < t], minlength=301)
        ci = np.bincount(feats["item_id"][chunks < t], minlength=121)
        now = chunks == t
        assert rec["cold_n"] == int(((cu[feats["user_id"][now]] < 5) | (ci[feats["item_id"][now]] < 5)).sum())
    with pytest.raises(ValueError, match="after chunk"):
        c = StreamCounter(["user_id"], [301])
        c.update(2, {"user_id": np.array([1])})
        c.update(1, {"user_id": np.array([1])})


def test_always_keep_without_actor_equals_full_bit_exactly():
    feats, y = _stream(n=600)
    chunks = chunk_index(len(y), 3)
    full = _model(None)
    res_full = run_stream(full, feats, y, chunks, batch_size=64)
    keep = _model({"policy": "autoassign", "keep_all": True})
    res_keep = run_stream(keep, feats, y, chunks, batch_size=64, agent_kwargs={"memory_weight": 0.0})
    np.testing.assert_array_equal(res_full["prob"], res_keep["prob"])
    np.testing.assert_array_equal(full.embedding.table.numpy(), keep.embedding.table.numpy())
    assert [r["rows"] for r in res_full["chunks"]] == [r["rows_full"] for r in res_keep["chunks"]]
    # control: the same model with the users outside the kept set (they read the shared pool)
    ctl = _model({"policy": "autoassign", "keep_all": True})
    ctl.embedding.assignment.kept[0].assign(np.zeros(301, np.float32))
    res_ctl = run_stream(ctl, feats, y, chunks, batch_size=64)
    assert not np.array_equal(res_full["prob"], res_ctl["prob"])


def _set_counts(layer, feats, upto):
    counts = [np.bincount(feats[f][:upto], minlength=v) for f, v in zip(layer.fields, layer.vocab)]
    last = [np.where(c > 0, 0, -1) for c in counts]
    layer.set_counters(counts, last, 1)


def test_promoted_row_starts_at_its_mixture_and_weights_sum_to_one():
    feats, y = _stream()
    m = _model({"policy": "autoassign", "fields": ["user_id", "item_id"]})
    layer, emb = m.embedding.assignment, m.embedding
    reset_allocation(emb)
    _set_counts(layer, feats, 300)
    x = {k: v[:64] for k, v in feats.items()}
    before = np.asarray(m(x, training=True))
    admit = np.unique(feats["item_id"][:64])
    start, _ = emb.table_rows("item_id")
    own = tf.gather(emb.table, start + admit)
    mix_before, beta = layer.mixture(1, tf.constant(admit, tf.int32), own, training=True)
    np.testing.assert_allclose(np.sum(beta, axis=1), 1.0, rtol=1e-6)
    init = apply_decisions(emb, 1, admit, np.array([], np.int64))
    np.testing.assert_array_equal(init, np.asarray(mix_before))
    np.testing.assert_array_equal(emb.table.numpy()[start + admit], np.asarray(mix_before))
    assert np.all(layer.kept[1].numpy()[admit] == 1.0)
    # the promoted ids' representation (now their own row) is what they had before promotion
    np.testing.assert_allclose(np.asarray(m(x, training=True)), before, rtol=1e-5, atol=1e-6)
    # serving with argmax: one-hot weights
    layer.serve = "argmax"
    _, b = layer.mixture(0, tf.constant(feats["user_id"][:64].astype(np.int32)), tf.zeros([64, 4]), training=False)
    np.testing.assert_array_equal(np.sum(b, 1), 1.0)
    assert set(np.unique(np.asarray(b))) <= {0.0, 1.0}


def test_mixture_is_what_unkept_ids_read_control():
    """Control of the mechanism: ids outside the kept set read the shared pool, not their row."""
    feats, _ = _stream()
    m = _model({"policy": "autoassign", "fields": ["item_id"]})
    layer, emb = m.embedding.assignment, m.embedding
    reset_allocation(emb)
    _set_counts(layer, feats, 300)
    apply_decisions(emb, 0, np.arange(1, 61), np.array([], np.int64))  # items 1..60 kept
    x = {k: v[:200] for k, v in feats.items()}
    kept = x["item_id"] <= 60
    base = np.asarray(m(x, training=False)).reshape(-1)
    start, end = emb.table_rows("item_id")
    tab = emb.table.numpy()
    tab2 = tab.copy()
    tab2[start + 61:end] += 5.0  # rows of unkept ids: never read
    emb.table.assign(tab2)
    np.testing.assert_array_equal(np.asarray(m(x, training=False)).reshape(-1), base)
    emb.table.assign(tab)
    layer.pool.assign(layer.pool.numpy() + 5.0)  # the shared pool: read by unkept ids only
    moved = np.asarray(m(x, training=False)).reshape(-1)
    np.testing.assert_array_equal(moved[kept], base[kept])
    assert np.all(np.abs(moved[~kept] - base[~kept]) > 1e-6)


def test_memory_accounting_equals_rows_allocated():
    feats, y = _stream()
    m = _model({"policy": "autoassign", "fields": ["user_id", "item_id"], "pool_size": 3})
    layer, emb = m.embedding.assignment, m.embedding
    opt = keras.optimizers.Adam(1e-2)
    step = make_train_step(m, opt)
    reset_allocation(emb)
    assert layer.rows_held() == 2 * 3
    rng = np.random.default_rng(0)
    for r in range(4):
        _set_counts(layer, feats, 200 * (r + 1))
        for k, f in enumerate(layer.fields):
            kept = np.flatnonzero(layer.kept[k].numpy() > 0.5)
            cand = np.arange(1, layer.vocab[k])
            admit = rng.choice(np.setdiff1d(cand, kept), 25, replace=False)
            evict = rng.choice(kept, min(10, len(kept)), replace=False) if len(kept) else np.array([], np.int64)
            apply_decisions(emb, k, admit, evict, opt)
        for s in range(3):  # Adam steps in between: freed rows must stay free
            b = rng.integers(0, len(y), 64)
            step({k: tf.constant(v[b]) for k, v in feats.items()}, tf.constant(y[b][:, None]))
        allocated = 0
        for k, f in enumerate(layer.fields):
            start, end = emb.table_rows(f)
            nonzero = np.any(emb.table.numpy()[start:end] != 0, axis=1)
            np.testing.assert_array_equal(nonzero, layer.kept[k].numpy() > 0.5)
            allocated += int(nonzero.sum())
        assert layer.rows_held() == allocated + 2 * 3
    assert layer.rows_held() == 2 * 3 + 2 * (4 * 25 - 3 * 10)  # 4 rounds of 25 admissions, 3 of 10 evictions


def test_threshold_and_hash_policies_and_memory():
    feats, y = _stream()
    chunks = chunk_index(len(y), 4)
    th = _model({"policy": "threshold", "threshold": 3, "fields": ["user_id", "item_id"]})
    res = run_stream(th, feats, y, chunks)
    counts = [np.bincount(feats[f], minlength=v) for f, v in (("user_id", 301), ("item_id", 121))]
    assert res["chunks"][-1]["rows"] == sum(int((c >= 3).sum()) for c in counts) + 2
    hs = _model({"policy": "hash", "hash_buckets": 0.5, "fields": ["user_id", "item_id"]})
    layer = hs.embedding.assignment
    rows = np.asarray(layer.remap(tf.constant(np.stack([feats["user_id"][:50], feats["item_id"][:50],
                                                        feats["genre"][:50], feats["domain_id"][:50]], 1),
                                              tf.int32)))
    assert rows[:, 0].max() <= 150 and rows[:, 1].max() <= 60 and rows[:, 0].min() >= 1
    np.testing.assert_array_equal(rows[:, 2], feats["genre"][:50])  # unmanaged fields untouched
    res = run_stream(hs, feats, y, chunks)
    b = layer.bucket[0].numpy()[np.unique(feats["user_id"])]
    b2 = layer.bucket[1].numpy()[np.unique(feats["item_id"])]
    assert res["chunks"][-1]["rows"] == len(np.unique(b)) + len(np.unique(b2)) < 150 + 60
    with pytest.raises(ValueError, match="not categorical features"):
        EmbeddingAssignment(SCHEMA, policy="hash", fields=["zipcode"])


def test_long_runs_of_unseen_ids_stay_finite():
    n, k = 800, 16
    rng = np.random.default_rng(1)
    feats = {"user_id": np.arange(1, n + 1, dtype=np.int64) % 300 + 1,  # every chunk brings new users
             "item_id": np.arange(n, dtype=np.int64) % 120 + 1, "genre": rng.integers(0, 5, n),
             "x": rng.random(n).astype(np.float32), "domain_id": rng.integers(0, 2, n)}
    feats["user_id"] = np.minimum(feats["user_id"], 300)
    y = (rng.random(n) < 0.3).astype(np.float32)
    m = _model({"policy": "autoassign"})
    res = run_stream(m, feats, y, chunk_index(n, k), batch_size=32,
                     agent_kwargs={"warmup_chunks": 1, "epsilon": 0.3, "memory_weight": 1.0,
                                   "actor_learning_rate": 1e-3, "critic_steps": 30, "actor_steps": 30,
                                   "reward_chunks": 2})
    assert np.all(np.isfinite(res["prob"]))
    assert np.all(np.isfinite(m.embedding.table.numpy()))
    assert all(np.isfinite(w.numpy()).all() for w in m.embedding.assignment.weights)
    assert all(np.isfinite(r["critic_mse"]) for r in res["chunks"][2:])  # first rewards complete at chunk 2
    # memory term: with a large weight the agent frees rows after warm-up
    assert res["chunks"][-1]["rows"] < res["chunks"][-1]["rows_full"]


def test_model_config_round_trip_keeps_the_policy(tmp_path):
    m = _model({"policy": "autoassign", "fields": ["item_id"], "pool_size": 4})
    feats, _ = _stream(n=32)
    m.embedding.assignment.kept[0].assign(np.ones(121, np.float32))
    path = str(tmp_path / "m.keras")
    m.save(path)
    m2 = keras.models.load_model(path)
    assert m2.embedding.assignment.pool_size == 4
    np.testing.assert_array_equal(np.asarray(m(feats)), np.asarray(m2(feats)))
