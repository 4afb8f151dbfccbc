"""tf.data pipelines over the per-domain TFRecord shards written by ``data_prep``.

Pipeline: list files → (shuffle files) → interleave records across domain files →
shuffle → batch → ``parse_example`` on whole batches → prefetch. Parsing batches
instead of single records is the main throughput lever on CPU.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import tensorflow as tf

from mdr_tf.records import feature_spec, raise_corrupt_file, sequence_keys  # noqa: F401 (re-exported)
from mdr_tf.schema import Schema
from mdr_tf.tfdata import without_autotune  # noqa: F401 (re-exported)


def _parser(schema: Schema, label_key: str, with_timestamps: bool = False):
    spec = feature_spec(schema, with_timestamps=with_timestamps)

    def parse(serialized):
        ex = tf.io.parse_example(serialized, spec)
        label = tf.reshape(ex.pop(label_key), [-1, 1])
        for k in schema.label_keys:
            ex.pop(k, None)
        return ex, label

    return parse


def make_dataset(
    schema: Schema,
    split: str,
    batch_size: int = 512,
    *,
    shuffle: bool | None = None,
    seed: int = 0,
    mode: str = "mixed",
    domains: list[int] | None = None,
    label_key: str | None = None,
    shuffle_buffer: int = 100_000,
    drop_remainder: bool = False,
    cache: bool = False,
    repeat: bool = False,
    in_memory: bool | str = "auto",
    input_context: tf.distribute.InputContext | None = None,
    with_timestamps: bool = False,
    columnar: bool | str = "auto",
) -> tf.data.Dataset:
    """Batched ``(features, label)`` dataset of one split.

    Args:
      schema: a loaded ``Schema`` (knows the data directory).
      split: "train", "valid" or "test".
      batch_size: examples per batch.
      shuffle: shuffle files and examples (default: only for "train").
      seed: shuffle seed (a trial's seed makes its input order repeatable).
      mode: "mixed" — batches mix domains (default); "single_domain" — every batch
        holds one domain (MLoRA / STAR training style), batches of all domains are
        interleaved in random order.
      domains: restrict to these domain ids.
      label_key: which label (default: the schema's first).
      shuffle_buffer: examples in the shuffle buffer.
      drop_remainder: drop the last partial batch (needed under tf.distribute).
      cache: cache parsed batches in memory after the first pass (small datasets).
      repeat: repeat forever.
      in_memory: True — parse the split's TFRecords once into columnar tensors and
        serve batches by a seeded per-epoch index shuffle + gather (the cheapest path
        on a small CPU); False — stream records (bounded memory, any size); "auto" —
        in memory when the split has at most ``IN_MEMORY_MAX_VALUES`` feature values.
      input_context: under ``tf.distribute`` (``distribute_datasets_from_function``): this
        input pipeline reads only its share — whole TFRecord files when there are at least
        as many files as pipelines (sharded *before* interleave, so no worker reads
        another's files), else every n-th example.
      with_timestamps: also return the behaviour sequences' timestamps ``<name>_ts``
        (datasets with sequences only; for audits and tests, models ignore them).
      columnar: read the memory-mapped columnar shards (``mdr_tf.columnar``,
        ``mdr_tf.outofcore``: seeded shuffle within a buffer of chunks, bounded memory)
        instead of parsing TFRecords, for ``mode="mixed"``. "auto" — when ``in_memory``
        is "auto" and the split does not fit, and its columnar shards exist and mirror
        the current TFRecords; True — required; False — never.
    """
    if mode not in ("mixed", "single_domain"):
        raise ValueError(f"mode must be 'mixed' or 'single_domain', got {mode!r}")
    label_key = label_key or schema.label_keys[0]
    if label_key not in schema.label_keys:
        raise ValueError(f"label {label_key!r} not in schema labels {schema.label_keys}")
    shuffle = (split == "train") if shuffle is None else shuffle
    domains = list(range(schema.num_domains)) if domains is None else domains
    for d in domains:
        if not 0 <= d < schema.num_domains:
            raise ValueError(f"domain {d} out of range 0..{schema.num_domains - 1}")
    auto = in_memory == "auto"
    if in_memory == "auto":
        n_rows = sum(schema.counts(split)[d] for d in domains) if schema.raw else IN_MEMORY_MAX_VALUES
        in_memory = n_rows * schema.values_per_example <= IN_MEMORY_MAX_VALUES
    shard = (input_context.input_pipeline_id, input_context.num_input_pipelines) if input_context else (0, 1)
    if in_memory:
        ds = _in_memory_dataset(schema, split, batch_size, shuffle=shuffle, seed=seed, mode=mode, domains=domains,
                                label_key=label_key, drop_remainder=drop_remainder, shard=shard,
                                with_timestamps=with_timestamps)
        return without_autotune((ds.repeat() if repeat else ds).prefetch(tf.data.AUTOTUNE))
    if columnar is True or (columnar == "auto" and auto and mode == "mixed" and not with_timestamps
                            and schema.raw and _columnar_available(schema, split, domains)):
        from mdr_tf.outofcore import stream_dataset

        if mode != "mixed" or with_timestamps:
            raise ValueError("columnar=True reads mode='mixed' batches without timestamps")
        ds = stream_dataset(schema, split, batch_size, shuffle=shuffle, seed=seed, domains=domains,
                            label_key=label_key, drop_remainder=drop_remainder, shard=shard)
        ds = ds.cache() if cache else ds
        return without_autotune((ds.repeat() if repeat else ds).prefetch(tf.data.AUTOTUNE))
    parse = _parser(schema, label_key, with_timestamps)

    def records(files: list[str], s: int) -> tf.data.Dataset:
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: TFRecord shard missing; re-run data_prep")
        by_file = shard[1] > 1 and len(files) >= shard[1]
        if by_file:
            files = files[shard[0]::shard[1]]
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            ds = ds.shuffle(len(files), seed=s)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, len(files)), block_length=16,
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if shard[1] > 1 and not by_file:
            ds = ds.shard(shard[1], shard[0])
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=s, reshuffle_each_iteration=True)
        return ds

    if mode == "mixed":
        ds = records(schema.files(split, domains), seed)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        per_domain = [records(schema.files(split, [d]), seed + 7919 * d)
                      .batch(batch_size, drop_remainder=drop_remainder)
                      .map(parse, num_parallel_calls=tf.data.AUTOTUNE) for d in domains]
        if shuffle:
            # Random domain order, proportional to the remaining sizes: choose by weight.
            counts = np.array(schema.counts(split), dtype=np.float64)[domains] if schema.raw else np.ones(len(domains))
            weights = (counts / max(counts.sum(), 1.0)).tolist()
            ds = tf.data.Dataset.sample_from_datasets(per_domain, weights=weights, seed=seed,
                                                      stop_on_empty_dataset=False)
        else:
            ds = per_domain[0]
            for other in per_domain[1:]:
                ds = ds.concatenate(other)
    if cache:
        ds = ds.cache()
    if repeat:
        ds = ds.repeat()
    return without_autotune(ds.prefetch(tf.data.AUTOTUNE))


def _columnar_available(schema: Schema, split: str, domains: list[int]) -> bool:
    from mdr_tf.columnar import available

    return available(schema, split, domains, check_source=True)


IN_MEMORY_MAX_VALUES = 200_000_000  # ~1.6 GB of int64/float values
_ARRAY_CACHE: dict[tuple, tuple[dict[str, np.ndarray], np.ndarray]] = {}


def _cached_arrays(schema: Schema, split: str, label_key: str, domains: list[int], with_timestamps: bool = False):
    key = (os.path.abspath(schema.directory or ""), (schema.raw or {}).get("fingerprint"), split, label_key,
           tuple(domains)) + (("ts",) if with_timestamps else ())
    if key not in _ARRAY_CACHE:
        if len(_ARRAY_CACHE) >= 8:
            _ARRAY_CACHE.pop(next(iter(_ARRAY_CACHE)))
        _ARRAY_CACHE[key] = load_arrays(schema, split, label_key=label_key, domains=domains,
                                        with_timestamps=with_timestamps)
    return _ARRAY_CACHE[key]


def in_memory_index_batches(schema: Schema, split: str, batch_size: int, *, shuffle: bool, seed: int, mode: str,
                            domains: list[int], label_key: str, drop_remainder: bool, shard=(0, 1),
                            with_timestamps: bool = False):
    """The in-memory input path as columns plus a dataset of row-index batches.

    Returns ``(columns, labels, index_ds)``: ``columns`` maps feature names to [N] arrays,
    ``labels`` is [N, 1], and ``index_ds`` yields int64 index batches [B] in the order
    ``make_dataset(..., in_memory=True)`` serves them (it gathers these rows). The fused
    trainer (``mdr_tf.fused``) gathers the rows inside its compiled loop instead.
    """
    feats, labels = _cached_arrays(schema, split, label_key, domains, with_timestamps)
    if shard[1] > 1:
        feats = {k: v[shard[0]::shard[1]] for k, v in feats.items()}
        labels = labels[shard[0]::shard[1]]

    def index_batches(idx: np.ndarray, s: int) -> tf.data.Dataset:
        # One permutation op per epoch (not a per-element shuffle buffer): the epoch's
        # seed comes from a re-randomised random dataset, so every pass differs but a
        # trial's sequence of epochs is repeatable.
        idx_t = tf.constant(idx.astype(np.int64))
        n = len(idx)
        nb = n // batch_size if drop_remainder else -(-n // batch_size)

        def batches(epoch_seed):
            perm = (tf.random.experimental.stateless_shuffle(idx_t, seed=tf.stack([tf.constant(s, tf.int64),
                                                                                   epoch_seed]))
                    if shuffle else idx_t)
            ds = tf.data.Dataset.range(nb).map(lambda i: perm[i * batch_size:(i + 1) * batch_size])
            if drop_remainder:  # a static batch size, as ``batch(..., drop_remainder=True)`` gives
                ds = ds.map(lambda b: tf.ensure_shape(b, [batch_size]))
            return ds

        return (tf.data.Dataset.random(seed=s, rerandomize_each_iteration=True).take(1)
                .flat_map(batches))

    if mode == "mixed":
        ds = index_batches(np.arange(len(labels)), seed)
    else:
        dom = feats[schema.domain_key]
        per = [index_batches(np.flatnonzero(dom == d), seed + 7919 * d) for d in domains]
        if shuffle:
            counts = np.array([(dom == d).sum() for d in domains], np.float64)
            ds = tf.data.Dataset.sample_from_datasets(per, weights=(counts / max(counts.sum(), 1)).tolist(),
                                                      seed=seed, stop_on_empty_dataset=False)
        else:
            ds = per[0]
            for other in per[1:]:
                ds = ds.concatenate(other)
    return feats, labels.reshape(-1, 1), without_autotune(ds)


def _in_memory_dataset(schema, split, batch_size, **kwargs):
    feats, labels, ds = in_memory_index_batches(schema, split, batch_size, **kwargs)
    cols = {k: tf.constant(v) for k, v in feats.items()}
    lab = tf.constant(labels)

    def take(idx):
        return {k: tf.gather(v, idx) for k, v in cols.items()}, tf.gather(lab, idx)

    return ds.map(take, num_parallel_calls=tf.data.AUTOTUNE)


def load_arrays(schema: Schema, split: str, label_key: str | None = None,
                domains: list[int] | None = None,
                with_timestamps: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Reads a whole split into numpy arrays (features dict, labels [N]) in file order.

    Behaviour sequences come as [N, length] int64 arrays (see ``sequence_keys``).
    """
    feats: dict[str, list[np.ndarray]] = {}
    labels = []
    try:
        for x, y in make_dataset(schema, split, 8192, shuffle=False, label_key=label_key, domains=domains,
                                 in_memory=False, with_timestamps=with_timestamps):
            for k, v in x.items():
                feats.setdefault(k, []).append(v.numpy())
            labels.append(y.numpy()[:, 0])
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise_corrupt_file(schema.files(split, domains), e)
    if not labels:
        empty = {n: np.zeros([0]) for n in schema.input_names}
        empty.update({k: np.zeros([0, n], np.int64) for k, n in sequence_keys(schema, with_timestamps).items()})
        out = empty, np.zeros([0], np.float32)
    else:
        out = {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(labels)
    check_split_counts(schema, split, out[0][schema.domain_key], domains)
    return out


def check_split_counts(schema: Schema, split: str, domain_ids: np.ndarray, domains: list[int] | None = None) -> None:
    """Raises ``ValueError`` naming the files when a split's per-domain example counts differ from schema.json.

    A TFRecord cut at a record boundary reads without any error; only the counts that
    ``data_prep`` recorded show that examples are missing.
    """
    if not schema.raw or "counts" not in schema.raw:
        return
    want = schema.counts(split)
    got = np.bincount(np.asarray(domain_ids, np.int64), minlength=schema.num_domains)
    for d in range(schema.num_domains) if domains is None else domains:
        if int(got[d]) != int(want[d]):
            files = ", ".join(schema.files(split, [d]))
            raise ValueError(f"{files}: {int(got[d]):,} examples of domain {d} in split {split!r}, but schema.json "
                             f"records {int(want[d]):,}; the files are truncated or were replaced, re-run data_prep")


def iterate_numpy(features: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(next(iter(features.values())))
    for i in range(0, n, batch_size):
        yield {k: v[i:i + batch_size] for k, v in features.items()}
