"""The main-job runner: trial log, resume, tables, export."""

import json
import os

import pytest

from experiments import run as runner
from mdr_tf import registry, trial


def _run(tmp_path, synth_dir, **kw):
    args = dict(dataset="synthetic", data_dir=str(tmp_path / "data"), models=["dnn"], trials=2,
                train_kwargs=dict(epochs=1, batch_size=256, steps_per_execution=4),
                model_kwargs={"hidden_units": [8], "embedding_dim": 4}, output_dir=str(tmp_path / "res"),
                dataset_options={"num_rows": 3000}, log=lambda m: None)
    args.update(kw)
    return runner.run(**args)


def test_trials_logged_tables_written_and_rerun_skips(tmp_path, synth_dir, monkeypatch):
    out = _run(tmp_path, synth_dir)
    res = tmp_path / "res"
    rows = [json.loads(line) for line in open(res / "trials.jsonl")]
    assert [r["seed"] for r in rows] == [0, 1]
    assert all(0.0 <= r["test_auc"] <= 1.0 for r in rows)
    table = open(res / "table.md").read()
    assert "| dnn | 2 |" in table
    assert "model,trials,test_auc_mean" in open(res / "table.csv").read()
    meta = json.load(open(res / "run_meta.json"))
    assert meta["data_fingerprint"] and meta["versions"]["keras"]
    assert out["summary"][0]["trials"] == 2

    calls = []
    real = trial.run_trial
    monkeypatch.setattr(trial, "run_trial", lambda *a, **k: calls.append(a) or real(*a, **k))
    _run(tmp_path, synth_dir, trials=3)  # trials 0 and 1 are done: only trial 2 runs
    assert len(calls) == 1 and calls[0][2].seed == 2
    assert len(open(res / "trials.jsonl").read().strip().splitlines()) == 3


def test_interrupted_line_is_ignored_and_trial_reruns(tmp_path, synth_dir):
    _run(tmp_path, synth_dir, trials=1)
    path = tmp_path / "res" / "trials.jsonl"
    good = open(path).read()
    with open(path, "w") as f:  # simulate a kill in the middle of writing a second row
        f.write(good + '{"model": "dnn", "se')
    out = _run(tmp_path, synth_dir, trials=2)
    assert out["summary"][0]["trials"] == 2


def test_unknown_model_fails_before_work(tmp_path, synth_dir):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        _run(tmp_path, synth_dir, models=["nope"])
    assert not os.path.exists(tmp_path / "res")


def test_export_dir_writes_versioned_savedmodel(tmp_path, synth_dir):
    _run(tmp_path, synth_dir, trials=1, export_dir=str(tmp_path / "exp"))
    assert os.path.exists(tmp_path / "exp" / "dnn" / "1" / "saved_model.pb")


def test_sharded_sweep_merges_to_the_same_table(tmp_path, synth_dir):
    a = _run(tmp_path, synth_dir, trials=2, trial_shard=(0, 2), output_dir=str(tmp_path / "s0"))
    b = _run(tmp_path, synth_dir, trials=2, trial_shard=(1, 2), output_dir=str(tmp_path / "s1"))
    assert a["summary"][0]["trials"] == 1 and b["summary"][0]["trials"] == 1
    merged = tmp_path / "merged"
    merged.mkdir()
    for s in ("s0", "s1"):
        for f in os.listdir(tmp_path / s):
            if f.startswith("trials"):
                (merged / f).write_text((tmp_path / s / f).read_text())
    out = _run(tmp_path, synth_dir, trials=2, aggregate_only=True, output_dir=str(merged))
    assert out["summary"][0]["trials"] == 2
    seeds = sorted(r["seed"] for r in out["rows"])
    assert seeds == [0, 1]


def test_per_domain_bar_chart_is_written(tmp_path, synth_dir):
    from experiments.plots import per_domain_bars

    out = _run(tmp_path, synth_dir, trials=2)
    path = per_domain_bars(out["summary"], ["a", "b", "c"], str(tmp_path / "fig.png"), title="t")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_every_paper_config_names_registered_models_and_datasets():
    from data_prep import registry as data_registry
    from experiments.paper_configs import CONFIGS
    from mdr_tf import registry

    for name, c in CONFIGS.items():
        for m in c.models:
            registry.get(m)
        assert c.dataset in data_registry.DATASETS, (name, c.dataset)
        assert set(c.paper["rows"]) <= set(c.models)


def test_changed_registry_default_reruns_trials(tmp_path, synth_dir, monkeypatch):
    import dataclasses

    from mdr_tf import registry

    _run(tmp_path, synth_dir, trials=1)
    spec = registry.REGISTRY["dnn"]
    monkeypatch.setitem(registry.REGISTRY, "dnn", dataclasses.replace(spec, defaults={**spec.defaults,
                                                                                       "dropout": 0.1}))
    calls = []
    real = trial.run_trial
    monkeypatch.setattr(trial, "run_trial", lambda *a, **k: calls.append(a) or real(*a, **k))
    _run(tmp_path, synth_dir, trials=1)
    assert len(calls) == 1


def test_trial_log_appends_after_a_line_cut_by_a_kill(tmp_path):
    from experiments.run import TrialLog

    path = tmp_path / "trials.jsonl"
    path.write_text('{"key": "a", "auc": 0.7}\n{"key": "b", "au')  # killed mid-write
    log = TrialLog(str(path))
    assert [r["key"] for r in log.rows] == ["a"]
    log.append({"key": "c", "auc": 0.8})
    again = TrialLog(str(path))
    assert [r["key"] for r in again.rows] == ["a", "c"]  # "c" is not glued onto the cut line


