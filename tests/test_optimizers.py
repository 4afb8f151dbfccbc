"""Lazy (sparse) Adam: only the embedding rows a batch reads move (mdr_tf/optimizers.py).

Rows the batch did not read keep the table and both moment slots bit-identical; the rows
it read follow a NumPy Adam on the duplicate-summed gradient with the global bias
correction; dense variables get Keras Adam's update exactly; with every row in every
batch it is dense Adam (the control). Also: XLA, the fused K-step program, ``.keras``
round trip, mixed_float16 (LossScaleOptimizer), MirroredStrategy, ``fit``, ALPT's
``rerounded="touched"`` and the trial key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from mdr_tf import registry
from mdr_tf.optimizers import LazyAdam, make_optimizer
from mdr_tf.training import TrainConfig, compile_model
from tests.helpers import random_inputs

LR, B1, B2, EPS = 0.05, 0.9, 0.999, 1e-8


def _slots(opt, var):
    i = opt._get_variable_index(var)
    return opt._momentums[i].numpy().copy(), opt._velocities[i].numpy().copy()


def _numpy_lazy_step(state, idx, vals, t, amsgrad=False):
    """Reference lazy Adam step in float64 on ``state = {w, m, v, vh}`` (modified in place)."""
    g = np.zeros_like(state["w"])
    np.add.at(g, idx, vals)  # duplicate ids summed by hand
    r = np.unique(idx)
    state["m"][r] = B1 * state["m"][r] + (1 - B1) * g[r]
    state["v"][r] = B2 * state["v"][r] + (1 - B2) * g[r] ** 2
    v = state["v"]
    if amsgrad:
        state["vh"][r] = np.maximum(state["vh"][r], state["v"][r])
        v = state["vh"]
    alpha = LR * np.sqrt(1 - B2 ** t) / (1 - B1 ** t)
    state["w"][r] -= alpha * state["m"][r] / (np.sqrt(v[r]) + EPS)


def _sparse(idx, vals, n):
    return tf.IndexedSlices(tf.constant(vals, tf.float32), tf.constant(idx, tf.int32), tf.constant([n, vals.shape[1]]))


# --- the update itself --------------------------------------------------------------------
FORMS = ["masked_dense", "rows_unique", "rows_summed"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_rows_read_follow_numpy_adam_and_unread_rows_stay_bit_identical(amsgrad, form):
    rng = np.random.default_rng(0)
    n, d = 12, 3
    w0 = rng.normal(size=(n, d)).astype(np.float32)
    table = keras.Variable(w0, name="table")
    opt = LazyAdam(LR, beta_1=B1, beta_2=B2, epsilon=EPS, amsgrad=amsgrad)
    opt.sparse_form = form
    opt.build([table])
    ref = {k: np.zeros((n, d)) for k in ("m", "v", "vh")}
    ref["w"] = w0.astype(np.float64)
    batches = [np.array([1, 4, 1, 7, 4, 4]), np.array([2, 4, 9, 2]), np.array([0, 11, 7])]
    for t, idx in enumerate(batches, start=1):
        vals = rng.normal(size=(len(idx), d)).astype(np.float32)
        before = (table.numpy().copy(), *_slots(opt, table))
        opt.apply([_sparse(idx, vals, n)], [table])
        _numpy_lazy_step(ref, idx, vals, t, amsgrad)
        after = (table.numpy(), *_slots(opt, table))
        unread = np.setdiff1d(np.arange(n), idx)
        for b, a in zip(before, after):  # table, m, v: rows not read are bit-identical
            np.testing.assert_array_equal(a[unread], b[unread])
        read = np.unique(idx)
        np.testing.assert_allclose(after[0][read], ref["w"][read], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after[1][read], ref["m"][read], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(after[2][read], ref["v"][read], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(table.numpy(), ref["w"], rtol=1e-5, atol=1e-6)
    # rows 1 and 7 were read at step 1 and then not at step 2: their momentum is non-zero,
    # so dense Adam moves them at step 2 (the control below); here they kept their values
    assert np.abs(ref["m"][[1, 7]]).min() > 0


def test_dense_adam_moves_unread_rows_but_lazy_adam_does_not():
    """Control of the test above: the same two steps with Keras' dense Adam change rows not in step 2."""
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(6, 2)).astype(np.float32)
    g1, g2 = rng.normal(size=(2, 2)).astype(np.float32), rng.normal(size=(1, 2)).astype(np.float32)
    moved = {}
    for opt in (keras.optimizers.Adam(LR, epsilon=EPS), LazyAdam(LR, epsilon=EPS)):
        table = keras.Variable(w0)
        opt.apply([_sparse([0, 3], g1, 6)], [table])
        row0 = table.numpy()[0].copy()
        opt.apply([_sparse([3], g2, 6)], [table])  # row 0 not read
        moved[type(opt).__name__] = float(np.abs(table.numpy()[0] - row0).max())
    assert moved["LazyAdam"] == 0.0 and moved["Adam"] > 1e-3, moved


