"""Reliability checks: loadable ``.keras`` files, no silent NaN, id range, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mdr_tf import registry
from mdr_tf.schema import Schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "features": [
        {"name": "user_id", "kind": "categorical", "vocab_size": 7, "group": "user", "is_id": True},
        {"name": "item_id", "kind": "categorical", "vocab_size": 5, "group": "item", "is_id": True},
        {"name": "ctx", "kind": "categorical", "vocab_size": 3, "group": "domain"},
        {"name": "price", "kind": "dense", "group": "item"},
    ],
    "num_domains": 3,
}


#: TINY plus a click history [4] and unclick windows [4, 2] for the registry's sequence models.
TINY_SEQ = {**TINY, "sequences": [
    {"name": "click", "kind": "sequence", "shape": [4], "embed_with": "item_id"},
    {"name": "unclick", "kind": "sequence", "shape": [4, 2], "embed_with": "item_id"}]}


def tiny_inputs(n: int = 6, sequences: bool = False) -> dict[str, np.ndarray]:
    x = {"user_id": np.arange(n, dtype=np.int64) % 7, "item_id": np.arange(n, dtype=np.int64) % 5,
         "ctx": np.arange(n, dtype=np.int64) % 3, "price": np.linspace(0, 1, n).astype(np.float32),
         "domain_id": np.arange(n, dtype=np.int64) % 3}
    if sequences:
        for name, length in (("click", 4), ("unclick", 8)):
            x[f"{name}_ids"] = (np.arange(n * length, dtype=np.int64).reshape(n, length) % 5)
            x[f"{name}_mask"] = (np.arange(n * length).reshape(n, length) % 3 != 0).astype(np.int64)
    return x


def _subprocess(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


# --- every registry model loads with keras.models.load_model after `import mdr_tf` ---

def test_every_registry_model_loads_after_import_mdr_tf_only(tmp_path):
    want = {}
    for name in registry.names():
        seq = bool(getattr(registry.get(name), "needs_sequences", False))
        m = registry.get(name).build(TINY_SEQ if seq else TINY)
        m.build()
        want[name] = [seq, np.asarray(m(tiny_inputs(sequences=seq), training=False)).reshape(-1).tolist()]
        m.save(str(tmp_path / f"{name}.keras"))
    np.savez(tmp_path / "x.npz", **tiny_inputs())
    np.savez(tmp_path / "xs.npz", **tiny_inputs(sequences=True))
    (tmp_path / "want.json").write_text(json.dumps(want))
    code = f"""
import json, sys, numpy as np
import keras, mdr_tf
d = {str(tmp_path)!r}
xs = dict([(False, dict(np.load(d + '/x.npz'))), (True, dict(np.load(d + '/xs.npz')))])
want = json.load(open(d + '/want.json'))
bad = []
for name, (seq, ref) in want.items():
    try:
        got = np.asarray(keras.models.load_model(d + '/' + name + '.keras')(xs[seq], training=False)).reshape(-1)
        if not np.allclose(got, ref, atol=1e-6, rtol=0):
            bad.append(name + ': predictions differ')
    except Exception as e:
        bad.append(name + ': ' + type(e).__name__ + ': ' + str(e).splitlines()[0][:200])
