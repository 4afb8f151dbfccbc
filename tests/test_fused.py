"""Fused multi-step training equals Keras' step-by-step ``fit`` on the same batches."""

import keras
import numpy as np
import pytest

from mdr_tf import registry
from mdr_tf.data import in_memory_index_batches, make_dataset
from mdr_tf.fused import install_fused_train_function, stack_batches


def _model(schema, name, spe, jit=True):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    m = registry.get(name).build(schema, hidden_units=[16, 8], embedding_dim=8)
    m.build()
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(),
              jit_compile=jit, steps_per_execution=spe)
    return m


@pytest.mark.parametrize("name,gather_inside", [("dnn", False), ("mlora", False), ("dnn", True)])
def test_fused_steps_match_step_by_step_fit(synth_schema, name, gather_inside):
    def batches():  # a new dataset per run: every iterator of one re-randomises its order
        return make_dataset(synth_schema, "train", 128, seed=3, drop_remainder=True)

    n_batches = sum(1 for _ in batches())
    k = 4
    assert n_batches % k, "the test wants a short last block (a second compiled shape)"
    ref = _model(synth_schema, name, spe=1)
    ref_hist = ref.fit(batches(), epochs=2, verbose=0).history
    fused = _model(synth_schema, name, spe=1)
    if gather_inside:  # the dataset yields row indices; the compiled loop gathers the rows
        feats, labels, index_ds = in_memory_index_batches(
            synth_schema, "train", 128, shuffle=True, seed=3, mode="mixed", domains=[0, 1, 2],
            label_key=synth_schema.label_keys[0], drop_remainder=True)
        install_fused_train_function(fused, next(iter(batches())), columns=(feats, labels))
        hist = fused.fit(stack_batches(index_ds, k), epochs=2, verbose=0).history
    else:
        install_fused_train_function(fused, next(iter(batches())))
        hist = fused.fit(stack_batches(batches(), k), epochs=2, verbose=0).history
    assert int(fused.optimizer.iterations.numpy()) == int(ref.optimizer.iterations.numpy()) == 2 * n_batches
    for a, b in zip(ref.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The epoch loss is the same running mean over all steps.
    np.testing.assert_allclose(hist["loss"], ref_hist["loss"], rtol=1e-5)
    x = next(iter(batches()))[0]
    np.testing.assert_allclose(fused.predict(x, verbose=0), ref.predict(x, verbose=0), atol=1e-6)


def test_fused_rejects_unstackable_batches_and_multi_step_compile(synth_schema):
    ragged_tail = make_dataset(synth_schema, "train", 128, seed=0, drop_remainder=False)
    with pytest.raises(ValueError, match="drop_remainder"):
        stack_batches(ragged_tail, 4)
    m = _model(synth_schema, "dnn", spe=8)
    with pytest.raises(ValueError, match="steps_per_execution=1"):
        install_fused_train_function(m, next(iter(make_dataset(synth_schema, "train", 128))))


def test_training_fit_fuses_steps_and_matches_keras_loop(synth_schema):
    """``mdr_tf.training.fit`` fuses by default; the result equals Keras' multi-step loop."""
    from mdr_tf.training import TrainConfig, run_trial

    kw = {"hidden_units": [16, 8], "embedding_dim": 8}
    rows = {}
    for fused in (True, False):
        cfg = TrainConfig(epochs=2, batch_size=128, steps_per_execution=4, fused=fused, seed=0)
        rows[fused], model = run_trial("dnn", synth_schema, cfg, kw, return_model=True)
        assert (model.train_function.__module__ == "mdr_tf.fused") is fused
    assert rows[True]["test_auc"] > 0.6
    assert abs(rows[True]["test_auc"] - rows[False]["test_auc"]) < 1e-5
    assert rows[True]["best_epoch"] == rows[False]["best_epoch"]
