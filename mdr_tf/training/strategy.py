"""``tf.distribute`` strategies by name, and what the training code asks about the current one."""

from __future__ import annotations

import tensorflow as tf

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


def is_distributed() -> bool:
    """Whether the current strategy runs more than one replica, or is multi-worker."""
    s = tf.distribute.get_strategy()
    return tf.distribute.has_strategy() and (s.num_replicas_in_sync > 1 or
                                             isinstance(s, tf.distribute.MultiWorkerMirroredStrategy))


def in_multi_worker_mode(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether ``strategy`` (default: the current one) is a MultiWorkerMirroredStrategy with 2+ workers."""
    strategy = strategy or tf.distribute.get_strategy()
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())
