"""``ExactEarlyStopping``: early stopping on the exact validation AUC, best weights restored."""

from __future__ import annotations

import math
from typing import Any, Callable

import keras

from mdr_tf.schema import Schema
from mdr_tf.training.config import NonFiniteLossError
from mdr_tf.training.evaluation import evaluate_split


class ExactEarlyStopping(keras.callbacks.Callback):
    """Early stopping on the exact validation AUC; always restores the best epoch's weights.

    Logs ``val_auc_exact`` / ``val_mean_auc_exact`` / ``val_logloss_exact`` into the
    epoch logs. (Keras' ``EarlyStopping`` keeps the last weights when training ends
    without triggering; here the best-validation weights are always restored.) With
    ``domains``, only those domains' validation data is evaluated.
    """

    def __init__(self, schema: Schema, monitor: str = "auc", patience: int = 2, min_delta: float = 0.0,
                 batch_size: int = 4096, log: Callable[[str], None] | None = None,
                 restore_on_train_end: bool = True, domains: list[int] | None = None):
        super().__init__()
        self.domains = None if domains is None else list(domains)
        self.restore_on_train_end = restore_on_train_end
        self.stopped = False
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
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            self.model.stop_training = True
            raise NonFiniteLossError(
                f"non-finite training loss ({loss}) in epoch {epoch + 1}: training diverged (learning rate too "
                "high?) or the data holds NaN/inf; the trial is stopped")
        res = evaluate_split(self.model, self.schema, "valid", self.batch_size, domains=self.domains)
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
                self.stopped = True

    def restore_best(self) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.restore_on_train_end:
            self.restore_best()

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "history": self.history,
                "stopped": self.stopped}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.history, self.stopped = list(state["history"]), bool(state["stopped"])