def test_dense_variables_get_keras_adam_update_exactly():
    rng = np.random.default_rng(2)
    w0, b0 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    out = {}
    for opt in (keras.optimizers.Adam(LR, epsilon=EPS, amsgrad=True), LazyAdam(LR, epsilon=EPS, amsgrad=True)):
        w, b = keras.Variable(w0), keras.Variable(b0)
        for _ in range(3):
            opt.apply([tf.constant(rng.normal(size=(4, 3)), tf.float32), tf.constant(rng.normal(size=3), tf.float32)],
                      [w, b])
        out[type(opt).__name__] = (w.numpy(), b.numpy(), *_slots(opt, w))
        rng = np.random.default_rng(2)  # the same gradients for the second optimizer
        rng.normal(size=(4, 3)), rng.normal(size=(3,))
    for a, b in zip(out["Adam"], out["LazyAdam"]):
        np.testing.assert_array_equal(a, b)  # bit-identical: the same Keras code path


@pytest.mark.parametrize("duplicates", [False, True])
def test_every_row_in_every_batch_equals_dense_adam(duplicates):
    """With every row read at every step, lazy Adam is Adam on the dense gradient.

    Keras' Adam is given the dense gradient (``tf.convert_to_tensor`` sums duplicate ids):
    given the ``IndexedSlices`` itself, Keras 3.15 squares each duplicate before summing
    them (``v`` from ``Σg²``, not ``(Σg)²``; ``test_keras_adam_squares_duplicates_before_summing``).
    """
    rng = np.random.default_rng(3)
    n, d = 5, 4
    w0 = rng.normal(size=(n, d)).astype(np.float32)
    tables = {}
    for opt in (keras.optimizers.Adam(LR, epsilon=EPS), LazyAdam(LR, epsilon=EPS)):
        table = keras.Variable(w0)
        r = np.random.default_rng(4)
        for _ in range(4):
            idx = np.concatenate([r.permutation(n), r.integers(0, n, 3 if duplicates else 0)])  # all rows
            g = _sparse(idx, r.normal(size=(len(idx), d)).astype(np.float32), n)
            opt.apply([g if isinstance(opt, LazyAdam) else tf.convert_to_tensor(g)], [table])
        tables[type(opt).__name__] = (table.numpy(), *_slots(opt, table))
    for a, b in zip(tables["Adam"], tables["LazyAdam"]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert np.abs(tables["LazyAdam"][0] - w0).min() > 0  # every row moved


def test_keras_adam_squares_duplicates_before_summing():
    """Why the control above densifies the gradient: Keras 3.15's Adam with an ``IndexedSlices``
    gradient computes ``v`` from ``Σ g_i²`` over a row's duplicates, torch's (dense) and lazy
    Adam from ``(Σ g_i)²``. (If Keras changes this, this test fails and the note in
    docs/operations.md can go.)"""
    g = _sparse(np.array([1, 1, 2]), np.array([[1.0], [1.0], [2.0]], np.float32), 4)
    v = {}
    for name, opt, grad in (("keras_sparse", keras.optimizers.Adam(0.1), g),
                            ("keras_dense", keras.optimizers.Adam(0.1), tf.convert_to_tensor(g)),
                            ("lazy", LazyAdam(0.1), g)):
        table = keras.Variable(np.zeros((4, 1), np.float32))
        opt.apply([grad], [table])
        v[name] = _slots(opt, table)[1][:, 0]
    np.testing.assert_allclose(v["keras_dense"], [0, 0.004, 0.004, 0], rtol=1e-6)  # (1+1)², 2², × (1 − β₂)
    np.testing.assert_allclose(v["lazy"], v["keras_dense"], rtol=1e-6)
    np.testing.assert_allclose(v["keras_sparse"], [0, 0.002, 0.004, 0], rtol=1e-6)  # 1² + 1² for row 1


def test_the_form_follows_table_and_batch_sizes():
    from mdr_tf.optimizers import _auto_form

    assert _auto_form(1000, 300) == "masked_dense"  # small table: elementwise + mask
    assert _auto_form(2_400_000, 16_384 * 24) == "rows_unique"  # outside XLA
    seen = []
    tf.function(lambda: seen.append(_auto_form(2_400_000, 16_384 * 24)) or tf.constant(0), jit_compile=True)()
    assert seen == ["rows_summed"]  # inside XLA
    assert _auto_form(2_400_000, None) == "rows_unique"


@pytest.mark.parametrize("form", FORMS)
def test_jit_compiled_step_equals_eager(form):
    rng = np.random.default_rng(5)
    n, d = 50, 4
    w0 = rng.normal(size=(n, d)).astype(np.float32)
    steps = [(rng.integers(0, n, 30), rng.normal(size=(30, d)).astype(np.float32)) for _ in range(3)]
    results = []
    for jit in (False, True):
        table, dense = keras.Variable(w0), keras.Variable(np.ones((d, 2), np.float32))
        opt = LazyAdam(LR, epsilon=EPS)
        opt.sparse_form = form
        opt.build([table, dense])

        def make_step(table, dense, opt):  # a closure: tf.function must not see the variables as arguments
            def step(idx, vals):
                opt.apply([tf.IndexedSlices(vals, idx, tf.constant([n, d])), tf.reduce_sum(vals) * tf.ones((d, 2))],
                          [table, dense])
            return step

        step = make_step(table, dense, opt)
        fn = tf.function(step, jit_compile=True) if jit else step
        for idx, vals in steps:
            fn(tf.constant(idx, tf.int32), tf.constant(vals))
        results.append((table.numpy(), dense.numpy(), *_slots(opt, table)))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    unread = np.setdiff1d(np.arange(n), np.concatenate([s[0] for s in steps]))
    assert len(unread) and np.array_equal(results[1][0][unread], w0[unread])


def test_settings_that_touch_every_row_are_refused():
    with pytest.raises(ValueError, match="weight_decay"):
        LazyAdam(weight_decay=0.01)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        LazyAdam(gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("lazyadam", 1e-3, 1e-8)
    assert type(make_optimizer("adam", 1e-3, 1e-8)) is keras.optimizers.Adam


# --- in a model ---------------------------------------------------------------------------
def _dnn(schema, optimizer="lazy_adam", jit=False, **kwargs):
    keras.utils.set_random_seed(0)
    m = registry.get("dnn").build(schema, hidden_units=[8], embedding_dim=4, **kwargs)
    m.build()
    compile_model(m, TrainConfig(optimizer=optimizer, steps_per_execution=1, jit_compile=jit, learning_rate=1e-2))
    return m


def _batch(schema, n, seed, constant_ids=False):
    x = random_inputs(schema, n, seed)
    if constant_ids:  # every categorical feature reads one row only
        for f in schema.categorical:
            x[f.name] = np.ones_like(x[f.name])
    return x, (np.random.default_rng(seed).random((n, 1)) < 0.5).astype("float32")


def _rows_read(model, x):
    emb, rows = model.embedding, set()
    for f in emb.schema.categorical:
        start, end = emb.table_rows(f.name)
        rows |= {start + int(v) if 0 <= v < end - start else start for v in x[f.name]}
    start, _ = emb.table_rows(emb.schema.domain_key)
    return rows | {start + int(v) for v in x[emb.schema.domain_key]}


def _table_state(model):
    t = model.embedding.table
    return (t.numpy().copy(), *_slots(model.optimizer, t))


def test_fused_xla_k_step_program_equals_eager_steps_and_keeps_unread_rows(synth_schema):
    from mdr_tf.fused import install_fused_train_function

    (x1, y1), (x2, y2) = _batch(synth_schema, 64, 0), _batch(synth_schema, 64, 1, constant_ids=True)
    eager = _dnn(synth_schema)
    eager.train_on_batch(x1, y1)
    mid = _table_state(eager)
    eager.train_on_batch(x2, y2)
    end = _table_state(eager)
    unread = np.setdiff1d(np.arange(mid[0].shape[0]), sorted(_rows_read(eager, x2)))
    only_first = np.setdiff1d(sorted(_rows_read(eager, x1)), sorted(_rows_read(eager, x2)))
    assert len(only_first) > 10
    for a, b in zip(mid, end):
        np.testing.assert_array_equal(a[unread], b[unread])
    fused = _dnn(synth_schema, jit=True)
    fused.optimizer.sparse_form = "rows_summed"  # the large-table form under XLA (eager: masked_dense)
    install_fused_train_function(fused, (x1, y1))
    stacked = ({k: np.stack([x1[k], x2[k]]) for k in x1}, np.stack([y1, y2]))
    fused.fit(tf.data.Dataset.from_tensors(stacked), epochs=1, verbose=0)
    assert int(fused.optimizer.iterations.numpy()) == 2
    for a, b in zip(end, _table_state(fused)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(eager.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # control: dense Adam moves the rows read only by the first batch at the second step
    dense = _dnn(synth_schema, optimizer="adam")
    dense.train_on_batch(x1, y1)
    t_mid = dense.embedding.table.numpy()[only_first].copy()
    dense.train_on_batch(x2, y2)
    assert (dense.embedding.table.numpy()[only_first] != t_mid).mean() > 0.9


def test_keras_save_load_restores_lazy_adam_and_its_state(synth_schema, tmp_path):
    m = _dnn(synth_schema)
    for s in range(2):
        m.train_on_batch(*_batch(synth_schema, 32, s))
    path = str(tmp_path / "m.keras")
    m.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is LazyAdam
    assert loaded.optimizer.get_config() == m.optimizer.get_config()
    assert m.optimizer.get_config()["epsilon"] == 1e-8 and m.optimizer.get_config()["name"] == "lazy_adam"
    for a, b in zip(m.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x, y = _batch(synth_schema, 32, 7)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), m.predict(x, verbose=0))
    # and the next step is the same step
    m.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    np.testing.assert_allclose(loaded.embedding.table.numpy(), m.embedding.table.numpy(), rtol=1e-6, atol=1e-7)
    # the registered name alone rebuilds it (no custom_objects)
    ser = keras.saving.serialize_keras_object(m.optimizer)
    assert "mdr_tf>LazyAdam" in json.dumps(ser)
    assert type(keras.saving.deserialize_keras_object(ser)) is LazyAdam
    # an optimizer that cannot be rebuilt leaves the loaded model uncompiled, with a warning
    m.compile(optimizer=_Unregistered(), loss="binary_crossentropy")
    m.save(path)
    with pytest.warns(UserWarning, match="could not be restored"):
        again = keras.models.load_model(path)
    assert getattr(again, "optimizer", None) is None


class _Unregistered(keras.optimizers.Adam):
    """Not registered for serialization (like ``onboarding.MaskedAdam``)."""


def test_mixed_float16_loss_scaling_keeps_the_update_lazy(synth_schema):
    m = _dnn(synth_schema, dtype="mixed_float16")
    assert isinstance(m.optimizer, keras.optimizers.LossScaleOptimizer)
    assert type(m.optimizer.inner_optimizer) is LazyAdam
    (x1, y1), (x2, y2) = _batch(synth_schema, 64, 0), _batch(synth_schema, 64, 1, constant_ids=True)
    m.train_on_batch(x1, y1)
    table = m.embedding.table
    inner = m.optimizer.inner_optimizer
    mid = (table.numpy().copy(), *_slots(inner, table))
    m.train_on_batch(x2, y2)
    end = (table.numpy(), *_slots(inner, table))
    assert int(inner.iterations.numpy()) == 2  # both steps applied (finite gradients)
    read = sorted(_rows_read(m, x2))
    unread = np.setdiff1d(np.arange(mid[0].shape[0]), read)
    for a, b in zip(mid, end):
        np.testing.assert_array_equal(a[unread], b[unread])
    assert (end[0][read] != mid[0][read]).any(axis=1).all()  # the rows read moved


def test_fit_with_lazy_adam_learns_on_the_synthetic_fixture(synth_schema):
    from mdr_tf.trial import run_trial

    from mdr_tf.training import fused_input

    cfg = TrainConfig(epochs=3, batch_size=256, patience=3, optimizer="lazy_adam", steps_per_execution=4)
    assert fused_input(synth_schema, cfg, None) is not None  # fit takes the fused XLA K-step path
    row, model = run_trial("dnn", synth_schema, cfg, {"hidden_units": [16, 8], "embedding_dim": 8},
                           return_model=True)
    assert type(model.optimizer) is LazyAdam and model.jit_compile
    steps = sum(c // 256 for c in [sum(synth_schema.counts("train"))])
    assert int(model.optimizer.iterations.numpy()) == row["epochs_run"] * steps
    assert row["test_auc"] > 0.6, row["test_auc"]  # a floor; the invariants are the tests above


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    import mdr_tf
    from mdr_tf.optimizers import LazyAdam
    strategy = tf.distribute.MirroredStrategy()
    n, d = 10, 3
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(n, d)).astype(np.float32)
    idx = [np.array([1, 4, 1]), np.array([4, 6])]
    vals = [rng.normal(size=(len(i), d)).astype(np.float32) for i in idx]
    out = {"replicas": strategy.num_replicas_in_sync}
    for form in ("masked_dense", "rows_unique", "rows_summed"):
        with strategy.scope():
            table = keras.Variable(w0)
            opt = LazyAdam(0.05, epsilon=1e-8)
            opt.sparse_form = form
            opt.build([table])

        def replica_step(table=table, opt=opt):
            r = tf.distribute.get_replica_context().replica_id_in_sync_group
            g = tf.cond(tf.equal(r, 0),
                        lambda: (tf.constant(idx[0], tf.int32), tf.constant(vals[0])),
                        lambda: (tf.constant(np.pad(idx[1], (0, 1), constant_values=6), tf.int32),
                                 tf.constant(np.concatenate([vals[1], np.zeros((1, d), np.float32)]))))
            opt.apply([tf.IndexedSlices(g[1], g[0], tf.constant([n, d]))], [table])

        step = tf.function(replica_step)
        for _ in range(2):
            strategy.run(step)
        out[form] = {"table": [v.numpy().tolist() for v in strategy.experimental_local_results(table.value)],
                     "m": [v.numpy().tolist() for v in strategy.experimental_local_results(opt._momentums[0].value)]}
    json.dump(out, open(sys.argv[1], "w"))
""")


def test_mirrored_strategy_sums_the_replicas_rows(tmp_path):
    """Two replicas: the rows of both replicas' sparse gradients are summed (all-reduce), then lazy Adam."""
    out = tmp_path / "mirrored.json"
    env = dict(os.environ, PYTHONPATH=os.getcwd(), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    p = subprocess.run([sys.executable, "-c", MIRRORED, str(out)], env=env, capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.load(open(out))
    assert res["replicas"] == 2
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(10, 3)).astype(np.float32)
    idx = np.array([1, 4, 1, 4, 6, 6])
    vals = [rng.normal(size=(3, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)]
    vals = np.concatenate([vals[0], vals[1], np.zeros((1, 3), np.float32)])
    ref = {"w": w0.astype(np.float64), "m": np.zeros((10, 3)), "v": np.zeros((10, 3)), "vh": None}
    for t in (1, 2):
        _numpy_lazy_step(ref, idx, vals, t)
    unread = np.setdiff1d(np.arange(10), idx)
    for form in FORMS:
        t0, t1 = (np.array(t) for t in res[form]["table"])
        np.testing.assert_array_equal(t0, t1)  # the replicas' copies agree
        np.testing.assert_allclose(t0, ref["w"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.array(res[form]["m"][0]), ref["m"], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(t0[unread], w0[unread])


# --- ALPT's rerounded="touched" -----------------------------------------------------------
def test_alpt_touched_with_lazy_adam_leaves_unread_rows_bit_identical(synth_schema):
    moved = {}
    for optimizer in ("lazy_adam", "adam"):
        keras.utils.set_random_seed(0)
        m = registry.get("dnn").build(synth_schema, hidden_units=[8], embedding_dim=4, embedding_precision="alpt",
                                      embedding_bits=8, embedding_quantization={"rerounded": "touched",
                                                                                "delta_lr": 1e-4})
        m.build()
        compile_model(m, TrainConfig(optimizer=optimizer, steps_per_execution=1, jit_compile=False,
                                     learning_rate=1e-2))
        q = m.embedding.quantized
        assert type(q.delta_optimizer).__name__ == ("LazyAdam" if optimizer == "lazy_adam" else "Adam")
        (x1, y1), (x2, y2) = _batch(synth_schema, 64, 0), _batch(synth_schema, 64, 1, constant_ids=True)
        m.train_on_batch(x1, y1)
        state = lambda: (q.codes.numpy().copy(), q.delta.numpy().copy(), q.work.numpy().copy(),  # noqa: E731
                         *_slots(m.optimizer, q.work), *_slots(q.delta_optimizer, q.delta))
        mid = state()
        m.train_on_batch(x2, y2)
        end = state()
        read = sorted(_rows_read(m, x2))
        unread = np.setdiff1d(np.arange(q.input_dim), read)
        only_first = np.setdiff1d(sorted(_rows_read(m, x1)), read)
        if optimizer == "lazy_adam":
            # integer table, Δ, float rows, and both optimizers' slots of the rows not read
            for a, b in zip(mid, end):
                np.testing.assert_array_equal(a[unread], b[unread])
            assert (end[1][read] != mid[1][read]).mean() > 0.9  # Δ of the rows read learns
        moved[optimizer] = float((end[2][only_first] != mid[2][only_first]).mean())
    # control: dense Adam's momentum moves the float rows read only at step 1 (their
    # integers stay, as "touched" re-quantises only the rows read)
    assert moved["lazy_adam"] == 0.0 and moved["adam"] > 0.9, moved


# --- the trial key ------------------------------------------------------------------------
def _toy_builder(schema, width: int = 8, **kwargs) -> keras.Model:
    """A builder for the trial-key test (never called)."""
    raise AssertionError("not built")


def test_trial_key_names_the_optimizer_only_when_not_the_default(monkeypatch):
    from experiments.common import trial_key

    monkeypatch.setitem(registry.REGISTRY, "toy", registry.ModelSpec("toy", f"{__name__}:_toy_builder"))
    # the default optimizer is not named in the key; the training revision is (trials logged
    # before duplicate ids were summed must run again: their arithmetic was Keras' raw one)
    default = trial_key("toy", TrainConfig(), {}, "data")
    assert trial_key("toy", TrainConfig(optimizer="adam"), {}, "data") == default
    assert trial_key("toy", TrainConfig(optimizer="lazy_adam"), {}, "data") not in (default, PRE_OPTIMIZER_KEY)
    assert default != PRE_OPTIMIZER_KEY
    monkeypatch.setattr("experiments.common.TRAINING_REVISION", 1)
    assert trial_key("toy", TrainConfig(), {}, "data") != default


PRE_OPTIMIZER_KEY = "57e4c8c329990698"  # experiments.common.trial_key at commit 1038db4


@pytest.mark.parametrize("model_name", ["dnn", "star"])
def test_train_step_sums_duplicate_ids_like_torch_adam(synth_schema, model_name):
    """``MultiDomainModel.train_step`` gives Adam each gathered row's summed gradient.

    Reference: the same step with the gradients made dense (duplicates summed, as torch's
    dense embedding gradient) and Keras' Adam. Control: Keras' Adam on the raw
    ``IndexedSlices`` (what ``keras.Model.train_step`` does) ends elsewhere — STAR's
    per-domain parameters, gathered per sample, and the embedding rows read by many samples.
    """
    (x, y), (x2, y2) = _batch(synth_schema, 64, 3), _batch(synth_schema, 64, 4)

    def build():
        keras.utils.set_random_seed(0)
        m = registry.get(model_name).build(synth_schema, hidden_units=[8], embedding_dim=4)
        m.build()
        compile_model(m, TrainConfig(optimizer="adam", steps_per_execution=1, jit_compile=False, learning_rate=1e-2))
        return m

    ours = build()
    ours.train_on_batch(x, y)
    ours.train_on_batch(x2, y2)
    refs = {}
    for how in ("dense", "raw"):
        m = build()
        variables = m.trainable_variables
        for xb, yb in ((x, y), (x2, y2)):
            with tf.GradientTape() as tape:
                loss = keras.losses.BinaryCrossentropy()(yb, m(xb, training=True))
            grads = tape.gradient(loss, variables)
            if how == "dense":
                grads = [tf.convert_to_tensor(g) for g in grads]
            else:
                assert any(isinstance(g, tf.IndexedSlices) for g in grads)
            m.optimizer.apply(grads, variables)
        refs[how] = [v.numpy() for v in variables]
    got = [v.numpy() for v in ours.trainable_variables]
    for a, b in zip(got, refs["dense"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(got, refs["raw"]))
    assert worst > 1e-4, f"Keras' raw sparse update should differ from the summed one (max |Δ| {worst:.2e})"


def test_sum_duplicate_rows_sparse_outside_xla_dense_inside_and_untouched_for_lazy_adam():
    from mdr_tf.optimizers import sum_duplicate_rows

    g = _sparse(np.array([3, 1, 3]), np.array([[1.0, 2.0], [5.0, 5.0], [10.0, 20.0]], np.float32), 5)
    dense = tf.convert_to_tensor(g).numpy()
    (eager,) = sum_duplicate_rows([g])
    assert isinstance(eager, tf.IndexedSlices) and sorted(eager.indices.numpy()) == [1, 3]
    np.testing.assert_array_equal(tf.convert_to_tensor(eager).numpy(), dense)
    jit = tf.function(lambda v, i: sum_duplicate_rows([tf.IndexedSlices(v, i, tf.constant([5, 2]))])[0],
                      jit_compile=True)(g.values, g.indices)
    np.testing.assert_array_equal(jit.numpy(), dense)  # XLA: the dense per-row sum
    lazy = LazyAdam()
    for opt in (lazy, keras.optimizers.LossScaleOptimizer(lazy)):
        (same,) = sum_duplicate_rows([g], opt)
        assert same is g  # LazyAdam sums duplicates itself and needs the rows
    (summed,) = sum_duplicate_rows([g], keras.optimizers.Adam())
    assert isinstance(summed, tf.IndexedSlices) and len(summed.indices) == 2
