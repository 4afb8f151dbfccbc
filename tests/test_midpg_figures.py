"""MI-DPG figures (experiments/midpg_figures.py): sweep log / resume, APG matching, matrices, plots."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from experiments import midpg_figures as mf
from experiments import tsne  # the exact t-SNE and cluster scores moved there
from mdr_tf import training
from mdr_tf.models.midpg import build_midpg
from tests.helpers import random_inputs

TINY = {"embedding_dim": 4, "hidden_units": [8, 4]}
TRAIN = {"epochs": 1, "batch_size": 256, "steps_per_execution": 4, "jit_compile": False}


def _run(synth_dir, out, **kw):
    args = dict(dataset="synthetic", data_path=synth_dir, output_dir=str(out), variants=["non", "r"],
                sizes=[(2, 2, 1)], trials=1, train_kwargs=TRAIN, common=TINY, tsne_size=(2, 2, 1),
                mir_weight=0.5, tsne_per_scenario=20, perplexity=5.0, tsne_iters=250, log=lambda m: None)
    args.update(kw)
    return mf.run(**args)


def test_end_to_end_writes_figures_and_rerun_trains_nothing(synth_dir, tmp_path, monkeypatch):
    calls = []
    real = training.run_trial
    monkeypatch.setattr(training, "run_trial", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    out = _run(synth_dir, tmp_path / "res")
    # non (size-independent), r@2x2x1, apg@2x2x1, then MI-DPG and DPG for the t-SNE.
    assert calls == ["dpg", "dpg", "apg", "midpg", "dpg"]
    for f in ("fig2_lowrank.png", "tsne_dwm.png", "similarity_heatmap.png"):
        path = tmp_path / "res" / f
        assert path.stat().st_size > 5000 and open(path, "rb").read(4) == b"\x89PNG"
    rows = [json.loads(line) for line in open(tmp_path / "res" / "sweep.jsonl")]
    assert sorted(r["label"] for r in rows) == ["apg@2x2x1", "non", "r@2x2x1"]
    assert len({r["key"] for r in rows}) == 3  # one distinct trial key per point
    apg = next(r for r in rows if r["variant"] == "apg")
    assert apg["apg_params"] == apg["params_trainable"] and apg["apg_matched_to"] == "dpg-r@2x2x1"
    labels = {(s["variant"], s["size"]) for s in out["sweep"]}
    assert labels == {("non", None), ("r", (2, 2, 1)), ("apg", (2, 2, 1))}
    stats = out["tsne"]["stats"]
    assert set(stats) == {"with MIR (λ1=0.5)", "without MIR (λ1=0)"}
    assert all(s["n"] == 60 and s["dims"] == [2, 2] for s in stats.values())
    assert "silhouette" in open(tmp_path / "res" / "summary.md").read()

    calls.clear()
    again = _run(synth_dir, tmp_path / "res")
    assert calls == []  # every sweep trial is logged, the t-SNE matrices are cached
    assert again["sweep"] == out["sweep"]
    # A line cut by a kill is ignored and its trial runs again; aggregate_only trains nothing.
    path = tmp_path / "res" / "sweep.jsonl"
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    _run(synth_dir, tmp_path / "res", aggregate_only=True)
    assert calls == []
    _run(synth_dir, tmp_path / "res", parts=["sweep"])
    assert len(calls) == 1
    _run(synth_dir, tmp_path / "res", parts=["sweep"])  # the rerun row was not glued to the cut line
    assert len(calls) == 1


def _fake_trainer(calls):
    return lambda name, schema, cfg, kwargs, **k: calls.append(name) or {
        "test_auc": 0.5 + 0.01 * len(calls), "test_mean_auc": 0.5, "params_trainable": 10,
        "params_generated_per_sample": 1}


def test_shards_split_points_and_aggregate(synth_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "run_trial", _fake_trainer(calls))
    kw = dict(parts=["sweep"], variants=["r", "c"], sizes=[(2, 2, 1), (4, 4, 2)], apg=False, trials=2)
    _run(synth_dir, tmp_path, shard=(0, 2), **kw)
    assert len(calls) == 4  # points 0 and 2 of 4, two trials each
    _run(synth_dir, tmp_path, shard=(1, 2), **kw)
    assert len(calls) == 8
    assert {"sweep-shard-0-of-2.jsonl", "sweep-shard-1-of-2.jsonl"} <= set(os.listdir(tmp_path))
    out = _run(synth_dir, tmp_path, aggregate_only=True, **kw)
    assert len(calls) == 8 and [s["trials"] for s in out["sweep"]] == [2, 2, 2, 2]
    assert (tmp_path / "fig2_lowrank.png").exists()


def test_points_with_identical_settings_train_once_and_both_stay(synth_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "run_trial", _fake_trainer(calls))
    monkeypatch.setattr(mf, "match_apg_rank", lambda schema, target, common, max_rank=1024: (3, 100))
    kw = dict(parts=["sweep"], variants=["r"], sizes=[(2, 2, 1), (4, 4, 2)])
    out = _run(synth_dir, tmp_path, **kw)
    assert calls == ["dpg", "apg", "dpg"]  # APG at 4x4x2 has the same rank: its result is reused
    apg = [s for s in out["sweep"] if s["variant"] == "apg"]
    assert [s["size"] for s in apg] == [(2, 2, 1), (4, 4, 2)] and apg[0]["mean"] == apg[1]["mean"]
    again = _run(synth_dir, tmp_path, aggregate_only=True, **kw)
    assert len(calls) == 3 and again["sweep"] == out["sweep"]


def test_apg_rank_is_the_closest_parameter_match(synth_schema):
    target = mf.count_parameters("dpg", synth_schema, {**TINY, "variant": "r", "a": 4, "b": 4, "k": 2})
    rank, count = mf.match_apg_rank(synth_schema, target, TINY, max_rank=64)
    counts = {r: mf.count_parameters("apg", synth_schema, mf.apg_kwargs(r, TINY)) for r in range(1, rank + 2)}
    assert rank > 1 and count == counts[rank]
    assert all(counts[r] < counts[r + 1] for r in range(1, rank + 1))  # increasing: ranks above only grow
    assert abs(count - target) == min(abs(c - target) for c in counts.values())
    # Tolerance: within half the gap to the next rank's count (the best an integer rank can do).
    assert abs(count - target) <= (counts[rank + 1] - counts[rank - 1]) / 2


@pytest.mark.parametrize("variant,a,b,k", [("r", 2, 2, 1), ("rc", 4, 2, 2), ("c", 2, 4, 1), ("non", 2, 2, 1)])
def test_weighting_matrices_shapes_and_forward_consistency(synth_schema, variant, a, b, k):
    m = build_midpg(synth_schema.to_config(), variant=variant, a=a, b=b, k=k, mir_weight=0.0, **TINY)
    m.build()
    x = random_inputs(synth_schema, 10)
    n_in = m.context_dims["all"]
    widths = [n_in] + TINY["hidden_units"]
    for layer in range(2):
        s = mf.weighting_matrices(m, x, layer=layer, batch_size=4)
        want = (widths[layer], widths[layer + 1]) if variant == "non" else (a, b)
        assert s.shape == (10, *want)
        full = mf.weighting_matrices(m, x, layer=layer, full=True)
        assert full.shape == (10, widths[layer], widths[layer + 1])
        if variant != "non":  # M tiles the small matrix: M[i, j] = S[i mod a, j mod b]
            np.testing.assert_allclose(full[:, :a, :b], s, rtol=1e-6)
    # The walk through the deep MLP reproduces the model's own deep part.
    ctx, h = mf.deep_forward(m, x)
    ref = m.deep(m.embedding(x)["all"], m.embedding(x), training=False)
    np.testing.assert_allclose(np.asarray(h), np.asarray(ref), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2 DWM layers"):
        mf.weighting_matrices(m, x, layer=2)


def test_similarity_diagonal_is_one_and_scores_separate_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    centres = np.array([[0.0] * 6, [10.0] * 6, [0.0, 10.0] * 3])
    x = centres[labels] + rng.normal(size=(120, 6))
    sims = mf.similarity_matrices(1.0 + 0.01 * x, labels, 3)
    for m in sims.values():
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
        np.testing.assert_allclose(m, m.T, atol=1e-12)
    assert tsne.silhouette(x, labels) > 0.7
    assert tsne.silhouette(rng.normal(size=(120, 6)), labels) < 0.1
    assert tsne.between_within(x, labels) > 5


def test_silhouette_against_hand_computed_value():
    # Clusters {0, 1} and {10, 11} on a line: s(0) = 1 - 1/10.5, s(1) = 1 - 1/9.5, mirrored for
    # the other cluster, so the mean is (2 - 1/10.5 - 1/9.5) / 2.
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    np.testing.assert_allclose(tsne.silhouette(x, np.array([0, 0, 1, 1])), (2 - 1 / 10.5 - 1 / 9.5) / 2, rtol=1e-9)


def test_exact_tsne_calibrates_perplexity_and_separates_clusters():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 50)
    x = 8.0 * np.eye(3, 10)[labels] + rng.normal(size=(150, 10))  # three Gaussians, 8σ apart
    p = tsne.conditional_probabilities(tsne._sq_distances(x), perplexity=15.0)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    assert np.all(np.diag(p) == 0)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    np.testing.assert_allclose(entropy, np.log(15.0), atol=1e-4)  # perplexity 2^H(bits) = e^H(nats)
    y, method = tsne.embed_2d(x, perplexity=15.0, seed=0, max_iter=1000)
    assert y.shape == (150, 2) and np.all(np.isfinite(y)) and "t-SNE" in method
    # Observed 0.892 (scikit-learn 1.9.1's exact t-SNE, same settings: 0.893); raw data: 0.51.
    assert tsne.silhouette(y, labels) > 0.8, tsne.silhouette(y, labels)
    # Every point's nearest 2-D neighbour is in its own cluster.
    d = tsne._sq_distances_2d(y) + np.diag(np.full(150, np.inf))
    assert np.mean(labels[d.argmin(1)] == labels) == 1.0


def test_parse_sizes_and_points():
    assert mf.parse_sizes(["4x4x2", "8,8,4"]) == [(4, 4, 2), (8, 8, 4)]
    with pytest.raises(ValueError, match="a x b x k"):
        mf.parse_sizes(["4x4"])
    pts = mf.sweep_points(["non", "rc"], [(2, 2, 1), (4, 4, 2)])
    assert [p.label for p in pts] == ["non", "rc@2x2x1", "apg@2x2x1", "rc@4x4x2", "apg@4x4x2"]
    with pytest.raises(ValueError, match="unknown DWM variants"):
        mf.sweep_points(["x"], [(2, 2, 1)])


def _old_deep_forward(deep_model, x, upto=None):
    """The walk ``experiments.midpg_figures.deep_forward`` used to do by hand (kept as the reference)."""
    deep = deep_model.deep
    ctx = deep_model.embedding(x)
    if getattr(deep_model, "hook_context", None) is not None:
        ctx = {**ctx, **deep_model.hook_context(ctx, training=False)}
    h = ctx["all"]
    if deep.hook and deep.hook_on_input:
        h = deep.input_hook(h, ctx, training=False)
    hooks = iter(deep.hook_layers)
    for i, blk in enumerate(deep.blocks):
        if i == upto:
            return ctx, h
        h = blk(h, ctx, training=False)
        if deep.batch_norm:
            h = deep.norms[i](h, training=False)
        h = deep.act(h)
        if deep.hook and i in deep.hook_positions:
            h = next(hooks)(h, ctx, training=False)
    return ctx, h


@pytest.mark.parametrize("kind", ["midpg", "ppnet_bn", "adasparse_input"])
def test_block_inputs_from_the_models_own_forward_equal_the_old_walk(synth_schema, kind):
    """``DomainMLP.record_block_inputs`` (what ``deep_forward`` now uses) gives block i's input
    exactly as the former hand-written walk did, with hooks, BN and an input hook."""
    from mdr_tf.models.backbones import BackboneModel

    cfg = synth_schema.to_config()
    if kind == "midpg":
        m = build_midpg(cfg, variant="r", a=2, b=2, k=1, mir_weight=0.0, **TINY)
    elif kind == "ppnet_bn":
        m = BackboneModel(cfg, hook="ppnet", batch_norm=True, **TINY)
    else:
        m = BackboneModel(cfg, hook="adasparse", hook_on_input=True, **TINY)
    m.build()
    x = random_inputs(synth_schema, 12)
    for upto in (0, 1, None):
        ctx_old, h_old = _old_deep_forward(m, x, upto)
        ctx_new, h_new = mf.deep_forward(m, x, upto)
        np.testing.assert_allclose(np.asarray(h_new), np.asarray(h_old), rtol=1e-6, atol=1e-7)
        assert sorted(ctx_new) == sorted(ctx_old)
    # Block 1's input is not block 0's (the recorder indexes blocks, not a constant), and the
    # recorded output is the model's deep output (what the head sees).
    _, h0 = mf.deep_forward(m, x, 0)
    _, h1 = mf.deep_forward(m, x, 1)
    assert h0.shape[-1] != h1.shape[-1] or not np.allclose(np.asarray(h0), np.asarray(h1))
    # Nothing is recorded outside the ``with``.
    with m.deep.record_block_inputs() as rec:
        pass
    m(x, training=False)
    assert rec == []
