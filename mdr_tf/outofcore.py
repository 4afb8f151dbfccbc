"""Out-of-core training input: seeded row buffers from memory-mapped columnar shards.

For a split too large for the in-memory path, rows come from the columnar shards next
to the TFRecords (``mdr_tf.columnar``). One epoch with seed ``s``:

1. every shard is cut into chunks of ``chunk_rows`` consecutive rows; the chunks of all
   shards are put in a random order (seeded: ``(s, pass)``);
2. consecutive chunks fill a buffer of about ``buffer_rows`` rows (a copy out of the
   memory map: sequential reads), plus the rows carried over from the previous buffer;
3. the buffer's rows are permuted (seeded) and served as batches of ``batch_size`` rows,
   in blocks of ``steps`` batches; rows that do not fill a whole block are carried into
   the next buffer, so every block has the same shape and XLA compiles one program;
4. at the end of the pass the remaining full batches form one shorter block, and the
   last partial batch is dropped (``drop_remainder``) or served.

Every row of the split is served exactly once per pass (less the final partial batch
with ``drop_remainder``, as the in-memory path drops ``n % batch_size`` rows). Host
memory holds at most three buffers (two waiting, one being read) besides the trainer's
copy (``FusedStream``), each at most ``buffer_rows + chunk_rows + steps * batch_size``
rows, whatever the dataset size.

Two consumers:

* ``stream_dataset``: ``(features, label)`` batches, gathered in NumPy (the
  ``make_dataset`` path for data that does not fit in memory);
* ``FusedStream`` + ``mdr_tf.fused.install_streamed``: the fused K-step XLA program
  gathers its batches from the current buffer, held in non-trainable variables that are
  refilled between blocks when the stream moves to the next buffer (the in-memory fused
  path of ``mdr_tf.fused``, with the split replaced by a window of it).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from mdr_tf import columnar
from mdr_tf.schema import Schema
from mdr_tf.tfdata import without_autotune

DEFAULT_BUFFER_ROWS = 1 << 20
DEFAULT_CHUNK_ROWS = 1 << 16


class BufferPlan:
    """The seeded buffer-and-block schedule of one split's columnar shards (see the module docstring).

    Args:
      schema: the dataset (knows its directory and shard count).
      split: "train", "valid" or "test".
      batch_size: rows per batch B.
      steps: batches per block K (1 for plain batches).
      shuffle: shuffle chunks and rows (else shard order, rows in order).
      seed: base seed; pass ``p`` of the plan uses ``(seed, p)``.
      domains: restrict to these domains' shards.
      label_key: the label column served with the features.
      buffer_rows: rows copied out of the memory map per buffer (memory bound).
      chunk_rows: consecutive rows read together (the granularity of the shuffle across shards).
      drop_remainder: drop the final partial batch of a pass.
      shard: ``(index, count)``: this input pipeline reads every count-th chunk (tf.distribute).
    """

    def __init__(self, schema: Schema, split: str, batch_size: int, *, steps: int = 1, shuffle: bool = True,
                 seed: int = 0, domains: Sequence[int] | None = None, label_key: str | None = None,
                 buffer_rows: int = DEFAULT_BUFFER_ROWS, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 drop_remainder: bool = True, shard: tuple[int, int] = (0, 1)):
        if batch_size < 1 or steps < 1:
            raise ValueError(f"batch_size and steps must be >= 1, got {batch_size}, {steps}")
        if buffer_rows < batch_size * steps:
            raise ValueError(f"buffer_rows={buffer_rows} is smaller than one block ({steps} x {batch_size} rows)")
        self.schema, self.split = schema, split
        self.batch_size, self.steps = batch_size, steps
        self.shuffle, self.seed = shuffle, seed
        self.label_key = label_key or schema.label_keys[0]
        self.buffer_rows, self.chunk_rows = buffer_rows, chunk_rows
        self.drop_remainder, self.shard = drop_remainder, shard
        self.keys = list(schema.input_names)
        self.shards = [(n, cols) for _, n, cols in
                       columnar.open_split(schema, split, domains, self.keys + [self.label_key])]
        self.rows = sum(n for n, _ in self.shards)
        self.block_rows = batch_size * steps
        # The largest buffer: buffer_rows, plus one chunk that crossed the limit, plus the carry.
        self.capacity = buffer_rows + chunk_rows + self.block_rows
        self.peak_rows = 0  # the largest buffer built so far (tests check the bound)
        self.passes = 0

    def _chunks(self, rng: np.random.Generator | None) -> list[tuple[int, int, int]]:
        out = [(i, a, min(a + self.chunk_rows, n)) for i, (n, _) in enumerate(self.shards)
               for a in range(0, n, self.chunk_rows)]
        out = out[self.shard[0]::self.shard[1]]
        if rng is not None:
            out = [out[j] for j in rng.permutation(len(out))]
        return out

    def _read(self, chunks: list[tuple[int, int, int]], carry: dict[str, np.ndarray] | None
              ) -> dict[str, np.ndarray] | None:
        """The carried rows, then the chunks' rows: one copy out of the memory map per value
        (ids widened to int64 in the same pass)."""
        c = 0 if carry is None else len(carry[self.label_key])
        n = c + sum(b - a for _, a, b in chunks)
        if n == 0:
            return None
        cols = {}
        for k in self.keys + [self.label_key]:
            src = self.shards[0][1][k]
            out = np.empty((n, *src.shape[1:]), _widen(src[:0]).dtype)
            if c:
                out[:c] = carry[k]
            pos = c
            for i, a, b in chunks:
                # A plain read, not a slice of the map (``columnar.read_rows``: bounded RSS).
                np.copyto(out[pos:pos + b - a], columnar.read_rows(self.shards[i][1][k], a, b, widen=False),
                          casting="safe")
                pos += b - a
            cols[k] = out
        return cols

    def buffers(self) -> Iterator[tuple[dict[str, np.ndarray], list[np.ndarray]]]:
        """One pass: yields ``(columns, blocks)`` per buffer.

        ``columns`` maps every input name and the label key to the buffer's rows;
        ``blocks`` are int64 row-index arrays [k, B] into it (k = ``steps`` except for
        the pass's last block; the very last may be [1, r] with r < B when
        ``drop_remainder`` is off). Carried rows are copied into the next buffer.
        """
        p = self.passes
        self.passes += 1
        rng = np.random.default_rng([self.seed, p]) if self.shuffle else None
        chunks = self._chunks(rng)
        carry: dict[str, np.ndarray] | None = None
        j = 0
        while j < len(chunks) or carry is not None:
            take, rows = [], 0 if carry is None else len(carry[self.label_key])
            while j < len(chunks) and rows < self.buffer_rows:
                take.append(chunks[j])
                rows += chunks[j][2] - chunks[j][1]
                j += 1
            last = j >= len(chunks)
            cols = self._read(take, carry)
            carry = None
            if cols is None:
                return
            n = len(cols[self.label_key])
            self.peak_rows = max(self.peak_rows, n)
            order = rng.permutation(n) if rng is not None else np.arange(n)
            nblk = n // self.block_rows
            blocks = [order[:nblk * self.block_rows].reshape(nblk, self.steps, self.batch_size)[i]
                      for i in range(nblk)]
            rest = order[nblk * self.block_rows:]
            if last:
                nb = len(rest) // self.batch_size
                if nb:
                    blocks.append(rest[:nb * self.batch_size].reshape(nb, self.batch_size))
                tail = rest[nb * self.batch_size:]
                if len(tail) and not self.drop_remainder:
                    blocks.append(tail.reshape(1, -1))
            elif len(rest):
                carry = {k: v[np.sort(rest)] for k, v in cols.items()}
            yield cols, [b.astype(np.int64) for b in blocks]


def _widen(a: np.ndarray) -> np.ndarray:
    """Native byte order; integers as int64 (ids may be stored as int32)."""
    if a.dtype.kind in "iu":
        return a.astype(np.int64, copy=False)
    return a.astype(a.dtype.newbyteorder("="), copy=False)


def _split_label(cols: dict[str, np.ndarray], label_key: str, keys: Sequence[str], idx: np.ndarray):
    return {k: cols[k][idx] for k in keys}, cols[label_key][idx].reshape(-1, 1)


def stream_dataset(schema: Schema, split: str, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                   domains: Sequence[int] | None = None, label_key: str | None = None,
                   drop_remainder: bool = False, buffer_rows: int = DEFAULT_BUFFER_ROWS,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS, shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """``(features, label)`` batches of a split from its columnar shards (bounded memory).

    Each iteration of the dataset is a new seeded pass (pass p uses ``(seed, p)``), so
    ``repeat()`` reshuffles and a new dataset with the same seed repeats the order.
    """
    steps = max(1, min(16, buffer_rows // batch_size))  # batches gathered per Python call
    plan = BufferPlan(schema, split, batch_size, steps=steps, shuffle=shuffle, seed=seed, domains=domains,
                      label_key=label_key, buffer_rows=max(buffer_rows, batch_size), chunk_rows=chunk_rows,
                      drop_remainder=drop_remainder, shard=shard)
    keys = plan.keys

    def gen():
        for cols, blocks in plan.buffers():
            for blk in blocks:  # [k, B] → arrays [k, B, ...], split into batches by unbatch()
                x, y = _split_label(cols, plan.label_key, keys, blk.reshape(-1))
                k, b = blk.shape
                yield {n: v.reshape(k, b, *v.shape[1:]) for n, v in x.items()}, y.reshape(k, b, 1)

    b = batch_size if drop_remainder else None
    spec = ({k: tf.TensorSpec([None, b, *plan.shards[0][1][k].shape[1:]],
                              tf.as_dtype(_widen(plan.shards[0][1][k][:0]).dtype))
             for k in keys}, tf.TensorSpec([None, b, 1], tf.float32))
    return tf.data.Dataset.from_generator(gen, output_signature=spec).unbatch()


class FusedStream:
    """Feeds the fused K-step trainer from a ``BufferPlan`` (see ``mdr_tf.fused.install_streamed``).

    ``dataset(seed)`` yields ``(tag, index_block)``; the rows of buffer ``tag`` wait in
    ``take(tag)`` until the trainer moves to it. The producer (tf.data's generator
    thread) holds at most ``max_pending`` buffers ahead of the trainer, which bounds
    memory whatever the prefetch depth.
    """

    def __init__(self, schema: Schema, split: str, batch_size: int, steps: int, *, domains=None, label_key=None,
                 buffer_rows: int = DEFAULT_BUFFER_ROWS, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 drop_remainder: bool = True, max_pending: int = 2):
        self.args = dict(batch_size=batch_size, steps=steps, domains=domains, label_key=label_key,
                         buffer_rows=buffer_rows, chunk_rows=chunk_rows, drop_remainder=drop_remainder)
        self.schema, self.split = schema, split
        self.probe = BufferPlan(schema, split, **self.args, shuffle=False)
        self.keys, self.label_key = self.probe.keys, self.probe.label_key
        self.capacity = self.probe.capacity
        self.max_pending = max_pending
        self._pending: dict[int, dict[str, np.ndarray]] = {}
        self._cv = threading.Condition()
        self._tag = 0
        self.buffers_loaded = 0

    def example_columns(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Zero-filled columns of the buffer capacity (the shapes and dtypes the trainer allocates)."""
        n0, c0 = self.probe.shards[0]
        feats = {k: np.zeros((self.capacity, *c0[k].shape[1:]), _widen(c0[k][:0]).dtype) for k in self.keys}
        return feats, np.zeros((self.capacity, 1), np.float32)

    def first_batch(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The first ``batch_size`` rows of the first non-empty shard (to build the model and optimizer)."""
        b = self.args["batch_size"]
        for n, cols in self.probe.shards:
            if n:
                return ({k: _widen(np.asarray(cols[k][:b])) for k in self.keys},
                        np.asarray(cols[self.label_key][:b], np.float32).reshape(-1, 1))
        raise ValueError(f"split {self.split!r} has no rows")

    def take(self, tag: int) -> dict[str, np.ndarray]:
        """The buffer ``tag`` (called by the trainer when it reaches it), released from the pool."""
        with self._cv:
            cols = self._pending.pop(tag)
            self._cv.notify_all()
        self.buffers_loaded += 1
        return cols

    def install(self, model, jit_compile: bool = True) -> None:
        """Installs the fused trainer over this stream on ``model`` (``mdr_tf.fused.install_streamed``)."""
        from mdr_tf.fused import install_streamed

        install_streamed(model, self, jit_compile=jit_compile)

    def dataset(self, seed: int, shuffle: bool = True) -> tf.data.Dataset:
        """One seeded pass per iteration: ``(tag, [k, B] row indices into buffer tag)``."""
        plan = BufferPlan(self.schema, self.split, **self.args, shuffle=shuffle, seed=seed)

        def gen():
            # A builder thread reads the buffers ahead (up to ``max_pending``), so copying a
            # buffer out of the memory map overlaps with training on the previous one.
            q: queue.Queue = queue.Queue()
            stop, done = threading.Event(), threading.Event()
            mine: list[int] = []

            def build():
                try:
                    for cols, blocks in plan.buffers():
                        with self._cv:
                            self._tag += 1
                            tag = self._tag
                            mine.append(tag)
                            while sum(t in self._pending for t in mine) >= self.max_pending and not stop.is_set():
                                self._cv.wait(0.5)
                            if stop.is_set():
                                return
                            self._pending[tag] = cols
                        q.put((tag, blocks))
                    q.put(None)
                except BaseException as e:  # re-raised in the generator (the trainer's thread)
                    q.put(e)

            threading.Thread(target=build, daemon=True, name="mdr_tf-outofcore-buffers").start()
            try:
                while True:
                    item = q.get()
                    if item is None:
                        done.set()  # the trainer still takes the last buffers
                        return
                    if isinstance(item, BaseException):
                        raise item
                    tag, blocks = item
                    for blk in blocks:
                        yield np.int64(tag), blk
            finally:
                if not done.is_set():  # an abandoned pass: stop the builder and drop its buffers
                    stop.set()
                    with self._cv:
                        for t in mine:
                            self._pending.pop(t, None)
                        self._cv.notify_all()

        spec = (tf.TensorSpec([], tf.int64), tf.TensorSpec([None, None], tf.int64))
        return without_autotune(tf.data.Dataset.from_generator(gen, output_signature=spec).prefetch(2))


def columnar_fits(schema: Schema, split: str = "train", domains: Sequence[int] | None = None) -> bool:
    """True when the split has complete columnar shards that still mirror their TFRecords."""
    return columnar.available(schema, split, domains, check_source=True)




def fused_stream_for(schema: Schema, batch_size: int, steps: int, mode: str = "mixed",
                     domains: Sequence[int] | None = None, **kwargs) -> "FusedStream | None":
    """The ``FusedStream`` that ``mdr_tf.training.fit`` uses for a train split too large for memory.

    None (``fit`` then streams TFRecords) when the split has no current columnar shards
    or the batches must hold one domain each (``mode="single_domain"``).
    """
    if mode != "mixed" or not columnar_fits(schema, "train", domains):
        return None
    return FusedStream(schema, "train", batch_size, steps, domains=domains, **kwargs)
