"""Checkpoint I/O of a training run: the full state after every epoch, written atomically.

A state folder ``<dir>/state`` holds the model weights, the optimizer variables, the
early-stopping state and the best weights; it is written under a temporary name and
renamed, the previous one kept as ``state.old`` until the rename is done. Each
multi-worker worker writes its own folder (``checkpoint_dir_for_this_worker``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from mdr_tf.training.early_stopping import ExactEarlyStopping
from mdr_tf.training.strategy import in_multi_worker_mode, is_distributed


def checkpoint_dir_for_this_worker(directory: str) -> str:
    """The chief writes ``directory``; other multi-worker workers write ``directory/worker-<i>``."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    if is_distributed() and task and not (task.get("type") in ("chief",) or
                                           (task.get("type") == "worker" and task.get("index", 0) == 0
                                            and "chief" not in tf_config.get("cluster", {}))):
        return os.path.join(directory, f"worker-{task.get('index', 0)}")
    return directory


def saved_epochs(directory: str) -> int:
    """Finished epochs recorded in a checkpoint folder (as ``load_state`` would restore)."""
    for final in (os.path.join(directory, "state"), os.path.join(directory, "state.old")):
        if os.path.exists(os.path.join(final, "state.json")):
            with open(os.path.join(final, "state.json")) as f:
                return int(json.load(f)["epochs_done"])
    return 0


def check_workers_resume_together(start: int) -> None:
    """Raises unless every multi-worker worker resumes after the same epoch.

    Each worker restores its own checkpoint folder; a crash between two workers' saves
    can leave them an epoch apart, and workers that resume differently run different
    collective ops (restoring builds the optimizer's variables, a broadcast) and would
    fail obscurely or train different step counts. Called before anything is restored;
    one all-reduce compares them: the sum equals ``replicas * start`` on every worker
    only when all agree.
    """
    strategy = tf.distribute.get_strategy()
    if not in_multi_worker_mode(strategy):
        return
    total = strategy.reduce("SUM", strategy.run(lambda: tf.constant(float(start))), axis=None)
    n = strategy.num_replicas_in_sync
    if abs(float(total) - n * start) > 0.5:
        raise RuntimeError(f"multi-worker resume: this worker's checkpoint is after epoch {start}, but the "
                           f"replicas' epochs sum to {float(total):g} over {n} replicas; delete the newer "
                           "checkpoint folders so that all workers restart from the same epoch")


def optimizer_variables(model: keras.Model) -> list:
    """The optimizer's variables plus any the model keeps elsewhere (ALPT's Δ optimizer)."""
    extra = getattr(model, "extra_optimizer_variables", None)
    return list(model.optimizer.variables) + (list(extra()) if callable(extra) else [])


def save_state(model: keras.Model, stopper: ExactEarlyStopping, epoch: int, directory: str) -> None:
    """Writes the training state after ``epoch`` into ``directory`` atomically."""
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".state.tmp-", dir=directory)
    model.save_weights(os.path.join(tmp, "model.weights.h5"))
    np.savez(os.path.join(tmp, "optimizer.npz"), *[np.asarray(v) for v in optimizer_variables(model)])
    if stopper.best_weights is not None:
        np.savez(os.path.join(tmp, "best.npz"), *stopper.best_weights)
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"epochs_done": epoch + 1, "stopper": stopper.state()}, f)
    final = os.path.join(directory, "state")
    old = final + ".old"
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_state(model: keras.Model, stopper: ExactEarlyStopping, directory: str) -> int:
    """Restores a saved training state; returns the number of finished epochs (0 if none)."""
    final = os.path.join(directory, "state")
    if not os.path.exists(os.path.join(final, "state.json")):
        old = final + ".old"  # a crash between the two renames leaves the previous state here
        if not os.path.exists(os.path.join(old, "state.json")):
            return 0
        final = old
    with open(os.path.join(final, "state.json")) as f:
        state = json.load(f)
    model.load_weights(os.path.join(final, "model.weights.h5"))
    model.optimizer.build(model.trainable_variables)
    with np.load(os.path.join(final, "optimizer.npz")) as z:
        values = [z[f"arr_{i}"] for i in range(len(z.files))]
    opt_vars = optimizer_variables(model)
    if len(values) != len(opt_vars):
        raise ValueError(f"{final}: checkpoint has {len(values)} optimizer variables, the model "
                         f"{len(opt_vars)}; was it written by another model?")
    for v, x in zip(opt_vars, values):
        v.assign(x)
    stopper.load_state(state["stopper"])
    best = os.path.join(final, "best.npz")
    if os.path.exists(best):
        with np.load(best) as z:
            stopper.best_weights = [z[f"arr_{i}"] for i in range(len(z.files))]
    return int(state["epochs_done"])
