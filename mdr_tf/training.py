"""Training one trial: compile, fit with exact-AUC early stopping, evaluate."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from mdr_tf import metrics as M
from mdr_tf.data import _cached_arrays, make_dataset
from mdr_tf.schema import Schema


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings of a trial (defaults: the papers' Adam 1e-3, batch 512).

    Attributes:
      epochs: maximum epochs.
      batch_size: training batch size.
      learning_rate: Adam learning rate.
      adam_epsilon: Adam epsilon (torch / TF1 use 1e-8; Keras' default is 1e-7).
      patience: epochs without improvement of ``monitor`` before stopping.
      monitor: validation metric for early stopping: "auc" (overall, HAMUR/SWR) or
        "mean_auc" (mean of domain AUCs, MLoRA).
      min_delta: improvement must exceed this (MLoRA: strict ``>``, i.e. 0).
      seed: trial seed (weights init, input order, dropout).
      mode: "mixed" or "single_domain" batches.
      steps_per_execution: train steps per compiled call (amortises per-step overhead).
      jit_compile: XLA-compile the train step ("auto" = on unless the model says no).
      eval_batch_size: batch size for validation / test prediction.
      verbose: Keras fit verbosity.
      tensorboard_dir: if set, log losses and the exact validation metrics to TensorBoard here.
    """

    epochs: int = 10
    batch_size: int = 512
    learning_rate: float = 1e-3
    adam_epsilon: float = 1e-8
    patience: int = 2
    monitor: str = "auc"
    min_delta: float = 0.0
    seed: int = 0
    mode: str = "mixed"
    steps_per_execution: int = 16
    jit_compile: Any = "auto"
    eval_batch_size: int = 4096
    verbose: int = 0
    tensorboard_dir: str | None = None


def predict_split(model: keras.Model, schema: Schema, split: str, batch_size: int = 4096,
                  label_key: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions of a whole split: (labels, probabilities, domains)."""
    feats, labels = _cached_arrays(schema, split, label_key or schema.label_keys[0],
                                   list(range(schema.num_domains)))
    probs = model.predict(feats, batch_size=batch_size, verbose=0).reshape(-1)
    return labels, probs, feats[schema.domain_key]


def evaluate_split(model: keras.Model, schema: Schema, split: str, batch_size: int = 4096) -> dict[str, float]:
    y, p, d = predict_split(model, schema, split, batch_size)
    return M.evaluate(y, p, d, schema.num_domains)


class ExactEarlyStopping(keras.callbacks.Callback):
    """Early stopping on the exact validation AUC; always restores the best epoch's weights.

    Logs ``val_auc_exact`` / ``val_mean_auc_exact`` / ``val_logloss_exact`` into the
    epoch logs. (Keras' ``EarlyStopping`` keeps the last weights when training ends
    without triggering; here the best-validation weights are always restored.)
    """

    def __init__(self, schema: Schema, monitor: str = "auc", patience: int = 2, min_delta: float = 0.0,
                 batch_size: int = 4096, log: Callable[[str], None] | None = None):
        super().__init__()
        if monitor not in ("auc", "mean_auc", "wauc"):
            raise ValueError(f"monitor must be auc, mean_auc or wauc, got {monitor!r}")
        self.schema, self.monitor, self.patience = schema, monitor, patience
        self.min_delta, self.batch_size, self.log = min_delta, batch_size, log
        self.best = -math.inf
        self.best_epoch = -1
        self.best_weights = None
        self.wait = 0
        self.history: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        res = evaluate_split(self.model, self.schema, "valid", self.batch_size)
        value = res[self.monitor]
        row = {"epoch": epoch + 1, "val_auc": res["auc"], "val_mean_auc": res["mean_auc"],
               "val_logloss": res["logloss"], "loss": float((logs or {}).get("loss", float("nan")))}
        self.history.append(row)
        if logs is not None:
            logs["val_auc_exact"] = res["auc"]
            logs["val_mean_auc_exact"] = res["mean_auc"]
            logs["val_logloss_exact"] = res["logloss"]
        improved = value > self.best + self.min_delta
        if self.log:
            self.log(f"  epoch {epoch + 1}: loss {row['loss']:.4f} val_{self.monitor} {value:.4f}"
                     + (" *" if improved else ""))
        if improved:
            self.best, self.best_epoch, self.wait = value, epoch + 1, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def compile_model(model: keras.Model, cfg: TrainConfig) -> keras.Model:
    jit = cfg.jit_compile
    if jit == "auto":
        jit = getattr(model, "supports_jit", True)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, epsilon=cfg.adam_epsilon),
                  loss=keras.losses.BinaryCrossentropy(), jit_compile=bool(jit),
                  steps_per_execution=cfg.steps_per_execution)
    return model


def fit(model: keras.Model, schema: Schema, cfg: TrainConfig, callbacks: list | None = None,
        log: Callable[[str], None] | None = None, compile: bool = True) -> ExactEarlyStopping:
    """Compiles (optionally) and fits ``model`` on the train split with exact early stopping."""
    if compile:
        compile_model(model, cfg)
    train = make_dataset(schema, "train", cfg.batch_size, seed=cfg.seed, mode=cfg.mode)
    stopper = ExactEarlyStopping(schema, cfg.monitor, cfg.patience, cfg.min_delta, cfg.eval_batch_size, log)
    cbs = [stopper] + list(callbacks or [])
    if cfg.tensorboard_dir:
        cbs.append(keras.callbacks.TensorBoard(log_dir=cfg.tensorboard_dir, write_graph=False))
    model.fit(train, epochs=cfg.epochs, callbacks=cbs, verbose=cfg.verbose)
    return stopper


def run_trial(model_name: str, schema: Schema, cfg: TrainConfig, model_kwargs: dict | None = None,
              log: Callable[[str], None] | None = None, return_model: bool = False):
    """Builds a registered model with the trial's seed, trains it and evaluates it.

    Returns a flat dict: test metrics (``test_auc``, ``test_auc_d0``, ...), validation
    metrics, best epoch, timings and parameter counts; with ``return_model`` the pair
    ``(row, model)``.
    """
    from mdr_tf import registry

    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    spec = registry.get(model_name)
    model = spec.build(schema, **(model_kwargs or {}))
    model.build()
    t0 = time.time()
    stopper = spec.train(model, schema, cfg, log=log)
    train_s = time.time() - t0
    test = evaluate_split(model, schema, "test", cfg.eval_batch_size)
    valid = evaluate_split(model, schema, "valid", cfg.eval_batch_size)
    from mdr_tf.params import parameter_report

    row: dict[str, Any] = {"model": model_name, "seed": cfg.seed, "best_epoch": stopper.best_epoch,
                           "epochs_run": len(stopper.history), "train_seconds": round(train_s, 2)}
    row.update({f"test_{k}": v for k, v in test.items()})
    row.update({f"valid_{k}": v for k, v in valid.items()})
    row.update({f"params_{k}": v for k, v in parameter_report(model).items()})
    row["history"] = stopper.history
    return (row, model) if return_model else row
