"""Low-precision embedding tables (LPT-DR / LPT-SR / ALPT, Li et al. AAAI 2023)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mdr_tf import registry
from mdr_tf.layers.quantized_embedding import (hash_uniform, lsq_fake_quant, qrange, quantize,
                                               round_deterministic)
from tests.helpers import assert_roundtrips, random_inputs


def _model(schema, precision, bits=4, name="dnn", lr=1e-2, **quant):
    keras.utils.set_random_seed(0)
    m = registry.get(name).build(schema, hidden_units=[8], embedding_precision=precision, embedding_bits=bits,
                                 embedding_quantization=quant) if name == "dnn" else \
        registry.get(name).build(schema, embedding_precision=precision, embedding_bits=bits,
                                 embedding_quantization=quant)
    m.build()
    m.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy", jit_compile=False)
    return m


def _batch(schema, n=64, seed=0):
    x = random_inputs(schema, n, seed)
    y = (np.random.default_rng(seed).random((n, 1)) < 0.5).astype("float32")
    return x, y


def _rows_read(model, x):
    """Global rows of the fused table a batch reads (incl. every domain-id row it names)."""
    emb = model.embedding
    rows = set()
    for f in emb.schema.categorical:
        start, end = emb.table_rows(f.name)
        rows |= {start + int(v) if 0 <= v < end - start else start for v in x[f.name]}
    start, _ = emb.table_rows(emb.schema.domain_key)
    rows |= {start + int(v) for v in x[emb.schema.domain_key]}
    return rows


# --- the quantiser ------------------------------------------------------------------------
def test_stochastic_rounding_is_unbiased_and_deterministic_rounding_idempotent():
    n = 200_000
    for z in (0.3, -1.75, 2.5):
        u = hash_uniform(tf.range(n), 1, tf.constant([7, 11]))[:, 0]
        r = quantize(tf.fill([n], z), 1.0, 8, stochastic=True, u=u).numpy()
        p = z - np.floor(z)
        sigma = np.sqrt(p * (1 - p) / n)
        assert abs(r.mean() - z) < 4 * sigma, (z, r.mean())
        assert set(np.unique(r)) <= {np.floor(z), np.floor(z) + 1}
    # a fresh step seed gives different draws (the RNG is not constant)
    u1 = hash_uniform(tf.range(1000), 4, tf.constant([1, 2])).numpy()
    u2 = hash_uniform(tf.range(1000), 4, tf.constant([1, 3])).numpy()
    assert (u1 != u2).mean() > 0.99 and 0 <= u1.min() and u1.max() < 1
    # deterministic: ⌊z + ½⌋, clipped; Q_D(Δ·Q_D(w)) = Q_D(w)
    w = np.random.default_rng(0).normal(0, 0.3, 1000).astype("float32")
    q1 = quantize(w, 0.05, 4).numpy()
    np.testing.assert_array_equal(q1, np.clip(np.floor(w / 0.05 + 0.5), -8, 7))
    np.testing.assert_array_equal(quantize(0.05 * q1, 0.05, 4).numpy(), q1)
    assert round_deterministic(tf.constant(2.5)).numpy() == 3.0


@pytest.mark.parametrize("bits", [2, 8])
def test_delta_gradient_matches_closed_form_in_three_regions(bits):
    qn, qp = qrange(bits)
    delta = 0.1
    # rows: below the range, inside, above (d = 3 columns each)
    z = np.array([[qn - 2.3, qn - 0.5, qn - 1.0], [qn + 0.7, 0.26, qp - 0.6], [qp + 0.4, qp + 3.0, qp + 1.1]],
                 np.float32)
    w = tf.constant(z * delta)
    d = tf.Variable(np.full((3, 1), delta, np.float32))
    g_out = np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32)
    scale = 0.37
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(w)
        y = lsq_fake_quant(w, d, bits, scale)
        loss = tf.reduce_sum(y * g_out)
    gd = tape.gradient(loss, d).numpy()
    gw = tape.gradient(loss, w).numpy()
    zz = z.astype(np.float64)
    inside = (zz > qn) & (zz < qp)
    dd = np.where(inside, np.floor(zz + 0.5) - zz, np.where(zz <= qn, qn, qp))
    np.testing.assert_allclose(gd[:, 0], scale * (g_out * dd).sum(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(gw, g_out * inside)
    np.testing.assert_allclose(y.numpy(), delta * np.clip(np.floor(zz + 0.5), qn, qp), rtol=1e-6)
    # per-table Δ: one scalar, the same closed form summed over all rows
    dt = tf.Variable([[delta]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(lsq_fake_quant(w, tf.reshape(dt, [1, 1]), bits, scale) * g_out)
    np.testing.assert_allclose(tape.gradient(loss, dt).numpy()[0, 0], scale * (g_out * dd).sum(), rtol=1e-4)


# --- the training step -------------------------------------------------------------------
@pytest.mark.parametrize("precision,bits", [("lpt_dr", 2), ("lpt_sr", 4), ("alpt", 2), ("alpt", 8)])
def test_every_step_keeps_the_grid_and_leaves_unread_rows_alone(synth_schema, precision, bits):
    # rerounded="touched" (Hetu): only the batch's rows are re-quantised
    m = _model(synth_schema, precision, bits, delta_lr=1e-3 if bits == 2 else 1e-5, rerounded="touched")
    q = m.embedding.quantized
    qn, qp = qrange(bits)
    assert q.codes.dtype == ("int8" if bits <= 8 else "int16")
    changed_rows = 0
    for step in range(4):
        x, y = _batch(synth_schema, 32, seed=step)
        codes0, delta0 = q.codes.numpy().copy(), q.delta.numpy().copy()
        m.train_on_batch(x, y)
        codes, delta = q.codes.numpy(), q.delta.numpy()
        assert qn <= codes.min() and codes.max() <= qp
        # what the model serves is Δ·integer
        e = m.embedding(x)["fields"].numpy()
        rows = m.embedding.table_rows("user_id")
        uid = x["user_id"]
        np.testing.assert_array_equal(e[:, 0, :], delta[rows[0] + uid] * codes[rows[0] + uid])
        read = sorted(_rows_read(m, x))
        unread = np.setdiff1d(np.arange(q.input_dim), read)
        np.testing.assert_array_equal(codes[unread], codes0[unread])  # bit-identical
        np.testing.assert_array_equal(delta[unread], delta0[unread])
        changed_rows += int((codes[read] != codes0[read]).any(axis=1).sum())
        if precision == "alpt":
            assert np.mean(delta[read] != delta0[read]) > 0.9  # Δ learns on the rows read
            assert delta.min() > 1e-6  # and stays far from the floor
        else:
            np.testing.assert_array_equal(delta, delta0)
    assert changed_rows > 0  # control: the rows read do move


def test_alpt_with_zero_delta_rate_and_deterministic_rounding_equals_lpt_dr(synth_schema):
    ref = _model(synth_schema, "lpt_dr", 4)
    same = _model(synth_schema, "alpt", 4, delta_lr=0.0, rounding="deterministic")
    moving = _model(synth_schema, "alpt", 4, delta_lr=1e-3, rounding="deterministic")
    for step in range(3):
        x, y = _batch(synth_schema, 32, seed=step)
        for m in (ref, same, moving):
            m.train_on_batch(x, y)
    qr, qs, qm = (m.embedding.quantized for m in (ref, same, moving))
    np.testing.assert_array_equal(qs.codes.numpy(), qr.codes.numpy())
    np.testing.assert_array_equal(qs.delta.numpy(), qr.delta.numpy())
    x, _ = _batch(synth_schema, 64, seed=9)
    np.testing.assert_array_equal(same.predict(x, verbose=0), ref.predict(x, verbose=0))
    np.testing.assert_array_equal(ref.predict(x, verbose=0), ref.predict(x, verbose=0))  # deterministic serving
    assert np.any(qm.delta.numpy() != qr.delta.numpy())  # control: η_Δ > 0 changes Δ


def test_fp_default_is_the_float_table(synth_schema):
    m = registry.get("dnn").build(synth_schema, hidden_units=[8])
    m.build()
    assert m.embedding.quantized is None and m.embedding.table.dtype == "float32"
    names = [w.path for w in m.embedding.weights]
    assert names == [m.embedding.table.path]


def test_distribution_with_two_replicas_is_a_clear_error(synth_schema):
    class TwoReplicas:  # stands for a strategy with 2 replicas, without reconfiguring TF devices
        num_replicas_in_sync = 2

    from unittest import mock

    with mock.patch.object(tf.distribute, "has_strategy", return_value=True), \
            mock.patch.object(tf.distribute, "get_strategy", return_value=TwoReplicas()):
        with pytest.raises(ValueError, match="one replica"):
            _model(synth_schema, "alpt", 8)


# --- storage, export, the default training path ------------------------------------------
def test_fused_fit_learns_and_export_holds_integers(synth_schema, tmp_path):
    from mdr_tf.training import TrainConfig, evaluate_split, fit

    keras.utils.set_random_seed(0)
    m = registry.get("dnn").build(synth_schema, hidden_units=[16], embedding_precision="alpt", embedding_bits=8,
                                  embedding_quantization={"delta_lr": 1e-4})
    m.build()
    q = m.embedding.quantized
    codes0 = q.codes.numpy().copy()
    cfg = TrainConfig(epochs=1, batch_size=256, steps_per_execution=4, seed=0, learning_rate=1e-2)
    fit(m, synth_schema, cfg)
    assert m.train_function.__qualname__.startswith("install_fused_train_function")  # the fused path ran
    assert (q.codes.numpy() != codes0).mean() > 0.1
    assert evaluate_split(m, synth_schema, "test")["auc"] > 0.6  # learns (random: 0.5)
    # .keras and SavedModel: same predictions; the table is int8 codes + Δ, no float copy
    assert_roundtrips(m, str(tmp_path), atol=1e-6)
    loaded = keras.models.load_model(os.path.join(str(tmp_path), "model.keras"))
    np.testing.assert_array_equal(loaded.embedding.quantized.codes.numpy(), q.codes.numpy())
    reader = tf.train.load_checkpoint(os.path.join(str(tmp_path), "export", "1", "variables", "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    table = [k for k, s in shapes.items() if s == [q.input_dim, q.output_dim]]
    assert table and all(dtypes[k] == tf.int8 for k in table)
    from mdr_tf.params import parameter_report

    n, d = q.input_dim, q.output_dim
    assert parameter_report(m)["table_bytes"] == n * d + 4 * n
    assert q.table_bytes(packed=True) == n * d + 4 * n  # 8 bits


# One registry model per model class (all 30 names were checked once by hand; see docs/models/alpt.md).
ONE_PER_CLASS = ["mlora", "hamur", "midpg", "hierrec", "mmoe", "star", "m2m", "pepnet", "adasparse", "apg", "sarnet"]


def test_every_model_class_trains_with_a_low_precision_table(synth_schema):
    x, y = _batch(synth_schema, 32)
    for name in ONE_PER_CLASS:
        keras.utils.set_random_seed(0)
        m = registry.get(name).build(synth_schema, embedding_precision="lpt_sr", embedding_bits=4)
        m.build()
        m.compile(optimizer="adam", loss="binary_crossentropy", run_eagerly=True)
        c0 = m.embedding.quantized.codes.numpy().copy()
        loss = m.train_on_batch(x, y)
        assert np.isfinite(loss), name
        assert (m.embedding.quantized.codes.numpy() != c0).any(), name


def test_checkpoint_keeps_the_delta_optimizer_state(synth_schema, tmp_path):
    from mdr_tf.training import ExactEarlyStopping, _load_state, _save_state

    m = _model(synth_schema, "alpt", 4, delta_lr=1e-3)
    m.train_on_batch(*_batch(synth_schema, 32))
    stopper = ExactEarlyStopping(synth_schema)
    _save_state(m, stopper, 0, str(tmp_path))
    fresh = _model(synth_schema, "alpt", 4, delta_lr=1e-3)
    assert _load_state(fresh, ExactEarlyStopping(synth_schema), str(tmp_path)) == 1
    want = m.embedding.quantized.delta_optimizer.variables
    got = fresh.embedding.quantized.delta_optimizer.variables
    assert any(np.any(np.asarray(v) != 0) for v in want[2:])  # Adam moments of Δ are not trivial
    for a, b in zip(want, got):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(fresh.embedding.quantized.codes.numpy(), m.embedding.quantized.codes.numpy())
    # the float rows are re-synchronised from the loaded integers
    q = fresh.embedding.quantized
    np.testing.assert_array_equal(q.work.numpy(), q.codes.numpy() * q.delta.numpy())


def test_rerounding_the_whole_table_moves_unread_rows_by_momentum(synth_schema):
    m = _model(synth_schema, "lpt_dr", 8, rerounded="all")
    q = m.embedding.quantized
    x, y = _batch(synth_schema, 32, seed=0)
    m.train_on_batch(x, y)
    x2, y2 = _batch(synth_schema, 32, seed=1)
    unread = np.setdiff1d(np.arange(q.input_dim), sorted(_rows_read(m, x2)))
    moved = np.setdiff1d(unread, np.setdiff1d(np.arange(q.input_dim), sorted(_rows_read(m, x))))  # read only at step 1
    codes0 = q.codes.numpy().copy()
    m.train_on_batch(x2, y2)
    assert (q.codes.numpy()[moved] != codes0[moved]).any()  # Adam's momentum reaches them (mpe)
    np.testing.assert_array_equal(q.work.numpy(), q.codes.numpy() * q.delta.numpy())


# --- rerounded="all" (the default), the step's cost-saving forms ---------------------------
def _two_pass_reference_step(model, q, data):
    """ALPT's step as first written: the second pass's tape watches every variable it reads."""
    from keras.src.trainers.data_adapters import data_adapter_utils

    from mdr_tf.optimizers import sum_duplicate_rows

    x, y, sw = data_adapter_utils.unpack_x_y_sample_weight(data)
    q.sync_work()
    with q.training_pass("work") as touched, tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw, training=True)
    variables = list(model.trainable_variables) + [q.work]
    # duplicate ids summed before the optimizer, as every training step does (training revision 2)
    model.optimizer.apply(sum_duplicate_rows(tape.gradient(loss, variables), model.optimizer), variables)
    rows = tf.concat(touched, axis=0)
    with q.training_pass("lsq"), tf.GradientTape() as tape2:
        tape2.watch(q.delta.value)
        loss2 = model._compute_loss(x=x, y=y, y_pred=model(x, training=True), sample_weight=sw, training=True)
    q.update_delta(tape2.gradient(loss2, q.delta.value), rows)
    q.requantize_changed()
    return {}


def test_delta_only_second_pass_equals_the_full_two_pass_step(synth_schema):
    import types

    fast = _model(synth_schema, "alpt", 4, delta_lr=1e-3)
    ref = _model(synth_schema, "alpt", 4, delta_lr=1e-3)
    q_ref = ref.embedding.quantized
    ref.train_step = types.MethodType(lambda self, data: _two_pass_reference_step(self, q_ref, data), ref)
    d0 = fast.embedding.quantized.delta.numpy().copy()
    for step in range(3):
        x, y = _batch(synth_schema, 32, seed=step)
        fast.train_on_batch(x, y)
        ref.train_on_batch(x, y)
    qf = fast.embedding.quantized
    np.testing.assert_array_equal(qf.codes.numpy(), q_ref.codes.numpy())
    np.testing.assert_array_equal(qf.delta.numpy(), q_ref.delta.numpy())
    for a, b in zip(fast.trainable_variables, ref.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert np.mean(qf.delta.numpy() != d0) > 0.1  # control: Δ did learn


@pytest.mark.parametrize("precision,bits", [("lpt_sr", 4), ("alpt", 8)])
def test_whole_table_rerounding_keeps_the_grid_and_never_read_rows(synth_schema, precision, bits):
    m = _model(synth_schema, precision, bits, delta_lr=1e-5)
    q = m.embedding.quantized
    assert q.rerounded == "all"  # the default
    qn, qp = qrange(bits)
    codes_init, delta_init = q.codes.numpy().copy(), q.delta.numpy().copy()
    ever_read: set = set()
    for step in range(3):
        x, y = _batch(synth_schema, 32, seed=step)
        m.train_on_batch(x, y)
        ever_read |= _rows_read(m, x)
        codes, delta = q.codes.numpy(), q.delta.numpy()
        assert qn <= codes.min() and codes.max() <= qp
        np.testing.assert_array_equal(q.work.numpy(), codes * delta)  # float rows = stored values
        never = np.setdiff1d(np.arange(q.input_dim), sorted(ever_read))
        assert len(never) > 0
        np.testing.assert_array_equal(codes[never], codes_init[never])  # no gradient, no momentum: identical
        np.testing.assert_array_equal(delta[never], delta_init[never])
    read = sorted(ever_read)
    assert (codes[read] != codes_init[read]).any(axis=1).mean() > 0.5  # control: rows read move


def test_touched_rerounding_discards_the_momentum_of_unread_rows(synth_schema):
    """The mechanism behind "touched"'s accuracy loss: a row read at step 1 only does not move at step 2."""
    moved = {}
    for mode in ("all", "touched"):
        m = _model(synth_schema, "lpt_dr", 8, rerounded=mode)
        q = m.embedding.quantized
        x, y = _batch(synth_schema, 32, seed=0)
        m.train_on_batch(x, y)
        x2, y2 = _batch(synth_schema, 32, seed=1)
        only_first = sorted(_rows_read(m, x) - _rows_read(m, x2))
        codes0 = q.codes.numpy().copy()
        m.train_on_batch(x2, y2)
        moved[mode] = (q.codes.numpy()[only_first] != codes0[only_first]).mean()
    assert moved["touched"] == 0.0 and moved["all"] > 0.05, moved


