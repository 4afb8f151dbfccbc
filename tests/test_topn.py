"""Top-N path: BPR sampler rules, HR/NDCG, export parity, the runner, and learning on real ML-100k."""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from data_prep.multibehavior import MultiBehaviorData
from mdr_tf import topn
from mdr_tf.models.graph import CIGF, LightGCN, MFBPR


def _toy_data(num_users: int = 30, num_items: int = 40, seed: int = 0) -> MultiBehaviorData:
    """Nested random behaviours; users 0-1 have no target positives, user 2 no positives at all."""
    rng = np.random.default_rng(seed)
    rated = rng.random((num_users, num_items)) < 0.4
    liked = rated & (rng.random(rated.shape) < 0.5)
    loved = liked & (rng.random(rated.shape) < 0.5)
    loved[:2] = False
    rated[2] = liked[2] = loved[2] = False
    edges = [np.nonzero(m) for m in (rated, liked, loved)]
    test_users = np.arange(3, num_users)
    test_items = np.array([np.flatnonzero(~loved[u])[0] for u in test_users])
    negs = np.stack([rng.choice(np.setdiff1d(np.flatnonzero(~loved[u]), [ti]), 9, replace=False)
                     for u, ti in zip(test_users, test_items)])
    valid_items = np.array([np.flatnonzero(~loved[u])[1] for u in test_users])
    vnegs = np.stack([rng.choice(np.setdiff1d(np.flatnonzero(~loved[u]), [ti, vi]), 9, replace=False)
                      for u, ti, vi in zip(test_users, test_items, valid_items)])
    return MultiBehaviorData(num_users, num_items, ("rated", "liked", "loved"), tuple(e[0] for e in edges),
                             tuple(e[1] for e in edges), test_users, test_items, negs,
                             np.arange(num_users) % 2, ("a", "b"), {"fingerprint": "toy"},
                             valid_users=test_users, valid_items=valid_items, valid_negatives=vnegs)


def test_sampler_rules():
    d = _toy_data()
    s = topn.BPRSampler(d.train_users[2], d.train_items[2], d.num_users, d.num_items, 5, np.random.default_rng(0))
    batch = np.arange(10)
    u, p, n = s.sample(batch)
    loved = set(zip(d.train_users[2].tolist(), d.train_items[2].tolist()))
    assert not ({0, 1, 2} & set(u.tolist()))  # users without positives add no pairs
    counts = np.bincount(u, minlength=10)
    np.testing.assert_array_equal(counts, np.minimum(5, s.degree(batch)))
    assert all((a, b) in loved for a, b in zip(u.tolist(), p.tolist()))
    assert not any((a, b) in loved for a, b in zip(u.tolist(), n.tolist()))
    u0, p0, n0 = s.sample(np.array([0, 1, 2]))
    assert len(u0) == len(p0) == len(n0) == 0
    empty = tf.zeros([0])
    assert float(topn.bpr_loss(empty, empty)) == 0.0  # an empty batch gives 0, not NaN
    np.testing.assert_allclose(float(topn.bpr_loss(tf.constant([2.0, 0.0]), tf.constant([1.0, 0.0]))),
                               np.mean(np.log1p(np.exp([-1.0, 0.0]))), rtol=1e-6)


