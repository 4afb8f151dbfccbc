"""Per-domain routing helpers shared by tower-per-domain models."""

from __future__ import annotations

from keras import ops


def select_by_domain(stacked, domain):
    """Picks, for each sample b, ``stacked[domain[b], b]``.

    Args:
      stacked: [D, B, ...] outputs of every domain's branch on the whole batch.
      domain: int [B] domain ids.

    Returns:
      [B, ...] tensor.
    """
    b = ops.shape(domain)[0]
    idx = ops.stack([ops.cast(domain, "int32"), ops.arange(b, dtype="int32")], axis=1)
    import tensorflow as tf  # gather_nd has no keras.ops equivalent with batch index pairs

    return tf.gather_nd(stacked, idx)


def gather_domain_params(table, domain):
    """``table[domain]``: per-sample copy of per-domain parameters ([D, ...] → [B, ...])."""
    return ops.take(table, ops.cast(domain, "int32"), axis=0)
