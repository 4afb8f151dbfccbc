"""``fit``: compile, then train epoch by epoch with exact early stopping, resumable and seeded.

Each epoch's input order and dropout come from ``epoch_seed(cfg.seed, epoch)``; with
``cfg.checkpoint_dir`` the state is saved after every epoch (``mdr_tf.training.checkpoint``)
and a restarted run resumes after the last finished one. On one device with XLA and
the in-memory input path, the ``steps_per_execution`` steps run as one fused XLA program
(``mdr_tf.fused``; ``fused_input`` decides). Under ``tf.distribute`` the Keras workarounds
of ``mdr_tf.training.keras_workarounds`` apply.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from mdr_tf.data import IN_MEMORY_MAX_VALUES, in_memory_index_batches, make_dataset
from mdr_tf.optimizers import make_optimizer
from mdr_tf.schema import Schema
from mdr_tf.training.checkpoint import (check_workers_resume_together, checkpoint_dir_for_this_worker, load_state,
                                        save_state, saved_epochs)
from mdr_tf.training.config import TrainConfig, epoch_seed
from mdr_tf.training.early_stopping import ExactEarlyStopping
from mdr_tf.training.keras_workarounds import prepare_distributed_fit, steps_per_execution
from mdr_tf.training.strategy import is_distributed


def compile_model(model: keras.Model, cfg: TrainConfig) -> keras.Model:
    """Compiles ``model`` with ``cfg.optimizer`` ("adam" or "lazy_adam", rate ``cfg.learning_rate``,
    ε ``cfg.adam_epsilon``) and binary cross-entropy."""
    jit = cfg.jit_compile
    if jit == "auto":
        # XLA is off under tf.distribute (as Keras' own "auto" does).
        jit = getattr(model, "supports_jit", True) and not is_distributed()
    spe = steps_per_execution(cfg.steps_per_execution)  # 1 under a strategy
    model.compile(optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate, cfg.adam_epsilon),
                  loss=keras.losses.BinaryCrossentropy(), jit_compile=bool(jit),
                  steps_per_execution=spe)
    return model


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


def distributed_steps_per_epoch(schema: Schema, cfg: TrainConfig) -> int | None:
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


def fused_input(schema: Schema, cfg: TrainConfig, domains: list[int] | None):
    """The in-memory ``(features, labels)`` of the train split when ``fit`` can fuse steps, else None.

    Fusing needs one device, the in-memory input path and full batches in every domain
    (the ``drop_remainder`` condition of ``fit``); XLA is checked after compiling.
    """
    if not cfg.fused or cfg.steps_per_execution <= 1 or is_distributed() or not schema.raw:
        return None
    doms = list(range(schema.num_domains)) if domains is None else list(domains)
    counts = [schema.counts("train")[d] for d in doms]
    if min([c for c in counts if c] or [0]) < 2 * cfg.batch_size:
        return None
    if sum(counts) * schema.values_per_example > IN_MEMORY_MAX_VALUES:  # out of core: columnar shards if any
        from mdr_tf.outofcore import fused_stream_for

        return fused_stream_for(schema, cfg.batch_size, cfg.steps_per_execution, cfg.mode, doms)
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
    if domains is not None and is_distributed():
        raise ValueError("fit(domains=...) is not supported under a tf.distribute strategy")
    fused = fused_input(schema, cfg, domains)
    if compile:
        compile_model(model, dataclasses.replace(cfg, steps_per_execution=1) if fused else cfg)
    if fused is not None and not (model.jit_compile and model.steps_per_execution == 1):
        fused = None  # XLA off, or compiled by the caller for Keras' multi-step loop
    if fused is not None:
        from mdr_tf.fused import install_on_columns

        fused.install(model) if hasattr(fused, "install") else install_on_columns(model, *fused, cfg.batch_size)
    if stopper is None:
        stopper = ExactEarlyStopping(schema, cfg.monitor, cfg.patience, cfg.min_delta, cfg.eval_batch_size, log,
                                     domains=domains)
    stopper.restore_on_train_end = False
    cbs = [stopper] + list(callbacks or [])
    if cfg.tensorboard_dir:
        cbs.append(keras.callbacks.TensorBoard(log_dir=cfg.tensorboard_dir, write_graph=False))
    if cfg.checkpoint_dir:
        check_workers_resume_together(saved_epochs(checkpoint_dir_for_this_worker(cfg.checkpoint_dir)))
    start = load_state(model, stopper, checkpoint_dir_for_this_worker(cfg.checkpoint_dir)) \
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
        if is_distributed():
            strategy = tf.distribute.get_strategy()
            prepare_distributed_fit(model, schema, strategy)
            # Every input pipeline repeats its shard and every worker runs the same number of
            # steps: with finite per-worker datasets a worker whose shard ends first would be
            # fed empty batches (tf.distribute's multi-worker partial-batch handling).
            steps = distributed_steps_per_epoch(schema, cfg)
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
            if hasattr(fused, "dataset"):  # out of core: (buffer tag, row-index block) from columnar shards
                train = fused.dataset(s)
            elif fused is not None:  # row-index blocks [K, B]; the compiled loop gathers the rows
                train = in_memory_index_batches(
                    schema, "train", cfg.batch_size, shuffle=True, seed=s, mode=cfg.mode,
                    domains=list(range(schema.num_domains)) if domains is None else list(domains),
                    label_key=schema.label_keys[0], drop_remainder=True)[2].batch(cfg.steps_per_execution)
            else:
                train = make_dataset(schema, "train", cfg.batch_size, seed=s, mode=cfg.mode, domains=domains,
                                     drop_remainder=drop)
            model.fit(train, initial_epoch=epoch, epochs=epoch + 1, callbacks=cbs, verbose=cfg.verbose)
        if cfg.checkpoint_dir:
            save_state(model, stopper, epoch, checkpoint_dir_for_this_worker(cfg.checkpoint_dir))
