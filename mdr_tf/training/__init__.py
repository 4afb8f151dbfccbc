"""Training one model: config → strategy → evaluation → early stopping → checkpoint → fit.

The parts (imports run down this list, never back; none imports ``mdr_tf.registry``):

- ``config``: ``TrainConfig``, ``check_train_numbers``, ``NonFiniteLossError``, ``epoch_seed``.
- ``strategy``: ``get_strategy`` by name, ``is_distributed``, ``in_multi_worker_mode``.
- ``evaluation``: ``predict_arrays``, ``predict_split``, ``evaluate_split`` (exact metrics).
- ``early_stopping``: ``ExactEarlyStopping``.
- ``checkpoint``: the per-epoch training state, saved atomically and restored.
- ``keras_workarounds``: the Keras 3.15 ``tf.distribute`` workarounds (private APIs, to
  delete when Keras fixes the upstream issues its docstring names).
- ``fit``: ``compile_model``, ``reseed_layers``, ``fused_input``, ``fit``.

Building a registered model and running one trial is ``mdr_tf.trial.run_trial`` (it
needs the registry, which this package does not import); ``mdr_tf.training.run_trial``
still resolves to it, on first access.
"""

from __future__ import annotations

from typing import Any

from mdr_tf.training.checkpoint import load_state, optimizer_variables, save_state, saved_epochs
from mdr_tf.training.config import NonFiniteLossError, TrainConfig, check_train_numbers, epoch_seed
from mdr_tf.training.early_stopping import ExactEarlyStopping
from mdr_tf.training.evaluation import evaluate_split, predict_arrays, predict_split
from mdr_tf.training.fit import compile_model, distributed_steps_per_epoch, fit, fused_input, reseed_layers
from mdr_tf.training.strategy import STRATEGIES, get_strategy, in_multi_worker_mode, is_distributed

# The names these had inside the former single module (kept for callers and tests).
_fused_input = fused_input
_load_state = load_state
_save_state = save_state
_saved_epochs = saved_epochs
_optimizer_variables = optimizer_variables
_is_distributed = is_distributed
_in_multi_worker_mode = in_multi_worker_mode
_distributed_steps_per_epoch = distributed_steps_per_epoch

__all__ = ["STRATEGIES", "ExactEarlyStopping", "NonFiniteLossError", "TrainConfig", "check_train_numbers",
           "compile_model", "epoch_seed", "evaluate_split", "fit", "fused_input", "get_strategy",
           "in_multi_worker_mode", "is_distributed", "load_state", "predict_arrays", "predict_split",
           "reseed_layers", "save_state"]


def __getattr__(name: str) -> Any:
    # ``run_trial`` moved to ``mdr_tf.trial`` (it depends on the registry); resolved lazily
    # so that importing this package never imports the registry.
    if name == "run_trial":
        from mdr_tf.trial import run_trial

        return run_trial
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
