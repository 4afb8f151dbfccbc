"""Training one trial: compile, fit with exact-AUC early stopping, evaluate."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from mdr_tf import metrics as M
from mdr_tf.data import IN_MEMORY_MAX_VALUES, _cached_arrays, in_memory_index_batches, make_dataset, sequence_keys
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

    def __post_init__(self) -> None:
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


STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")


def get_strategy(name: str = "default") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for a name (MWMS reads the cluster from ``TF_CONFIG``).

    Parameter-server training is not offered: Keras 3 does not support it (see docs).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")
    # One instance per process: collective ops can be configured only once, at startup.
    if name not in _STRATEGY_CACHE:
        _STRATEGY_CACHE[name] = (tf.distribute.MirroredStrategy() if name == "mirrored"
                                 else tf.distribute.MultiWorkerMirroredStrategy())
    return _STRATEGY_CACHE[name]


_STRATEGY_CACHE: dict[str, tf.distribute.Strategy] = {}


def _is_distributed() -> bool:
    s = tf.distribute.get_strategy()
    return tf.distribute.has_strategy() and (s.num_replicas_in_sync > 1 or
                                             isinstance(s, tf.distribute.MultiWorkerMirroredStrategy))


def predict_arrays(model: keras.Model, feats: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Probabilities for in-memory features, batch by batch with one traced function.

    Works the same with or without a ``tf.distribute`` strategy (every worker predicts the
    whole array with its replica of the weights), unlike ``Model.predict``, which would
    auto-shard the input across workers.
    """
    fn = getattr(model, "_mdr_predict_fn", None)
    if fn is None:
        schema = model.schema
        sig = {f.name: tf.TensorSpec([None], tf.int64 if f.kind == "categorical" else tf.float32)
               for f in schema.features}
        sig[schema.domain_key] = tf.TensorSpec([None], tf.int64)
        sig.update({k: tf.TensorSpec([None, n], tf.int64) for k, n in sequence_keys(schema).items()})
        fn = tf.function(lambda x: model(x, training=False), input_signature=[sig], reduce_retracing=True)
        model._mdr_predict_fn = fn
    n = len(next(iter(feats.values())))
    out = [fn({k: tf.constant(v[i:i + batch_size]) for k, v in feats.items()}).numpy().reshape(-1)
           for i in range(0, n, batch_size)]
    return np.concatenate(out) if out else np.zeros([0], np.float32)


