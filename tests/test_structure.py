"""Issue 12 items 1-3: imports run one way, references in the registry, one home per default,
``--backbone`` / ``--block`` / ``--hook``, builder defaults in the trial key."""

from __future__ import annotations

import ast
import os

import keras
import numpy as np
import pytest

from experiments import run as runner
from experiments.common import trial_key
from mdr_tf import registry
from tests.test_reliability import TINY, tiny_inputs

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mdr_tf")


def _import_graph() -> dict[str, set[str]]:
    """mdr_tf module → the mdr_tf modules it imports anywhere (module level or inside functions)."""
    mods = {}
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path[:-3], os.path.dirname(PKG)).replace(os.sep, ".")
                mods[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def test_imports_run_one_way():
    graph = _import_graph()
    # The two deliberate exceptions: the package root imports every module to register it
    # (nothing may import the root for that, except blocks' by-name lookup), and
    # ``mdr_tf.training.run_trial`` is a lazy alias of ``mdr_tf.trial.run_trial``.
    graph["mdr_tf"] = set()
    graph["mdr_tf.training"] -= {"mdr_tf.trial"}
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    assert graph["mdr_tf.registry"] == {"mdr_tf.schema"}  # references only, resolved lazily
    assert graph["mdr_tf.layers.mechanisms"] == set()  # no import-everything side effect
    for m, deps in graph.items():
        if m.startswith(("mdr_tf.training", "mdr_tf.models", "mdr_tf.layers")):
            assert not deps & {"mdr_tf.registry", "mdr_tf.trial"}, (m, deps)
    assert "mdr_tf.registry" in graph["mdr_tf.trial"] and "mdr_tf.training" in graph["mdr_tf.trial"]


def test_specs_name_builders_and_procedures_as_references():
    from mdr_tf import training
    from mdr_tf.models import mlora
    from mdr_tf.trial import run_trial

    for spec in registry.REGISTRY.values():
        assert callable(registry.load(spec.builder)) and callable(registry.load(spec.procedure)), spec.name
    assert registry.load(registry.get("dnn").procedure) is training.fit
    assert registry.load(registry.get("mlora_2stage").procedure) is mlora.mlora_two_stage
    # The former short names still work; a name that is no reference is refused.
    assert registry.ModelSpec("x", "m:f", procedure="standard").procedure == registry.STANDARD_PROCEDURE
    with pytest.raises(ValueError, match="procedure must be a 'module:function' reference"):
        registry.ModelSpec("x", "m:f", procedure="two_stage")
    assert training.run_trial is run_trial  # the old import path


def test_mlora_entries_are_generated_from_backbone_pairs():
    base = registry.get("mlora").defaults
    for b in ("wdl", "dcn", "deepfm"):
        spec = registry.get(f"mlora_{b}")
        assert spec.defaults == {**base, "backbone": b} and spec.builder == registry.get("mlora").builder
        assert spec.family == "seed" and not spec.in_main_table
    # Deep copies: changing one entry's dict leaves the others alone.
    registry.get("mlora_dcn").defaults["block_config"]["alpha"] = 1
    try:
        assert registry.get("mlora_wdl").defaults["block_config"]["alpha"] == 16 == base["block_config"]["alpha"]
    finally:
        registry.get("mlora_dcn").defaults["block_config"]["alpha"] = 16


def _config(model) -> dict:
    cfg = dict(model.get_config())
    cfg.pop("name")
    return cfg


def test_class_defaults_are_the_main_table_entries():
    from mdr_tf.models.hamur import HamurMLP
    from mdr_tf.models.hierrec import HierRec

    assert _config(HierRec(TINY)) == _config(registry.get("hierrec").build(TINY))
    assert _config(HamurMLP(TINY)) == _config(registry.get("hamur").build(TINY))
    assert registry.get("hierrec").defaults == {} and registry.get("hamur").defaults == {}
    large = registry.get("hierrec_large").build(TINY)
    assert (large.num_heads, large.condition_dim, large.som_units) == (4, 64, [32, 64])
    official = registry.get("hamur_official").build(TINY)
    assert (official.hidden_units, official.k, official.norm_mode) == ([256, 128], 35, "batch")


def test_variant_flags_apply_where_the_builder_takes_them():
    assert runner.variant_kwargs("dnn", {"backbone": "dcn", "block": "mlora"}) == {
        "backbone": "dcn", "block": "mlora", "block_config": {}}
    # APG's own block_config (condition "group") belongs to APG: dropped with a new block,
    # kept when --model_args sets one, kept when the block stays.
    assert runner.variant_kwargs("apg", {"block": "mlora"})["block_config"] == {}
    assert "block_config" not in runner.variant_kwargs("apg", {"block": "mlora"}, {"apg": {"block_config": {}}})
    assert runner.variant_kwargs("apg", {"block": "apg"}) == {"block": "apg"}
    assert runner.variant_kwargs("mlora", {"backbone": "dcn", "block": "dwm"}) == {"backbone": "dcn"}
    assert runner.variant_kwargs("hamur", {"backbone": "dcn"}) == {}  # HamurMLP has no backbone
    assert runner.variant_label("dnn", {"backbone": "dcn", "block": "mlora", "block_config": {}}) == \
        "dnn[backbone=dcn,block=mlora]"

    # "MLoRA on DCN" by flags is the registry's mlora_dcn: same function, same seeded outputs.
    small = {"hidden_units": [8, 4], "embedding_dim": 4}
    outs = []
    for name, extra in (("dnn", runner.variant_kwargs("dnn", {"backbone": "dcn", "block": "mlora"})),
                        ("mlora_dcn", {})):
        keras.utils.set_random_seed(3)
        m = registry.get(name).build(TINY, **small, **extra)
        m.build()
        for layer in m._flatten_layers():  # LoRA B starts at zero: make it count
            if hasattr(layer, "lora_b"):
                layer.lora_b.assign(np.full(layer.lora_b.shape, 0.5, "float32"))
        assert m.backbone == "dcn" and m.block == "mlora"
        outs.append(np.asarray(m(tiny_inputs(), training=False)))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_run_with_variant_flags_labels_the_model_and_refuses_a_flag_nothing_takes(tmp_path, synth_dir):
    args = dict(dataset="synthetic", data_dir=str(tmp_path / "data"), trials=1,
                train_kwargs=dict(epochs=1, batch_size=256, steps_per_execution=4),
                model_kwargs={"hidden_units": [8], "embedding_dim": 4}, output_dir=str(tmp_path / "res"),
                dataset_options={"num_rows": 3000}, log=lambda m: None)
    with pytest.raises(ValueError, match="--block=mlora applies to none of the models"):
        runner.run(models=["hamur"], variant={"block": "mlora"}, **args)
    out = runner.run(models=["dnn"], variant={"backbone": "dcn", "block": "mlora", "hook": None}, **args)
    assert [r["model"] for r in out["rows"]] == ["dnn[backbone=dcn,block=mlora]"]
    assert "| dnn[backbone=dcn,block=mlora] | 1 |" in open(tmp_path / "res" / "table.md").read()


def toy_builder(schema, width: int = 8, **kwargs) -> keras.Model:
    """A builder for the trial-key test (never called)."""
    raise AssertionError("not built")


def test_trial_key_changes_with_a_builder_signature_default(monkeypatch):
    from mdr_tf.training import TrainConfig

    monkeypatch.setitem(registry.REGISTRY, "toy", registry.ModelSpec("toy", f"{__name__}:toy_builder"))
    assert registry.get("toy").builder_defaults() == {"width": 8}
    key = trial_key("toy", TrainConfig(), {}, "data")
    assert trial_key("toy", TrainConfig(), {}, "data") == key
    monkeypatch.setattr(toy_builder, "__defaults__", (16,))  # the builder's default changed
    assert trial_key("toy", TrainConfig(), {}, "data") != key
    # The class a registry builder returns counts too (HierRec's widths are class defaults).
    assert registry.get("hierrec").builder_defaults()["num_heads"] == 2
