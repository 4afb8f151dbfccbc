"""experiments.alpt: configurations, model arguments from the flags, the combined table."""

import pytest
from absl import app

from experiments.alpt import config_name, configs, table
from experiments.run import embedding_kwargs


def test_fp_adds_no_model_arguments_and_bad_values_are_usage_errors():
    assert embedding_kwargs("fp", 8, '{"delta_lr": 1}') == {}  # fp trial keys stay those of before
    assert embedding_kwargs("alpt", 4, '{"step": "table"}') == {
        "embedding_precision": "alpt", "embedding_bits": 4, "embedding_quantization": {"step": "table"}}
    with pytest.raises(app.UsageError, match="embedding_bits"):
        embedding_kwargs("lpt_sr", 1)
    with pytest.raises(app.UsageError, match="JSON"):
        embedding_kwargs("alpt", 8, "{bad")


def test_table_compares_every_config_with_fp32():
    cfgs = configs(["lpt_dr", "alpt"], [8])
    assert [config_name(*c) for c in cfgs] == ["fp32", "lpt_dr-8", "alpt-8"]
    rows = {"fp32": [{"model": "dnn", "test_auc": a, "test_logloss": 0.5, "params_table_bytes": 400}
                     for a in (0.70, 0.72, 0.71)],
            "alpt-8": [{"model": "dnn", "test_auc": a, "test_logloss": 0.6, "params_table_bytes": 120}
                       for a in (0.60, 0.61, 0.62)]}
    speeds = {"dnn/fp32": {"relative_to_fp32": 1.0, "saved_model_bytes": 1000},
              "dnn/alpt-8": {"relative_to_fp32": 0.8}, "dnn/8bit": {"saved_model_bytes": 500}}
    md, csv = table(rows, ["dnn"], cfgs, speeds)
    lines = md.splitlines()
    assert len(lines) == 4  # header, rule, fp32, alpt-8 (lpt_dr-8 has no trials)
    assert "| dnn | alpt-8 | 0.6100 ± 0.0100 |" in lines[3] and "-0.1000" in lines[3]
    assert "| 120 | 500 | 0.80× | 3 |" in lines[3]
    p = float(csv.splitlines()[2].split(",")[7])
    assert 0 < p < 0.01  # Welch's t-test: clearly different


def test_reround_cost_times_the_three_table_updates():
    from experiments.alpt import reround_cost

    out = reround_cost(200, 4, batch_rows=16, reps=1, log=lambda s: None)
    assert set(out) == {"adam_dense", "reround_all", "reround_touched"}
    assert all(v >= 0 and v == v for v in out.values())


def test_variant_flags_reach_the_size_and_speed_models(synth_schema):
    """--backbone / --block put ALPT's models on another backbone: MLoRA on DCN is larger than the DNN."""
    from experiments.alpt import sizes

    plain = sizes(synth_schema, ["dnn"], [8], {}, log=lambda s: None)
    dcn_mlora = sizes(synth_schema, ["dnn"], [8], {}, log=lambda s: None,
                      variant={"backbone": "dcn", "block": "mlora", "hook": None})
    assert dcn_mlora["dnn/fp32"]["saved_model_bytes"] > plain["dnn/fp32"]["saved_model_bytes"]
    # The quantised table is the same: the variant changes the dense part only.
    assert dcn_mlora["dnn/8bit"]["table_bytes"] == plain["dnn/8bit"]["table_bytes"]


def test_saved_model_bytes_count_the_model_not_the_serving_fold(synth_schema):
    """The size column compares stored models: without the fp32-only folded serving tables."""
    from experiments.alpt import saved_model_bytes
    from mdr_tf import registry

    model = registry.get("dnn").build(synth_schema, hidden_units=[8])
    model.build()
    own = saved_model_bytes(model)
    assert saved_model_bytes(model, fold="auto") > own  # control: the export's default adds the fold
    assert 4 * model.count_params() <= own < 4 * model.count_params() + 16_384  # float32 weights + file overhead