def test_unchanged_values_keep_their_integer_under_stochastic_rounding():
    from mdr_tf.layers.quantized_embedding import QuantizedEmbedding

    q = QuantizedEmbedding(400, 16, "lpt_sr", bits=8, step="row", seed=3)
    q.build(None)
    rng = np.random.default_rng(0)
    codes = rng.integers(-128, 128, (400, 16)).astype("int8")
    delta = rng.uniform(1e-4, 1e-2, (400, 1)).astype("float32")
    q.codes.assign(codes)
    q.delta.assign(delta)
    q.sync_work()
    w = q.work.numpy()
    below = (w / delta) < codes  # (Δ·c)/Δ lands an ulp under c: ⌊z + u⌋ would give c − 1 for u ≈ 0
    assert below.any()  # control: the case exists
    np.testing.assert_array_equal(quantize(w, delta, 8, stochastic=True, u=np.zeros_like(w)).numpy()[below],
                                  codes[below] - 1)
    for _ in range(3):
        q.requantize_changed()
        np.testing.assert_array_equal(q.codes.numpy(), codes)
    q.work.assign(w + delta)  # a changed value is re-rounded: c + 1 (or c + 1 ± rounding at the range's edge)
    q.requantize_changed()
    changed = np.clip(codes.astype(int) + 1, -128, 127)
    assert np.mean(q.codes.numpy() == changed) > 0.99


