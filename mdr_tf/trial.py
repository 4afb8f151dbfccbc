"""One trial of a registered model: build it with the trial's seed, train it, evaluate it.

The runner side of the package: it imports ``mdr_tf.registry`` (which names each
model's builder and training procedure as ``"module:function"`` references) and
``mdr_tf.training``; neither of those imports this module. Experiment scripts call
``run_trial``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import keras

from mdr_tf import registry
from mdr_tf.params import parameter_report
from mdr_tf.schema import Schema
from mdr_tf.training import TrainConfig, evaluate_split, get_strategy


def run_trial(model_name: str, schema: Schema, cfg: TrainConfig, model_kwargs: dict | None = None,
              log: Callable[[str], None] | None = None, return_model: bool = False):
    """Builds a registered model with the trial's seed, trains it and evaluates it.

    Returns a flat dict: test metrics (``test_auc``, ``test_auc_d0``, ...), validation
    metrics, best epoch, timings and parameter counts; with ``return_model`` the pair
    ``(row, model)``.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    spec = registry.get(model_name)
    strategy = get_strategy(cfg.strategy)
    with strategy.scope():
        model = spec.build(schema, **(model_kwargs or {}))
        model.build()
        t0 = time.time()
        stopper = spec.train(model, schema, cfg, log=log)
    train_s = time.time() - t0
    test = evaluate_split(model, schema, "test", cfg.eval_batch_size)
    valid = evaluate_split(model, schema, "valid", cfg.eval_batch_size)
    row: dict[str, Any] = {"model": model_name, "seed": cfg.seed, "best_epoch": stopper.best_epoch,
                           "epochs_run": len(stopper.history), "train_seconds": round(train_s, 2)}
    row.update({f"test_{k}": v for k, v in test.items()})
    row.update({f"valid_{k}": v for k, v in valid.items()})
    row.update({f"params_{k}": v for k, v in parameter_report(model).items()})
    row["history"] = stopper.history
    return (row, model) if return_model else row