def test_common_model_kwargs_reach_models_built_by_forwarding_builders(synth_schema):
    # mlora_model / build_hierrec take **kwargs: what they accept is their model class's
    # constructor. A config's hidden_units must reach MLoRA (it used to be dropped, so
    # "with and without MLoRA" compared different backbone sizes) but not HierRec.
    from experiments.run import _model_kwargs
    from mdr_tf.models.mlora import lora_variables

    common = {"hidden_units": [16, 8], "embedding_dim": 4, "not_an_argument": 1}
    assert _model_kwargs("mlora", common, {}) == {"hidden_units": [16, 8], "embedding_dim": 4}
    assert _model_kwargs("hamur_wdl", common, {}) == {"hidden_units": [16, 8], "embedding_dim": 4}
    assert _model_kwargs("hierrec", common, {}) == {"embedding_dim": 4}
    assert _model_kwargs("mlora", common, {"mlora": {"hidden_units": [4]}})["hidden_units"] == [4]
    built = registry.get("mlora").build(synth_schema, **_model_kwargs("mlora", common, {}))
    built.build()
    plain = registry.get("dnn").build(synth_schema, **_model_kwargs("dnn", common, {}))
    plain.build()
    lora = {id(v) for v in lora_variables(built)}
    shared = [tuple(v.shape) for v in built.weights if id(v) not in lora]
    assert shared == [tuple(v.shape) for v in plain.weights]  # the same 16-8 backbone


def test_mlora_configs_follow_the_official_settings(synth_schema):
    # models.md §4.3: MovieLens trains MLoRA in one stage; α = 32 for DeepFM; dropout 0.5
    # on the shared branch (inside the MLoRA blocks, not again after the activation).
    from experiments.paper_configs import CONFIGS
    from experiments.run import _model_kwargs
    from mdr_tf.models.mlora import mlora_layers

    c = CONFIGS["mlora_ml1m_gender"]
    assert "mlora" in c.models and "mlora_2stage" not in c.models
    assert "mlora_2stage" in CONFIGS["mlora_amazon6"].models and "mlora_2stage" in CONFIGS["mlora_taobao10"].models
    m = registry.get("mlora_deepfm").build(synth_schema, **_model_kwargs("mlora_deepfm", c.model_kwargs,
                                                                          c.per_model_args))
    m.build()
    assert sorted((b.units, b.r, b.dropout) for b in mlora_layers(m)) == [(64, 2, 0.5), (128, 4, 0.5), (256, 8, 0.5)]
    assert m.dropout == 0.0 and m.embedding_dim == 8
    plain = registry.get("deepfm").build(synth_schema, **_model_kwargs("deepfm", c.model_kwargs, c.per_model_args))
    assert plain.dropout == 0.5 and plain.hidden_units == [256, 128, 64]
    # The official DeepCTR variants: glorot_normal kernels (deep layers, LoRA A, head) and
    # l2_reg_embedding = 1e-5, i.e. a loss of 1e-5·ΣE² over the embedding table.
    import keras
    import numpy as np

    plain.build()
    for model in (m, plain):
        assert isinstance(model.head.kernel_initializer, keras.initializers.GlorotNormal)
        assert all(isinstance(b.kernel_initializer, keras.initializers.GlorotNormal) for b in model.deep.blocks)
        table = np.asarray(model.embedding.table)
        np.testing.assert_allclose(float(sum(model.embedding.losses)), 1e-5 * np.sum(table ** 2), rtol=1e-5)
    assert all(isinstance(b.lora_initializer, keras.initializers.GlorotNormal) for b in mlora_layers(m))
    mlp = registry.get("mlora").build(synth_schema, **_model_kwargs("mlora", c.model_kwargs, c.per_model_args))
    assert mlp.kernel_initializer is None and mlp.embedding_l2 == 0.0  # the MLP variant: glorot_uniform, no L2


@pytest.mark.parametrize("config", ["hamur_ml1m", "hamur_aliccp"])
def test_hamur_configs_pair_each_backbone_with_the_same_mlp(config):
    # "With and without HAMUR" must differ only by the adapter (official example scripts).
    from experiments.paper_configs import CONFIGS
    from experiments.run import _model_kwargs

    c = CONFIGS[config]
    args = {m: _model_kwargs(m, c.model_kwargs, c.per_model_args) for m in c.models}
    for plain, hamur in (("dnn", "hamur_official"), ("wdl", "hamur_wdl"), ("dcn", "hamur_dcn")):
        assert args[plain]["hidden_units"] == args[hamur]["hidden_units"]
        merged = {**registry.get(hamur).defaults, **args[hamur]}
        for key in ("batch_norm", "dropout", "cross_layers"):
            if key == "batch_norm" and hamur == "hamur_official":
                continue  # HamurMLP's towers always have BatchNorm
            if key in args[plain]:
                assert merged.get(key) == args[plain][key], (hamur, key)


def test_bench_variants_parses_labels_models_and_kwargs():
    from experiments.bench_variants import parse_variant

    assert parse_variant("dnn=dnn") == ("dnn", "dnn", {})
    assert parse_variant('old=pepnet:{"gate_embeddings": false}') == ("old", "pepnet", {"gate_embeddings": False})
    for bad in ("pepnet", "=pepnet", 'x=pepnet:{"a": }'):
        with pytest.raises(ValueError, match="--variants"):
            parse_variant(bad)
