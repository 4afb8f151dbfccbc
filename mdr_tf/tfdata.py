"""tf.data options shared by every pipeline mdr_tf builds."""

from __future__ import annotations

import tensorflow as tf


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` with tf.data's autotuning turned off (``AUTOTUNE`` knobs keep their defaults).

    Why: ``mdr_tf.training.fit`` calls Keras' ``fit`` once per epoch, and each call leaves
    its epoch iterator in a reference cycle (Keras' ``TFEpochIterator`` and its
    ``_enumerate_iterator`` generator), so the tf.data iterator lives on until Python's
    garbage collector frees it. Destroying an iterator waits for its autotuning thread,
    which by then sleeps for many seconds between optimisation rounds: a collection that
    lands in a later epoch stalled that epoch by 7–20 s, with no CPU used (measured with
    ``experiments.bench_epoch_stalls``; docs/benchmarks.md). Without autotuning there is no
    such thread. The pipelines here are small (index slices, whole-batch parsing), and
    were as fast or faster without it on 2 cores (same page).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