def test_train_step_with_an_empty_task_is_finite():
    d = _toy_data()
    keras.utils.set_random_seed(0)
    model = CIGF(d.num_users, d.num_items, 3, embedding_dim=4)
    adjs = topn.graph_inputs(model, d)
    step = topn.make_train_step(model, adjs, keras.optimizers.Adam(1e-3))
    s = topn.BPRSampler(d.train_users[0], d.train_items[0], d.num_users, d.num_items, 5, np.random.default_rng(0))
    flat = [tf.constant(a, tf.int64) for a in s.sample(np.array([3, 4]))] * 2
    flat += [tf.zeros([0], tf.int64)] * 3  # no target pairs in this batch
    loss, bpr = step(*flat)
    assert np.isfinite(float(loss)) and np.isfinite(float(bpr))
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_rank_metrics_by_hand_and_random_scorer():
    pos = np.array([5.0, 1.0, 3.0])
    neg = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [3.0, 4.0, 0.0]])  # ranks 0, 3, 2 (the tie counts against)
    m = topn.rank_metrics(pos, neg, k=3)
    np.testing.assert_array_equal(m["rank"], [0, 3, 2])
    np.testing.assert_array_equal(m["hr"], [1, 0, 1])
    np.testing.assert_allclose(m["ndcg"], [1.0, 0.0, 1 / np.log2(4)])
    rng = np.random.default_rng(0)
    r = topn.rank_metrics(rng.random(20000), rng.random((20000, 99)), k=10)
    assert abs(r["hr"].mean() - 0.10) < 0.01  # 10 of 100 candidates
    assert (r["ndcg"] <= r["hr"]).all() and 0.03 < r["ndcg"].mean() < r["hr"].mean()


def test_models_keras_roundtrip(tmp_path):
    d = _toy_data()
    keras.utils.set_random_seed(0)
    x = {"user": tf.constant([3, 4, 5], tf.int64), "item": tf.constant([0, 1, 2], tf.int64)}
    for cls, kw in ((CIGF, {"num_layers": 3}), (CIGF, {"target_only": True}), (LightGCN, {}), (MFBPR, {})):
        model = cls(d.num_users, d.num_items, 3, embedding_dim=4, **kw)
        model.set_graph(topn.graph_inputs(model, d))
        ref = model(x).numpy()
        json.dumps(model.get_config())
        path = str(tmp_path / f"{cls.__name__}.keras")
        model.save(path)
        loaded = keras.models.load_model(path)  # registered: no custom_objects
        assert type(loaded) is cls
        loaded.set_graph(topn.graph_inputs(loaded, d))
        np.testing.assert_allclose(loaded(x).numpy(), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="set_graph"):
        CIGF(d.num_users, d.num_items, 3, embedding_dim=4)(x)
    # LightGCN: Z = mean of E, ÂE, Â²E with the symmetric normalisation.
    lg = LightGCN(d.num_users, d.num_items, 3, embedding_dim=4, num_layers=2)
    adj = topn.graph_inputs(lg, d)
    dense = tf.sparse.to_dense(adj[0].sparse).numpy()
    e = np.concatenate([lg.user_embedding.numpy(), lg.item_embedding.numpy()])
    np.testing.assert_allclose(lg.propagate(adj)[0].numpy(), (e + dense @ e + dense @ dense @ e) / 3,
                               rtol=1e-5, atol=1e-6)


def test_export_parity(tmp_path):
    d = _toy_data()
    cfg = topn.TopNConfig(epochs=2, batch_users=8, samples_per_user=5, seed=0)
    row, model = topn.run_trial("cigf", d, cfg, {"embedding_dim": 4}, return_model=True)
    path = topn.export_topn(model, str(tmp_path / "cigf"))
    users = np.repeat(d.test_users, 3).astype(np.int64)
    items = np.tile([0, 5, 39], len(d.test_users)).astype(np.int64)
    want = topn.model_scorer(model, model._graph)(users, items)
    loaded = tf.saved_model.load(os.path.join(path, "saved_model"))
    got = loaded.signatures["serving_default"](user=tf.constant(users), item=tf.constant(items))["score"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    z = np.load(os.path.join(path, "embeddings.npz"))
    assert z["user"].shape == (3, d.num_users, 4) and z["item"].shape == (3, d.num_items, 4)
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](user=tf.constant([d.num_users], tf.int64), item=tf.constant([0], tf.int64))
    # LightGCN: the exported embeddings alone reproduce the score (inner product).
    _, lg = topn.run_trial("lightgcn", d, cfg, {"embedding_dim": 4}, return_model=True)
    z = np.load(os.path.join(topn.export_topn(lg, str(tmp_path / "lg")), "embeddings.npz"))
    np.testing.assert_allclose((z["user"][0][users] * z["item"][0][items]).sum(-1),
                               topn.model_scorer(lg, lg._graph)(users, items), rtol=1e-5, atol=1e-6)


