"""Trial settings: ``TrainConfig``, its range checks, and the error of a diverged trial."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from mdr_tf.optimizers import OPTIMIZERS


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
      steps_per_execution: train steps per compiled call (amortises per-step overhead);
        1 under a ``tf.distribute`` strategy (see ``compile_model``).
      fused: in ``fit``, run those ``steps_per_execution`` steps as one XLA program that
        gathers its batches from the in-memory columns itself (``mdr_tf.fused``), when
        the run allows it: one device, XLA on, the in-memory input path, full batches.
        Same batches, updates and results as Keras' loop; ~1.2-1.5x faster for the small
        models here (docs/benchmarks.md). Otherwise Keras' ``steps_per_execution`` loop.
      jit_compile: XLA-compile the train step ("auto" = on unless the model says no).
      eval_batch_size: batch size for validation / test prediction.
      verbose: Keras fit verbosity.
      tensorboard_dir: if set, log losses and the exact validation metrics to TensorBoard here.
      strategy: "default" (one device), "mirrored" (all local devices) or
        "multi_worker_mirrored" (workers from ``TF_CONFIG``); ``batch_size`` is the global
        batch, split evenly over replicas.
      optimizer: "adam" (Keras' dense Adam, as the papers' torch Adam; default) or "lazy_adam"
        (``mdr_tf.optimizers.LazyAdam``: a sparse embedding-table gradient updates only the
        rows the batch read and their moments; dense variables get Adam's update). Trial keys
        include it only when it is not "adam".
      checkpoint_dir: if set, the full training state (weights, optimizer, early-stopping
        state, best weights) is saved there after every epoch, atomically; a run started
        again with the same directory resumes after the last finished epoch and ends
        with the same result as an uninterrupted run.
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
    fused: bool = True
    jit_compile: Any = "auto"
    eval_batch_size: int = 4096
    verbose: int = 0
    tensorboard_dir: str | None = None
    checkpoint_dir: str | None = None
    strategy: str = "default"
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        check_train_numbers(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                            patience=self.patience, steps_per_execution=self.steps_per_execution,
                            eval_batch_size=self.eval_batch_size, adam_epsilon=self.adam_epsilon)


def check_train_numbers(**values: float) -> None:
    """Raises ``ValueError`` naming the setting when a training number is out of range.

    ``epochs``, ``batch_size``, ``steps_per_execution``, ``eval_batch_size``: integers >= 1;
    ``patience``: integer >= 0; ``learning_rate``, ``adam_epsilon``: finite and > 0.
    """
    for name, v in values.items():
        if name in ("learning_rate", "adam_epsilon"):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        else:
            lo = 0 if name == "patience" else 1
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss: the trial stops and is marked failed."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's input order and dropout: fixed by (trial seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**31 - 1)