def test_each_step_starts_from_the_stored_table(synth_schema):
    """Weights set between steps (early stopping's restore) are what the next step updates."""
    m = _model(synth_schema, "lpt_dr", 8)
    q = m.embedding.quantized
    x, y = _batch(synth_schema, 32, seed=0)
    m.train_on_batch(x, y)
    saved = m.get_weights()
    m.train_on_batch(*_batch(synth_schema, 32, seed=1))
    m.set_weights(saved)  # codes back to step 1; the float rows are still those of step 2
    assert (q.work.numpy() != q.codes.numpy() * q.delta.numpy()).any()
    m.optimizer.learning_rate.assign(0.0)  # a step that moves nothing
    m.train_on_batch(*_batch(synth_schema, 32, seed=2))
    np.testing.assert_array_equal(q.codes.numpy(), saved[[w.path for w in m.weights].index(q.codes.path)])


def test_first_pass_delta_gradient_is_the_lsq_closed_form(synth_schema):
    from mdr_tf.layers.quantized_embedding import QuantizedEmbedding

    for step in ("row", "table"):
        q = QuantizedEmbedding(50, 4, "alpt", bits=2, step=step, seed=0)
        q.build(None)
        rng = np.random.default_rng(1)
        q.work.assign(rng.normal(0, 0.01, (50, 4)).astype("float32"))
        rows = tf.constant(rng.integers(0, 50, 80), tf.int32)  # with duplicates
        g = tf.constant(rng.normal(size=(80, 4)).astype("float32"))
        with tf.GradientTape() as tape:
            tape.watch(q.delta.value)
            out = lsq_fake_quant(tf.gather(q.work, rows), q._delta_of(rows), q.bits, q._grad_scale())
            loss = tf.reduce_sum(out * g)
        want = tf.convert_to_tensor(tape.gradient(loss, q.delta.value)).numpy()
        g_rows = tf.math.unsorted_segment_sum(g, rows, 50)
        np.testing.assert_allclose(q.delta_gradient_from_rows(g_rows).numpy(), want, rtol=1e-5, atol=1e-7)
        assert np.abs(want).max() > 0


def test_first_pass_delta_runs_one_forward_and_learns_delta(synth_schema):
    calls = {}
    for mode in ("second_pass", "first_pass"):
        m = _model(synth_schema, "alpt", 4, delta_lr=1e-3, delta_grad=mode)
        q = m.embedding.quantized
        n = [0]
        call = m.call
        m.call = lambda *a, n=n, call=call, **k: (n.__setitem__(0, n[0] + 1), call(*a, **k))[1]
        d0 = q.delta.numpy().copy()
        x, y = _batch(synth_schema, 32, seed=0)
        m.train_on_batch(x, y)
        calls[mode] = n[0]
        read = sorted(_rows_read(m, x))
        assert np.mean(q.delta.numpy()[read] != d0[read]) > 0.9, mode
    assert calls["second_pass"] == 2 * calls["first_pass"], calls  # traced forwards per step
    with pytest.raises(ValueError, match="delta_grad"):
        _model(synth_schema, "alpt", 4, delta_grad="both")