def test_early_stopping_keeps_the_best_validation_weights(monkeypatch):
    """Scripted validation scores: the model returns with the weights of the best evaluation,
    stops after ``patience`` evaluations without improvement, and never reads the test split."""
    d = _toy_data()
    keras.utils.set_random_seed(0)
    model = MFBPR(d.num_users, d.num_items, 3, embedding_dim=4)
    scripted = iter([0.1, 0.5, 0.3, 0.2, 0.9])  # best at the 2nd evaluation (epoch 4), then 2 worse: stop
    snapshots = []
    real = topn.evaluate_scorer

    def fake(score_fn, data, k=10, split="test"):
        assert split == "valid"  # training never evaluates the test split
        snapshots.append([v.numpy().copy() for v in model.weights])
        out = real(score_fn, data, k, split)
        out["valid_ndcg10"] = next(scripted)
        return out

    monkeypatch.setattr(topn, "evaluate_scorer", fake)
    cfg = topn.TopNConfig(epochs=20, batch_users=8, samples_per_user=5, learning_rate=0.05, seed=0,
                          eval_every=2, patience=2)
    info = topn.train(model, d, cfg)
    assert info["best_epoch"] == 4 and info["epochs_run"] == 8 and info["valid_ndcg10"] == 0.5
    assert [c[0] for c in info["valid_curve"]] == [2, 4, 6, 8]
    for v, w in zip(model.weights, snapshots[1]):
        np.testing.assert_array_equal(v.numpy(), w)  # the best evaluation's weights, restored
    assert not np.array_equal(snapshots[1][0], snapshots[3][0])  # (training did move them afterwards)
    monkeypatch.setattr(topn, "evaluate_scorer", real)
    with pytest.raises(ValueError, match="validation pairs"):
        topn.train(model, dataclasses.replace(d, valid_users=d.valid_users[:0]), cfg)


def test_runner_chooses_the_learning_rate_on_validation(tmp_path, monkeypatch):
    from experiments import topn as runner

    d = _toy_data()
    monkeypatch.setattr(runner, "prepare_dataset", lambda *a, **k: "toy")
    monkeypatch.setattr("data_prep.multibehavior.load", lambda path: d)
    out = str(tmp_path / "res")
    kw = dict(models=["mf_bpr", "random"], trials=2, lr_grid=[1e-3, 0.05], output_dir=out, log=lambda *a: None,
              train_kwargs={"epochs": 4, "batch_users": 16, "eval_every": 2, "patience": 1})
    res = runner.run(**kw)
    rows = [json.loads(x) for x in open(os.path.join(out, "trials.jsonl"))]
    assert len(rows) == 2 + 1 + 2  # two selection trials (one reused as trial 0), trial 1, random × 2
    sel = {r["learning_rate"]: r for r in rows if r["model"] == "mf_bpr" and r["seed"] == 0}
    chosen = max(sel, key=lambda lr: sel[lr]["valid_ndcg10"])
    mf = [r for r in res["rows"] if r["model"] == "mf_bpr"]
    assert len(mf) == 2 and all(r["learning_rate"] == chosen for r in mf)
    assert "chosen" in open(os.path.join(out, "lr_selection.md")).read()
    assert json.load(open(os.path.join(out, "run_meta.json")))["lr_selection"]["mf_bpr"]["chosen"] == chosen
    assert "val NDCG@10" in open(os.path.join(out, "table.md")).read()
    seen = []
    runner.run(**{**kw, "log": seen.append})  # resumes: nothing retrained
    assert sum("already done" in s for s in seen) == 6  # 2 selection, 2 mf_bpr (trial 0 = a selection), 2 random


