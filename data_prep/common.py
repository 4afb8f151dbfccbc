"""The public names of data_prep's shared machinery, in one import (a facade).

The code lives in modules of one concern each (see docs/design.md, "data_prep"):

- ``data_prep.base``: constants (``SCHEMA_FILE``, ``SPLITS``, ...), ``DataError``, ``log``,
  fingerprints, ``FeatureDef`` (= ``mdr_base.features.Feature``), finite / empty-split checks.
- ``data_prep.tabular``: whole-array encoding and splits (pandas).
- ``data_prep.schema_builder``: the one ``schema.json`` builder, ``existing_output``.
- ``data_prep.tfrecord``: NumPy tf.Example encoding, TFRecord framing, shard writers.
- ``data_prep.writers``: ``write_dataset``, ``WorkDir``, ``finish_streamed_dataset``.
- ``data_prep.streaming``: ``StreamSource``, line blocks, vectorised parsing, ``Vocab``, ``UnitRunner``.
- ``data_prep.cli``: ``run_cli`` and the shared streaming flags.
- ``mdr_base.atomic``: atomic writes (``AtomicDir``, ``write_json_atomic``, ...), shared with mdr_tf.

Importers may keep ``from data_prep.common import ...``. Module-level switches
(``ALLOW_EMPTY_SPLITS``) live in ``data_prep.base``: set them there, not here.
TensorFlow-free at import (``tests/data_prep/test_structure.py``).
"""

from __future__ import annotations

from mdr_base.atomic import (AtomicDir, atomic_path, mkdtemp_honouring_umask, replace_dir,  # noqa: F401
                             savez_atomic, write_json_atomic, write_text_atomic)
from data_prep.base import (OOV_TOKEN, SCHEMA_FILE, SCHEMA_VERSION, SPLITS, DataError, FeatureDef,  # noqa: F401
                            check_finite, check_splits_not_empty, fingerprint, log, sha256_of_bytes,
                            sha256_of_file)
from data_prep.tabular import (check_split_ratios, encode_categorical, random_split, remap_domains,  # noqa: F401
                               stratified_split)
from data_prep.schema_builder import build_schema, existing_output, streamed_schema, whole_array_schema  # noqa: F401
from data_prep.tfrecord import (ShardSetWriter, StreamingWriter, _empty_counts, _varint, _varint_matrix,  # noqa: F401
                                crc32c_rows, encode_examples, frame_tfrecords, merge_counts, shard_name)
from data_prep.writers import (WorkDir, _serialize_rows, finish_streamed_dataset, write_dataset,  # noqa: F401
                               write_vocab_file)
from data_prep.streaming import (CheckedReader, StreamSource, UnitRunner, ValueCounts, Vocab,  # noqa: F401
                                 byte_ranges, count_newlines, gather_spans, iter_line_blocks, line_spans,
                                 parse_float_spans, parse_int_spans, span_matrix, split_delimited, split_uniform)
from data_prep.cli import define_streaming_flags, quiet_tensorflow_startup, run_cli  # noqa: F401
