"""``ExactEarlyStopping`` on a hand-made validation sequence: best epoch, patience, min_delta, restore."""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest

from mdr_tf.schema import Schema
from mdr_tf.training import ExactEarlyStopping, NonFiniteLossError

SCHEMA = Schema.from_config({"features": [{"name": "u", "kind": "categorical", "vocab_size": 3}], "num_domains": 2})


class Snapshot(keras.callbacks.Callback):
    """Records the weights at every epoch end (runs before the stopper in the callback list)."""

    def __init__(self):
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([np.array(w) for w in self.model.get_weights()])


def _fake_validation(monkeypatch, aucs: list[float]) -> list[int]:
    """Makes the stopper's validation return ``aucs[k]`` at its k-th call; returns the call log."""
    calls: list[int] = []

    def fake(model, schema, split, batch_size=4096, domains=None):
        assert split == "valid"
        k = len(calls)
        calls.append(k)
        return {"auc": aucs[k], "mean_auc": aucs[k] - 0.01, "wauc": aucs[k], "logloss": 1.0 - aucs[k]}

    monkeypatch.setattr(sys.modules[ExactEarlyStopping.__module__], "evaluate_split", fake)
    return calls


def _model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    return m, x, x.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("restore", [True, False])
def test_stops_after_patience_and_restores_the_best_epoch(monkeypatch, restore):
    # Epoch:   1     2     3      4     5     6     (7, 8 never run)
    # AUC:   0.60  0.70  0.703  0.72  0.71  0.69   0.99  0.99
    # min_delta 0.005: epoch 3 (+0.003) is not an improvement; best = epoch 4; patience 2 stops after 6.
    calls = _fake_validation(monkeypatch, [0.60, 0.70, 0.703, 0.72, 0.71, 0.69, 0.99, 0.99])
    m, x, y = _model()
    snap = Snapshot()
    stopper = ExactEarlyStopping(SCHEMA, patience=2, min_delta=0.005, restore_on_train_end=restore)
    hist = m.fit(x, y, epochs=8, batch_size=16, verbose=0, shuffle=False, callbacks=[snap, stopper])
    assert len(calls) == 6 and stopper.stopped and len(stopper.history) == 6
    assert stopper.best_epoch == 4 and stopper.best == pytest.approx(0.72)
    assert [r["val_auc"] for r in stopper.history] == [0.60, 0.70, 0.703, 0.72, 0.71, 0.69]
    np.testing.assert_allclose(hist.history["val_auc_exact"], [0.60, 0.70, 0.703, 0.72, 0.71, 0.69])
    got = m.get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(snap.weights[3], snap.weights[5]))  # training moved them
    want = snap.weights[3] if restore else snap.weights[5]  # epoch 4's weights, or the last epoch's
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    stopper.restore_best()
    for a, b in zip(m.get_weights(), snap.weights[3]):
        np.testing.assert_array_equal(a, b)


def test_monitor_mean_auc_and_state_round_trip(monkeypatch):
    # mean_auc = auc − 0.01: the same ranking, so the best epoch is 2 of 3 (patience 5: no stop).
    _fake_validation(monkeypatch, [0.5, 0.8, 0.7])
    m, x, y = _model()
    stopper = ExactEarlyStopping(SCHEMA, monitor="mean_auc", patience=5)
    m.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[stopper])
    assert stopper.best_epoch == 2 and stopper.best == pytest.approx(0.79) and not stopper.stopped
    assert stopper.wait == 1
    again = ExactEarlyStopping(SCHEMA, monitor="mean_auc", patience=5)
    again.load_state(stopper.state())
    assert again.state() == stopper.state()
    with pytest.raises(ValueError, match="monitor must be auc, mean_auc or wauc"):
        ExactEarlyStopping(SCHEMA, monitor="loss")


def test_non_finite_loss_stops_with_a_clear_error(monkeypatch):
    _fake_validation(monkeypatch, [0.5])
    m, _, _ = _model()
    stopper = ExactEarlyStopping(SCHEMA)
    stopper.set_model(m)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* in epoch 3"):
        stopper.on_epoch_end(2, {"loss": float("nan")})
    assert m.stop_training