def predict_split(model: keras.Model, schema: Schema, split: str, batch_size: int = 4096,
                  label_key: str | None = None,
                  domains: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions of a whole split (of ``domains`` only, if given): (labels, probabilities, domains)."""
    feats, labels = _cached_arrays(schema, split, label_key or schema.label_keys[0],
                                   list(range(schema.num_domains)) if domains is None else list(domains))
    return labels, predict_arrays(model, feats, batch_size), feats[schema.domain_key]


def evaluate_split(model: keras.Model, schema: Schema, split: str, batch_size: int = 4096,
                   domains: list[int] | None = None) -> dict[str, float]:
    y, p, d = predict_split(model, schema, split, batch_size, domains=domains)
    return M.evaluate(y, p, d, schema.num_domains)


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


def compile_model(model: keras.Model, cfg: TrainConfig) -> keras.Model:
    jit = cfg.jit_compile
    if jit == "auto":
        # XLA is off under tf.distribute (as Keras' own "auto" does).
        jit = getattr(model, "supports_jit", True) and not _is_distributed()
    # Under a strategy one step per call: Keras 3.15's multi-step loop (a tf.cond inside a
    # tf.while_loop around the replicated step) fails with two or more replicas, in one
    # process or several ("You must feed a value for placeholder tensor
    # 'while/cond/Placeholder_...'"; looks like keras-team/keras#19246).
    spe = 1 if _is_distributed() else cfg.steps_per_execution
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, epsilon=cfg.adam_epsilon),
                  loss=keras.losses.BinaryCrossentropy(), jit_compile=bool(jit),
                  steps_per_execution=spe)
    return model


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's input order and dropout: fixed by (trial seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**31 - 1)


def _checkpoint_dir_for_this_worker(directory: str) -> str:
    """The chief writes ``directory``; other multi-worker workers write ``directory/worker-<i>``."""
    import json
    import os

    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    if _is_distributed() and task and not (task.get("type") in ("chief",) or
                                           (task.get("type") == "worker" and task.get("index", 0) == 0
                                            and "chief" not in tf_config.get("cluster", {}))):
        return os.path.join(directory, f"worker-{task.get('index', 0)}")
    return directory


def _fully_built(model: keras.Model) -> bool:
    """Whether the model's layers, compiled loss / metrics and optimizer all have their state."""
    return (all(layer.built for layer in model._flatten_layers())
            and (model._compile_loss is None or model._compile_loss.built)
            and (model._compile_metrics is None or model._compile_metrics.built)
            and (model.optimizer is None or model.optimizer.built))


def _distributed_steps_per_epoch(schema: Schema, cfg: TrainConfig) -> int | None:
    """Steps of one distributed epoch: the global batches the train split holds.

    "mixed": ``train examples // global batch`` (with the in-memory every-n-th-example
    shards that is exactly each pipeline's number of full per-replica batches);
    "single_domain": the sum of that over domains. ``None`` without dataset counts.
    """
    if not schema.raw:
        return None
    counts = schema.counts("train")
    if cfg.mode == "single_domain":
        return max(1, sum(c // cfg.batch_size for c in counts))
    return max(1, sum(counts) // cfg.batch_size)


def _prepare_distributed_fit(model: keras.Model, schema: Schema, strategy: tf.distribute.Strategy) -> None:
    """Makes ``model.fit`` work on a multi-worker distributed dataset (Keras 3.15 workaround).

    A model created under a strategy scope runs ``_maybe_symbolic_build(iterator=...)``
    at the start of every ``fit``: it takes the first batch of the *distributed* dataset
    and, to learn the input shapes, calls ``strategy.reduce("MEAN", batch)`` on the whole
    structure of ``PerReplica`` features. With one worker that reduce returns its input
    unchanged; with two or more MultiWorkerMirroredStrategy workers it becomes a
    cross-worker all-reduce of a dict, which fails ("Attempt to convert a value
    ({...: PerReplica...}) ... to a Tensor"; keras-team/keras#20585). The build needs only
    shapes, so this builds every piece of state (layers, compiled loss and metrics,
    optimizer) from one ordinary local batch, under the strategy's scope, and makes the
    model's ``_maybe_symbolic_build`` skip the shape probe while everything is built (it
    still falls back to Keras' own when something is not, e.g. after a recompile).

    A second multi-worker defect follows in the compiled step: Keras reduces the step's
    logs (the scalar loss-tracker result) across workers with
    ``strategy.reduce("MEAN", v, axis=0)``, which rejects a scalar ("Invalid reduction
    dimension 0 for input with 0 dimensions"). Under multi-worker collectives the model's
    ``train_step`` therefore returns every scalar log as a 1-element vector; the
    ``axis=0`` mean over replicas turns it back into the same scalar Keras logs with one
    worker. Training itself (loss scaling by ``1 / replicas``, gradient all-reduce) is
    Keras' unchanged.
    """
    if not _fully_built(model):
        with strategy.scope():
            model._symbolic_build(data_batch=next(iter(make_dataset(schema, "train", 8, shuffle=False,
                                                                     in_memory=False))))
    if "_maybe_symbolic_build" not in vars(model):
        keras_build = model._maybe_symbolic_build

        def maybe_symbolic_build(iterator=None, data_batch=None):
            if not _fully_built(model):
                keras_build(iterator=iterator, data_batch=data_batch)

        model._maybe_symbolic_build = maybe_symbolic_build
    if _in_multi_worker_mode(strategy) and "train_step" not in vars(model):
        keras_step = model.train_step

        def train_step(data):
            logs = keras_step(data)
            return keras.tree.map_structure(
                lambda v: tf.reshape(v, [1]) if isinstance(v, tf.Tensor) and v.shape.rank == 0 else v, logs)

        model.train_step = train_step


def _in_multi_worker_mode(strategy: tf.distribute.Strategy | None = None) -> bool:
    strategy = strategy or tf.distribute.get_strategy()
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def _saved_epochs(directory: str) -> int:
    """Finished epochs recorded in a checkpoint folder (as ``_load_state`` would restore)."""
    import json
    import os

    for final in (os.path.join(directory, "state"), os.path.join(directory, "state.old")):
        if os.path.exists(os.path.join(final, "state.json")):
            with open(os.path.join(final, "state.json")) as f:
                return int(json.load(f)["epochs_done"])
    return 0


def _check_workers_resume_together(start: int) -> None:
    """Raises unless every multi-worker worker resumes after the same epoch.

    Each worker restores its own checkpoint folder; a crash between two workers' saves
    can leave them an epoch apart, and workers that resume differently run different
    collective ops (restoring builds the optimizer's variables, a broadcast) and would
    fail obscurely or train different step counts. Called before anything is restored;
    one all-reduce compares them: the sum equals ``replicas * start`` on every worker
    only when all agree.
    """
    strategy = tf.distribute.get_strategy()
    if not _in_multi_worker_mode(strategy):
        return
    total = strategy.reduce("SUM", strategy.run(lambda: tf.constant(float(start))), axis=None)
    n = strategy.num_replicas_in_sync
    if abs(float(total) - n * start) > 0.5:
        raise RuntimeError(f"multi-worker resume: this worker's checkpoint is after epoch {start}, but the "
                           f"replicas' epochs sum to {float(total):g} over {n} replicas; delete the newer "
                           "checkpoint folders so that all workers restart from the same epoch")


def reseed_layers(model: keras.Model, seed: int) -> None:
    """Sets every layer's random-state (dropout etc.) from ``seed``.

    ``keras.utils.set_random_seed`` does not touch the ``SeedGenerator`` that each dropout
    layer owns, and that state is not part of the saved weights, so without this a resumed
    run would draw different dropout masks from an uninterrupted one.
    """
    i = 0
    for layer in model._flatten_layers(include_self=True):
        for sg in getattr(layer, "_seed_generators", []):
            sg.state.assign(np.array([seed % (2**31 - 1), i], dtype=sg.state.dtype))
            i += 1


def _optimizer_variables(model: keras.Model) -> list:
    """The optimizer's variables plus any the model keeps elsewhere (ALPT's Δ optimizer)."""
    extra = getattr(model, "extra_optimizer_variables", None)
    return list(model.optimizer.variables) + (list(extra()) if callable(extra) else [])


def _save_state(model: keras.Model, stopper: ExactEarlyStopping, epoch: int, directory: str) -> None:
    """Writes the training state after ``epoch`` into ``directory`` atomically."""
    import json
    import os
    import shutil
    import tempfile

    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".state.tmp-", dir=directory)
    model.save_weights(os.path.join(tmp, "model.weights.h5"))
    np.savez(os.path.join(tmp, "optimizer.npz"), *[np.asarray(v) for v in _optimizer_variables(model)])
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


def _load_state(model: keras.Model, stopper: ExactEarlyStopping, directory: str) -> int:
    """Restores a saved training state; returns the number of finished epochs (0 if none)."""
    import json
    import os

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
    opt_vars = _optimizer_variables(model)
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


def _fused_input(schema: Schema, cfg: TrainConfig, domains: list[int] | None):
    """The in-memory ``(features, labels)`` of the train split when ``fit`` can fuse steps, else None.

    Fusing needs one device, the in-memory input path and full batches in every domain
    (the ``drop_remainder`` condition of ``fit``); XLA is checked after compiling.
    """
    if not cfg.fused or cfg.steps_per_execution <= 1 or _is_distributed() or not schema.raw:
        return None
    doms = list(range(schema.num_domains)) if domains is None else list(domains)
    counts = [schema.counts("train")[d] for d in doms]
    if min([c for c in counts if c] or [0]) < 2 * cfg.batch_size:
        return None
    if sum(counts) * schema.values_per_example > IN_MEMORY_MAX_VALUES:
        return None
    feats, labels, _ = in_memory_index_batches(schema, "train", cfg.batch_size, shuffle=False, seed=0,
                                               mode=cfg.mode, domains=doms, label_key=schema.label_keys[0],
                                               drop_remainder=True)
    return feats, labels


def fit(model: keras.Model, schema: Schema, cfg: TrainConfig, callbacks: list | None = None,
        log: Callable[[str], None] | None = None, compile: bool = True,
        stopper: ExactEarlyStopping | None = None, domains: list[int] | None = None) -> ExactEarlyStopping:
    """Fits ``model`` on the train split, epoch by epoch, with exact early stopping.

    Each epoch reads the training data in an order fixed by ``epoch_seed(cfg.seed, epoch)``
    and reseeds dropout the same way, so a run resumed from ``cfg.checkpoint_dir`` repeats
    exactly what the uninterrupted run would have done. The best epoch's weights are
    restored at the end.

    Args:
      model: a built model.
      schema: the dataset.
      cfg: training settings.
      callbacks: extra Keras callbacks.
      log: per-epoch progress lines.
      compile: compile the model first (with ``compile_model``).
      stopper: an ``ExactEarlyStopping`` to use (e.g. seeded with a previous stage's best
        value); by default a new one from ``cfg``.
      domains: train on these domains' data only (default: all; not under a
        ``tf.distribute`` strategy); a default stopper then evaluates only these domains.
    """
    if domains is not None and _is_distributed():
        raise ValueError("fit(domains=...) is not supported under a tf.distribute strategy")
    fused = _fused_input(schema, cfg, domains)
    if compile:
        compile_model(model, dataclasses.replace(cfg, steps_per_execution=1) if fused else cfg)
    if fused is not None and not (model.jit_compile and model.steps_per_execution == 1):
        fused = None  # XLA off, or compiled by the caller for Keras' multi-step loop
    if fused is not None:
        from mdr_tf.fused import install_on_columns

        install_on_columns(model, *fused, cfg.batch_size)
    if stopper is None:
        stopper = ExactEarlyStopping(schema, cfg.monitor, cfg.patience, cfg.min_delta, cfg.eval_batch_size, log,
                                     domains=domains)
    stopper.restore_on_train_end = False
    cbs = [stopper] + list(callbacks or [])
    if cfg.tensorboard_dir:
        cbs.append(keras.callbacks.TensorBoard(log_dir=cfg.tensorboard_dir, write_graph=False))
    if cfg.checkpoint_dir:
        _check_workers_resume_together(_saved_epochs(_checkpoint_dir_for_this_worker(cfg.checkpoint_dir)))
    start = _load_state(model, stopper, _checkpoint_dir_for_this_worker(cfg.checkpoint_dir)) \
        if cfg.checkpoint_dir else 0
    if start and log:
        log(f"  resumed from {cfg.checkpoint_dir} after epoch {start}")
    with _quiet_keras_fit_warnings():
        try:
            _fit_epochs(model, schema, cfg, cbs, stopper, fused, domains, start)
        except tf.errors.DataLossError as e:  # a corrupt streamed TFRecord: name the file
            from mdr_tf.data import raise_corrupt_file

            raise_corrupt_file(schema.files("train", domains), e)
    stopper.set_model(model)  # unset when a resumed run had no epoch left to fit
    stopper.restore_best()
    return stopper


@contextlib.contextmanager
def _quiet_keras_fit_warnings():
    """Silences two Keras ``fit`` warnings that are expected here and read like failures.

    "Your input ran out of data": every epoch is one finite pass (no ``steps_per_epoch``),
    which Keras' multi-step loop reports at the end of each epoch; "``shuffle=True`` was
    passed": datasets are shuffled by ``mdr_tf.data`` (seeded per epoch).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed", category=UserWarning)
        yield


def _fit_epochs(model, schema, cfg, cbs, stopper, fused, domains, start) -> None:
    """The epoch loop of ``fit``."""
    for epoch in range(start, cfg.epochs):
        if stopper.stopped:
            break
        s = epoch_seed(cfg.seed, epoch)
        keras.utils.set_random_seed(s)
        reseed_layers(model, s)
        if _is_distributed():
            strategy = tf.distribute.get_strategy()
            _prepare_distributed_fit(model, schema, strategy)
            # Every input pipeline repeats its shard and every worker runs the same number of
            # steps: with finite per-worker datasets a worker whose shard ends first would be
            # fed empty batches (tf.distribute's multi-worker partial-batch handling).
            steps = _distributed_steps_per_epoch(schema, cfg)
            train = strategy.distribute_datasets_from_function(
                lambda ctx, s=s: make_dataset(schema, "train", ctx.get_per_replica_batch_size(cfg.batch_size), seed=s,
                                              mode=cfg.mode, drop_remainder=True, repeat=steps is not None,
                                              input_context=ctx))
            model.fit(train, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps, callbacks=cbs,
                      verbose=cfg.verbose)
        else:
            # drop_remainder: a final partial batch would make XLA compile the step a second
            # time; the dropped examples (< batch_size) differ every epoch.
            counts = [c for k, c in enumerate(schema.counts("train")) if domains is None or k in domains] \
                if schema.raw else []
            drop = bool(schema.raw) and min([c for c in counts if c] or [0]) >= 2 * cfg.batch_size
            if fused is not None:  # row-index blocks [K, B]; the compiled loop gathers the rows
                train = in_memory_index_batches(
                    schema, "train", cfg.batch_size, shuffle=True, seed=s, mode=cfg.mode,
                    domains=list(range(schema.num_domains)) if domains is None else list(domains),
                    label_key=schema.label_keys[0], drop_remainder=True)[2].batch(cfg.steps_per_execution)
            else:
                train = make_dataset(schema, "train", cfg.batch_size, seed=s, mode=cfg.mode, domains=domains,
                                     drop_remainder=drop)
            model.fit(train, initial_epoch=epoch, epochs=epoch + 1, callbacks=cbs, verbose=cfg.verbose)
        if cfg.checkpoint_dir:
            _save_state(model, stopper, epoch, _checkpoint_dir_for_this_worker(cfg.checkpoint_dir))


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
    strategy = get_strategy(cfg.strategy)
    with strategy.scope():
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
