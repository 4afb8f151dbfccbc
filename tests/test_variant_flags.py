"""``--backbone`` / ``--block`` / ``--hook`` in experiments.onboard, conflicting_domains and benchmark.

Each script defines the flags with ``experiments.run.define_variant_flags`` and maps them
with ``apply_variant`` / ``variant_kwargs``; these tests parse each script's own flags and
check what reaches the registry builder (the model built), with the plain model as control.
"""

from __future__ import annotations

import pytest
from absl import flags

from mdr_tf import registry


class _Stop(Exception):
    """Raised in place of training: the test only needs the model that was built."""


@pytest.fixture
def script_flags():
    """``define(fn)`` a script's flags on absl's global FLAGS, ``parse(argv)``; removed afterwards."""
    before = set(flags.FLAGS)

    class Flags:
        @staticmethod
        def define(fn):
            fn()

        @staticmethod
        def parse(*argv: str):
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["script", *argv])
            return flags.FLAGS

    yield Flags
    flags.FLAGS.unparse_flags()
    for name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, name)


class _Builds(list):
    """Every registry build as ``(name, backbone, block)`` of the model built; ``stop = True``
    raises ``_Stop`` right after a build (no training)."""

    stop = False


@pytest.fixture
def builds(monkeypatch) -> _Builds:
    seen = _Builds()
    original = registry.ModelSpec.build

    def build(self, schema, **kwargs):
        model = original(self, schema, **kwargs)
        seen.append((self.name, getattr(model, "backbone", None), getattr(model, "block", None)))
        if seen.stop:
            raise _Stop
        return model

    monkeypatch.setattr(registry.ModelSpec, "build", build)
    return seen


def test_onboard_flags_reach_the_builder(tmp_path, script_flags, builds):
    from experiments import onboard

    builds.stop = True
    script_flags.define(onboard.define_flags)
    data = ["--dataset=synthetic", f"--data_dir={tmp_path}", "--dataset_options=num_rows=1500", "--trials=1",
            "--model=dnn"]
    for argv, expected in ((["--backbone=dcn", "--block=mlora"], ("dnn", "dcn", "mlora")),
                           ([], ("dnn", "mlp", "plain"))):  # control: the flags unset
        builds.clear()
        with pytest.raises(_Stop):
            onboard._main(script_flags.parse(*data, *argv))
        assert builds == [expected]  # the base model of the first trial
    with pytest.raises(ValueError, match="--backbone=dcn applies to none of the models"):
        onboard._main(script_flags.parse(*data[:-1], "--model=hamur", "--backbone=dcn"))


def test_conflicting_domains_flags_reach_every_builder_and_the_trial_key(tmp_path, script_flags, builds,
                                                                        monkeypatch):
    import keras

    from experiments import conflicting_domains as cd

    monkeypatch.setattr(cd, "ARRAYS_PROTOCOL", {"num_rows": 1200, "train_rows": 800, "epochs": 1,
                                                "batch_size": 400, "learning_rate": 5e-3})
    monkeypatch.setattr(keras.Model, "fit", lambda self, *args, **kwargs: None)  # the untrained models are scored
    script_flags.define(cd.define_flags)
    args = ["--protocol=arrays", "--scenarios=conflict", "--models=mlora", "--neutral=false", "--extra_variants=",
            "--trials=1", f"--output_dir={tmp_path}"]
    cd._main(script_flags.parse(*args, "--backbone=dcn"))
    assert builds == [("dnn", "dcn", "plain"), ("mlora", "dcn", "mlora")]  # the DNN reference too
    table = (tmp_path / "conflict-arrays" / "table.md").read_text()
    assert 'Variant flags: dnn: {"backbone": "dcn"}; mlora: {"backbone": "dcn"}.' in table
    # Control: without the flag the same output folder builds the plain DNN again (the trial
    # key holds the flags' arguments, so the DCN trials are not reused).
    builds.clear()
    builds.stop = True
    with pytest.raises(_Stop):
        cd._main(script_flags.parse(*args))
    assert builds == [("dnn", "mlp", "plain")]


def test_benchmark_flags_reach_the_builder(synth_schema, script_flags, builds):
    from experiments import benchmark

    script_flags.define(benchmark.define_flags)
    script_flags.parse("--models=dnn", "--backbone=dcn", "--block=mlora")
    builds.stop = True
    with pytest.raises(_Stop):  # the training runner's model
        benchmark._epoch_runner("dnn", synth_schema, 1024, "memory", 2, False)
    assert builds == [("dnn", "dcn", "mlora")]
    builds.stop = False
    # --model_args' own block_config is kept (variant_kwargs drops only the replaced block's).
    builds.clear()
    m = benchmark._build("dnn", synth_schema, {"hidden_units": [8], "block_config": {"alpha": 2}})
    assert builds == [("dnn", "dcn", "mlora")] and m.hidden_units == [8] and m.block_config == {"alpha": 2}
    script_flags.parse("--models=dnn")  # control: the flags unset
    builds.clear()
    benchmark._build("dnn", synth_schema)
    assert builds == [("dnn", "mlp", "plain")]