print('\\n'.join(bad))
sys.exit(1 if bad else 0)
"""
    r = _subprocess(code)
    assert r.returncode == 0, f"models that do not load after `import mdr_tf`:\n{r.stdout}\n{r.stderr[-2000:]}"
    assert len(want) == len(registry.names()) >= 31


# --- NaN / inf never pass silently from data to the results table ---

def _synth_frame(n: int = 40):
    from data_prep.common import FeatureDef

    rng = np.random.default_rng(0)
    feats = [FeatureDef("user_id", "categorical", 5, "user", True), FeatureDef("price", "dense", 0, "item")]
    cols = {"user_id": rng.integers(0, 5, n).astype(np.int64), "price": rng.random(n).astype(np.float32)}
    return feats, cols, (np.arange(n) % 2).astype(np.int64), {"label": (rng.random(n) > 0.5).astype(np.float32)}


@pytest.mark.parametrize("column,bad", [("price", np.nan), ("price", np.inf), ("label", -np.inf)])
def test_writer_rejects_non_finite_values_naming_column_and_row(tmp_path, column, bad):
    from data_prep.common import DataError, write_dataset

    feats, cols, dom, labels = _synth_frame()
    (labels if column == "label" else cols)[column][17] = bad
    with pytest.raises(DataError, match=rf"column {column!r}.*row 17"):
        write_dataset(str(tmp_path / "out"), dataset="t", features=feats, columns=cols, domain=dom,
                      domain_names=["a", "b"], labels=labels, split=np.zeros(len(dom), np.int8),
                      vocabs={"user_id": ["<OOV>", "1", "2", "3", "4"]}, fp="x", metadata={},
                      progress=lambda m: None)
    assert not os.path.exists(tmp_path / "out")


def test_streaming_writer_rejects_non_finite_values_naming_column_and_row(tmp_path):
    from data_prep.common import DataError, StreamingWriter

    feats, cols, dom, labels = _synth_frame()
    w = StreamingWriter(str(tmp_path), 2, 2, ["user_id"], ["price"], ["label"])
    w.write(cols, dom, np.zeros(len(dom), np.int8), labels)  # 40 good rows
    cols["price"][3] = np.nan
    with pytest.raises(DataError, match=r"column 'price'.*row 43"):
        w.write(cols, dom, np.zeros(len(dom), np.int8), labels)
    w.abort()


def test_metrics_refuse_non_finite_scores():
    from mdr_tf import metrics as M

    y = np.array([0, 1, 0, 1], np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        M.auc(y, np.array([0.1, np.nan, 0.3, 0.4]))
    with pytest.raises(ValueError, match="non-finite"):
        M.logloss(y, np.array([0.1, 0.2, np.inf, 0.4]))
    with pytest.raises(ValueError, match="non-finite"):
        M.evaluate(y, np.full(4, np.nan), np.zeros(4, np.int64), 1)
    assert M.auc(y, np.array([0.1, 0.9, 0.3, 0.4])) == 1.0  # control: finite scores still score


def _nan_model_kwargs():
    return {"hidden_units": [8], "embedding_dim": 4,
            "embeddings_initializer": {"class_name": "Constant", "config": {"value": float("nan")}}}


def test_trial_stops_on_non_finite_loss_with_a_message(synth_schema):
    from mdr_tf import training

    cfg = training.TrainConfig(epochs=3, batch_size=256, steps_per_execution=4)
    with pytest.raises(training.NonFiniteLossError, match=r"non-finite training loss.*epoch 1"):
        training.run_trial("dnn", synth_schema, cfg, _nan_model_kwargs())


def test_run_marks_a_non_finite_trial_failed_and_exits_non_zero(tmp_path):
    from experiments import run as runner

    logs = []
    args = dict(dataset="synthetic", data_dir=str(tmp_path / "data"), models=["dnn"], trials=1,
                train_kwargs=dict(epochs=2, batch_size=256, steps_per_execution=4),
                per_model_args={"dnn": _nan_model_kwargs()}, output_dir=str(tmp_path / "res"),
                dataset_options={"num_rows": 3000}, log=logs.append)
    with pytest.raises(runner.TrialsFailed, match=r"1 of 1 trials failed.*dnn trial 0.*non-finite"):
        runner.run(**args)
    rows = [json.loads(line) for line in open(tmp_path / "res" / "trials.jsonl")]
    assert len(rows) == 1 and rows[0]["status"] == "failed" and "non-finite" in rows[0]["error"]
    assert "test_auc" not in rows[0]
    table = open(tmp_path / "res" / "table.md").read()
    assert "| dnn |" not in table and "failed" in table
    assert any("FAILED" in line for line in logs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(learning_rate=float("nan")), "learning_rate"), (dict(learning_rate=-1.0), "learning_rate"),
    (dict(batch_size=0), "batch_size"), (dict(epochs=0), "epochs")])
def test_train_config_rejects_bad_numbers(kwargs, match):
    from mdr_tf.training import TrainConfig

    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


# --- numeric and list flags are validated when the flags are parsed ---

def _cli(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "experiments.run", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_flags_are_rejected_at_parse_time(tmp_path):
    cases = [("--batch_size=0", "batch_size"), ("--batch_size=-1", "batch_size"), ("--epochs=0", "epochs"),
             ("--trials=0", "trials"), ("--learning_rate=nan", "learning_rate"),
             ("--learning_rate=-0.1", "learning_rate"), ("--models=", "models"),
             ("--models=dnn,dnn", "listed twice")]
    # All in one interpreter (absl parses each argv afresh): one start-up instead of eight.
    code = f"""