def test_runner_resumes_and_writes_tables(tmp_path, monkeypatch):
    from experiments import topn as runner

    d = _toy_data()
    monkeypatch.setattr(runner, "prepare_dataset", lambda *a, **k: "toy")
    monkeypatch.setattr("data_prep.multibehavior.load", lambda path: d)
    out = str(tmp_path / "res")
    kw = dict(models=["mf_bpr", "random"], trials=2, train_kwargs={"epochs": 2, "batch_users": 16},
              output_dir=out, export_dir=str(tmp_path / "exp"), log=lambda *a: None)
    res = runner.run(**kw)
    assert [s["model"] for s in res["summary"]] == ["mf_bpr", "random"]
    md = open(os.path.join(out, "table.md")).read()
    assert "HR@10" in md and "NDCG@10" in md and "HR@10 d1 (b)" in md
    header = open(os.path.join(out, "table.csv")).readline()
    assert "test_hr10_mean" in header and "test_ndcg10_d0_std" in header
    rows = [json.loads(x) for x in open(os.path.join(out, "trials.jsonl"))]
    assert len(rows) == 4 and all(0 <= r["test_ndcg10"] <= r["test_hr10"] <= 1 for r in rows)
    assert json.load(open(os.path.join(out, "run_meta.json")))["trials"] == 2
    assert os.path.exists(tmp_path / "exp" / "mf_bpr" / "saved_model" / "saved_model.pb")
    seen = []
    runner.run(**{**kw, "log": seen.append})  # resumes: nothing retrained
    assert sum("already done" in s for s in seen) == 4
    with pytest.raises(ValueError, match="unknown top-N model"):
        runner.run(**{**kw, "models": ["nope"]})


@pytest.fixture(scope="module")
def ml100k_mb(tmp_path_factory):
    from data_prep import multibehavior

    base = os.environ.get("MDR_TF_DATA") or str(tmp_path_factory.mktemp("data"))
    out = os.path.join(base, "ml100k_multibehavior")
    multibehavior.prepare(out)
    return multibehavior.load(out)


def test_real_data_cigf_uses_the_auxiliary_behaviours(ml100k_mb):
    """CIGF beats popularity; without the auxiliary behaviours (``cigf_target_only``) most of
    its gain is gone: the control of the multi-behaviour mechanism. LightGCN beats random."""
    d = ml100k_mb
    cfg = topn.TopNConfig(epochs=20, learning_rate=5e-3, seed=0)  # 20 epochs: HR about 0.64 / 0.54 / 0.50
    cigf = topn.run_trial("cigf", d, cfg)
    neutral = topn.run_trial("cigf_target_only", d, cfg)
    pop = topn.evaluate_scorer(topn.trivial_scorer("popularity", d), d)
    rnd = topn.evaluate_scorer(topn.trivial_scorer("random", d), d)
    lg = topn.run_trial("lightgcn", d, cfg)
    assert cigf["test_hr10"] > pop["test_hr10"] + 0.05 and cigf["test_ndcg10"] > pop["test_ndcg10"] + 0.03
    assert cigf["test_hr10"] > neutral["test_hr10"] + 0.05
    assert lg["test_hr10"] > rnd["test_hr10"] + 0.2
    assert abs(rnd["test_hr10"] - 0.10) < 0.04 and rnd["test_ndcg10"] <= rnd["test_hr10"]


def test_real_data_graphs_nested_and_without_test_pairs(ml100k_mb):
    from mdr_tf.layers.graph import bipartite_adjacency

    d = ml100k_mb
    a = [tf.sparse.to_dense(bipartite_adjacency(d.train_users[k], d.train_items[k], d.num_users, d.num_items,
                                                "none")).numpy() for k in range(3)]
    assert (a[2] <= a[1]).all() and (a[1] <= a[0]).all()  # loved <= liked <= rated, elementwise
    for k in range(3):
        assert not a[k][d.test_users, d.num_users + d.test_items].any()  # the test pair is in no train graph
        assert not a[k][d.valid_users, d.num_users + d.valid_items].any()  # nor the validation pair


def test_ctr_runner_points_to_the_topn_runner():
    from experiments import run as ctr_runner

    with pytest.raises(ValueError, match="python -m experiments.topn"):
        ctr_runner.run(dataset="ml100k_multibehavior", log=lambda *a: None)
