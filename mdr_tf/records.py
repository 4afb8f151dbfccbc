"""The TFRecord example format of a prepared dataset: its parse spec and read-error reporting.

The lowest layer of the input stack: ``mdr_tf.data`` (pipelines), ``mdr_tf.columnar``
(shards derived from the TFRecords) and ``mdr_tf.export`` (the ``serve_examples``
signature) all read records through this spec; ``mdr_tf.data`` re-exports these names.
"""

from __future__ import annotations

import tensorflow as tf

from mdr_tf.schema import Schema


def sequence_keys(schema: Schema, with_timestamps: bool = False) -> dict[str, int]:
    """Keys of the behaviour-sequence lists (ids, masks, optionally timestamps) → flat length.

    All are int64 lists of fixed length; a batch holds them as [B, length] tensors.
    """
    out = {}
    for q in schema.sequences:
        out[q.ids_key] = q.length
        out[q.mask_key] = q.length
        if with_timestamps:
            if not q.has_timestamps:
                raise ValueError(f"sequence {q.name!r} has no timestamps in this dataset (has_timestamps false)")
            out[q.ts_key] = q.length
    return out


def feature_spec(schema: Schema, with_labels: bool = True,
                 with_timestamps: bool = False) -> dict[str, tf.io.FixedLenFeature]:
    """The ``tf.io.parse_example`` spec of a schema (shared by the reader and serving).

    Behaviour sequences (``schema.sequences``) are fixed-length int64 lists; their
    timestamps are parsed only with ``with_timestamps`` (tests and audits; models do not
    read them).
    """
    spec = {}
    for f in schema.features:
        spec[f.name] = tf.io.FixedLenFeature([], tf.int64 if f.kind == "categorical" else tf.float32)
    spec[schema.domain_key] = tf.io.FixedLenFeature([], tf.int64)
    for k, n in sequence_keys(schema, with_timestamps).items():
        spec[k] = tf.io.FixedLenFeature([n], tf.int64)
    if with_labels:
        for k in schema.label_keys:
            spec[k] = tf.io.FixedLenFeature([], tf.float32)
    return spec


def raise_corrupt_file(files: list[str], error: Exception) -> None:
    """Re-raises a TFRecord read error as ``ValueError`` naming the first file that fails to read."""
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise ValueError(f"{path}: corrupt or truncated TFRecord ({e.message.splitlines()[0][:200]}); "
                             "re-run data_prep") from e
    raise ValueError(f"cannot read {', '.join(files)}: {error}") from error