import sys
from absl import flags
from experiments import run
run.define_flags()
for arg in {[c[0] for c in cases]!r}:
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(['run', arg, '--output_dir={tmp_path}'])
        print(arg, 'ACCEPTED')
    except flags.Error as e:
        print(arg, 'REJECTED', str(e).replace(chr(10), ' '))
flags.FLAGS.unparse_flags()
flags.FLAGS(['run', '--models=dnn,mlora', '--batch_size=1', '--trials=1', '--learning_rate=0.01'])
print('good ACCEPTED')
print('help', 'hierrec' in flags.FLAGS['models'].help and 'aliccp' in flags.FLAGS['dataset'].help)
"""
    r = _subprocess(code, timeout=120)
    out = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    assert out.get("good") == "ACCEPTED", r.stdout + r.stderr
    assert out.get("help") == "True"  # --helpfull lists model and dataset names
    for arg, match in cases:
        assert out[arg].startswith("REJECTED") and match in out[arg], (arg, out[arg])


# --- items 11 and 16: ids >= 2**31 read the OOV row; Keras and serving agree on bad inputs ---

@pytest.fixture(scope="module")
def tiny_exported(tmp_path_factory):
    from mdr_tf.export import export_saved_model
    from mdr_tf.models.backbones import BackboneModel

    import tensorflow as tf

    m = BackboneModel(TINY, hidden_units=[8])
    m.build()
    # Non-trivial embeddings so that reading the wrong row changes the output.
    m.embedding.table.assign(np.random.default_rng(1).normal(size=m.embedding.table.shape).astype(np.float32))
    path = export_saved_model(m, str(tmp_path_factory.mktemp("exp")), version=1)
    return m, tf.saved_model.load(path)


def _three_paths(m, sm, x):
    """Probabilities from Keras, the raw-tensor signature and the tf.Example signature."""
    import tensorflow as tf

    from mdr_tf.export import serialize_examples

    keras_p = np.asarray(m(x, training=False)).reshape(-1)
    raw = sm.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})["probability"].numpy()
    ex = sm.serve_examples(tf.constant(serialize_examples(m.schema, x)))["probability"].numpy()
    return keras_p, raw, ex


@pytest.mark.parametrize("big", [2**32 + 5, 2**31, 2**31 + 5, -(2**32) + 5, 2**63 - 1])
def test_ids_beyond_int32_read_the_oov_row_everywhere(tiny_exported, big):
    m, sm = tiny_exported
    x = tiny_inputs()
    x["user_id"] = np.full(6, 5, np.int64)
    oov = dict(x, user_id=np.full(6, big, np.int64))
    zero = dict(x, user_id=np.zeros(6, np.int64))
    want = np.asarray(m(zero, training=False)).reshape(-1)
    assert not np.allclose(want, np.asarray(m(x, training=False)).reshape(-1))  # control: row 5 differs
    for got in _three_paths(m, sm, oov):
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("bad", [-1, 3, 2**32 + 1])
def test_out_of_range_domain_is_rejected_by_keras_and_serving_alike(tiny_exported, bad):
    import tensorflow as tf

    m, sm = tiny_exported
    x = tiny_inputs()
    x["domain_id"][2] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match="domain_id"):
        m(x, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="domain_id"):
        m.predict(x, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="domain_id"):
        sm.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_dense_input_is_rejected_by_keras_and_serving_alike(tiny_exported, bad):
    import tensorflow as tf

    from mdr_tf.export import serialize_examples

    m, sm = tiny_exported
    x = tiny_inputs()
    x["price"][1] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match="price.*finite"):
        m(x, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="price.*finite"):
        sm.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})
    with pytest.raises(tf.errors.InvalidArgumentError, match="price.*finite"):
        sm.serve_examples(tf.constant(serialize_examples(m.schema, x)))
    ok = _three_paths(m, sm, tiny_inputs())  # control: finite inputs are served, all paths equal
    np.testing.assert_allclose(ok[1], ok[0], atol=1e-6)
    np.testing.assert_allclose(ok[2], ok[0], atol=1e-6)


# --- identical input, options and seed give byte-identical TFRecords across processes ---

def test_tfrecords_are_byte_identical_across_processes(tmp_path):
    import glob

    code = """
import sys
from data_prep.synthetic import generate
generate(sys.argv[1], num_rows=600, num_domains=3, num_users=20, num_items=10, num_context=4, seed=3)
"""
    outs = []
    for i, hashseed in enumerate(["1", "2"]):  # protobuf map order follows a per-process hash seed
        out = str(tmp_path / f"run{i}")
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO,
                   PYTHONHASHSEED=hashseed)
        r = subprocess.run([sys.executable, "-c", code, out], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(out)
    files = sorted(os.path.relpath(p, outs[0]) for p in glob.glob(os.path.join(outs[0], "*", "*.tfrecord")))
    assert len(files) == 9
    differ = [f for f in files
              if open(os.path.join(outs[0], f), "rb").read() != open(os.path.join(outs[1], f), "rb").read()]
    assert not differ, f"{len(differ)} of {len(files)} TFRecord files differ between two processes: {differ}"


def test_streamed_tfrecords_are_byte_identical_across_processes(tmp_path):
    """The streaming writer (Ali-CCP, IJCAI-18, KuaiRand) on IJCAI-18's test fixture, 2 shards."""
    import glob

    from tests.data_prep.test_ijcai18 import FILE, make_rows, write_file

    raw = tmp_path / "raw"
    raw.mkdir()
    write_file(str(raw / FILE), make_rows(200))
    code = "import sys\nfrom data_prep import ijcai18\nijcai18.prepare(sys.argv[1], raw_path=sys.argv[2], num_shards=2)"
    outs = []
    for i, hashseed in enumerate(["1", "2"]):
        out = str(tmp_path / f"run{i}")
        env = dict(os.environ, PYTHONPATH=REPO, PYTHONHASHSEED=hashseed)
        r = subprocess.run([sys.executable, "-c", code, out, str(raw)], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(out)
    files = sorted(os.path.relpath(p, outs[0]) for p in glob.glob(os.path.join(outs[0], "*", "*.tfrecord")))
    assert len(files) == 4 * 3 * 2
    assert all(open(os.path.join(outs[0], f), "rb").read() == open(os.path.join(outs[1], f), "rb").read()
               for f in files)


# --- items 12 and 13: split sizes verified against schema.json; corrupt files named ---

def _copy_dataset(src: str, dst) -> str:
    import shutil

    shutil.copytree(src, str(dst))
    return str(dst)


def _first_records(path: str, keep: int) -> None:
    import tensorflow as tf

    recs = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    with tf.io.TFRecordWriter(path) as w:
        for r in recs[:keep]:
            w.write(r)


def test_split_cut_at_a_record_boundary_is_detected(synth_dir, tmp_path):
    from mdr_tf.data import load_arrays
    from mdr_tf.training import evaluate_split

    d = _copy_dataset(synth_dir, tmp_path / "ds")
    schema = Schema.load(d)
    n0 = schema.counts("test")[0]
    path = schema.files("test", [0])[0]
    _first_records(path, n0 - 37)
    with pytest.raises(ValueError, match=rf"{path}.*{n0 - 37}.*schema.json.*{n0}"):
        load_arrays(schema, "test")
    from mdr_tf.models.backbones import BackboneModel

    m = BackboneModel(schema.to_config(), hidden_units=[4])
    m.build()
    with pytest.raises(ValueError, match="schema.json"):
        evaluate_split(m, schema, "test")
    x, y = load_arrays(schema, "valid")  # control: an intact split loads
    assert len(y) == sum(schema.counts("valid"))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_tfrecord_error_names_the_file(synth_dir, tmp_path, damage):
    from mdr_tf.data import load_arrays

    d = _copy_dataset(synth_dir, tmp_path / "ds")
    schema = Schema.load(d)
    path = schema.files("train", [1])[0]
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[: len(data) // 2 + 3]  # cut inside a record
    else:
        data[len(data) // 2] ^= 0xFF  # CRC mismatch
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match=rf"{path}: corrupt or truncated TFRecord"):
        load_arrays(schema, "train")


@pytest.mark.parametrize("text,match", [("{not json", "not valid JSON"), ('{"features": []}', "num_domains"),
                                        ('{"features": [{"name": "a"}], "num_domains": 2}', "kind")])
def test_invalid_schema_json_error_names_the_file(synth_dir, tmp_path, text, match):
    d = _copy_dataset(synth_dir, tmp_path / "ds")
    open(os.path.join(d, "schema.json"), "w").write(text)
    with pytest.raises(ValueError, match=rf"{os.path.join(d, 'schema.json')}: .*{match}"):
        Schema.load(d)


# --- dataset and export directories honour the umask (TF Serving may run as another user) ---

def test_dataset_and_export_directories_honour_the_umask(tmp_path):
    from data_prep.synthetic import generate
    from mdr_tf.export import export_saved_model
    from mdr_tf.models.backbones import BackboneModel

    old = os.umask(0o022)
    try:
        out = str(tmp_path / "data")
        generate(out, num_rows=300, num_domains=2, num_users=5, num_items=5, num_context=2, seed=0)
        m = BackboneModel(TINY, hidden_units=[4])
        m.build()
        exp = export_saved_model(m, str(tmp_path / "serving"), version=3)
    finally:
        os.umask(old)
    for d in (out, os.path.join(out, "domain_0"), exp, os.path.join(exp, "variables")):
        assert oct(os.stat(d).st_mode & 0o777) == oct(0o755), d


# --- quiet start-up, no alarming Keras warnings, Ctrl-C says how to resume ---

def test_cli_start_up_lines_are_dropped_and_ctrl_c_says_rerun(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("MDR_TF_TF_LOGS", None)
    # Every entry point (preprocessors, experiments) runs through run_cli.
    code = ("import sys\nfrom data_prep.common import run_cli\ndef body(f):\n    import tensorflow as tf\n"
            "    print('sum', float(tf.reduce_sum(tf.ones([3]))), file=sys.stderr)\nrun_cli(lambda: None, body)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sum 3.0" in r.stderr  # control: other stderr lines pass through
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard"):
        assert noise not in r.stderr, r.stderr[:2000]
    code = ("from data_prep.common import run_cli\ndef body(f):\n    raise KeyboardInterrupt\n"
            "run_cli(lambda: None, body)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 130 and "rerun the same command to resume" in r.stderr
    assert "Traceback" not in r.stderr


def test_fit_emits_no_alarming_keras_warnings(synth_schema):
    import warnings

    from mdr_tf import training

    cfg = training.TrainConfig(epochs=1, batch_size=256, steps_per_execution=4, fused=False, jit_compile=False)
    m = registry.get("dnn").build(synth_schema, hidden_units=[4], embedding_dim=4)
    m.build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training.fit(m, synth_schema, cfg)
    msgs = [str(w.message) for w in caught]
    assert not [x for x in msgs if "ran out of data" in x or "shuffle=True" in x], msgs


def test_readme_snippet_runs(synth_dir, tmp_path, monkeypatch):
    import re

    text = open(os.path.join(REPO, "README.md")).read()
    code = re.search(r"## Using it in your own code.*?```python\n(.*?)```", text, re.S).group(1)
    assert "ExactEarlyStopping" in code and "evaluate_split" in code
    code = code.replace('"data/ml100k"', repr(synth_dir)).replace("epochs=20", "epochs=1")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["stop"].best_epoch >= 1
    assert os.path.exists(tmp_path / "model.keras") and os.path.isdir(tmp_path / "serving" / "mlora_dcn" / "1")


def test_corrupt_tfrecord_while_streaming_training_names_the_file(synth_dir, tmp_path, monkeypatch):
    from mdr_tf import data, training

    d = _copy_dataset(synth_dir, tmp_path / "ds")
    schema = Schema.load(d)
    path = schema.files("train", [2])[0]
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    monkeypatch.setattr(data, "IN_MEMORY_MAX_VALUES", 0)  # the streaming input path (large datasets)
    m = registry.get("dnn").build(schema, hidden_units=[4], embedding_dim=4)
    m.build()
    cfg = training.TrainConfig(epochs=1, batch_size=256, steps_per_execution=1, fused=False, jit_compile=False)
    with pytest.raises(ValueError, match=rf"{path}: corrupt or truncated TFRecord"):
        training.fit(m, schema, cfg)
