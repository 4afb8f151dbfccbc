"""Per-domain routing helpers shared by tower-per-domain models."""

from __future__ import annotations

from keras import ops

from mdr_tf.layers.stacked import stacked_dense


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


def per_row(fn, table):
    """``concat_i fn(table[i:i+1])``: ``fn`` on each row of a small static table ([N, ...]).

    Used where a per-domain table (``N = D``) passes through a matmul: the result of an
    old domain's row then does not depend on how many rows the table has (one matmul
    over all rows may round a row differently when the table grows, see
    ``mdr_tf.onboarding``). Cheap for the small D of multi-domain models.
    """
    n = table.shape[0]
    if n is None:
        raise ValueError("per_row needs a table with a static number of rows")
    return ops.concatenate([fn(table[i:i + 1]) for i in range(int(n))], axis=0)


ROUTINGS = ("bucket", "stacked", "masked", "gather", "partition")
BUCKET_SIZE = 32  # rows per tile of the "bucket" routing (measured: 32 is a good size on CPU)


def select_by_domain_masked(stacked, domain):
    """``Σ_d one_hot(domain)[b, d] · stacked[d, b]``: the same as ``select_by_domain``
    as a masked sum (stacked [D, B, ...] → [B, ...])."""
    d = stacked.shape[0]
    mask = ops.transpose(ops.one_hot(ops.cast(domain, "int32"), d, dtype=stacked.dtype))  # [D, B]
    for _ in range(len(stacked.shape) - 2):
        mask = ops.expand_dims(mask, -1)
    return ops.sum(mask * stacked, axis=0)


def all_domains_dense(x, kernels, biases=None):
    """Every domain's dense layer on the whole batch: x [B, n] (shared input) or
    [D, B, n] (per-domain inputs), kernels [D, n, u], biases [D, u] → [D, B, u]
    (``mdr_tf.layers.stacked.stacked_dense``, branch-major, one batched contraction)."""
    return stacked_dense(x, kernels, biases, "branch_major", "einsum")


def domain_buckets(domain, num_domains: int, tile: int = BUCKET_SIZE):
    """Places a mixed batch into per-domain tiles of ``tile`` rows (XLA-friendly grouping).

    Samples are laid out domain by domain, each domain's block padded to a multiple of
    ``tile``: sample b goes to padded row ``pos[b]``; tile j holds rows of domain
    ``tile_domain[j]`` only. The padded capacity ``n_tiles · tile ≤ B + D·(tile − 1)`` is
    static given B, so a per-domain computation costs at most ``(B + D·tile)/B`` of one
    shared layer instead of D times (compute-all).

    Returns:
      (pos int32 [B], tile_domain int32 [n_tiles], n_tiles scalar).
    """
    import tensorflow as tf

    domain = tf.cast(domain, tf.int32)
    onehot = tf.one_hot(domain, num_domains, dtype=tf.int32)  # [B, D]
    counts = tf.reduce_sum(onehot, axis=0)
    rank = tf.reduce_sum(tf.cumsum(onehot, axis=0, exclusive=True) * onehot, axis=1)  # rank within domain
    start = tf.cumsum((counts + tile - 1) // tile * tile, exclusive=True)  # padded block starts [D]
    pos = tf.gather(start, domain) + rank
    n_tiles = (tf.shape(domain)[0] + num_domains * (tile - 1) + tile - 1) // tile
    tile_start = tf.range(n_tiles) * tile
    # the last domain whose block starts at or before the tile (empty domains are skipped)
    tile_domain = tf.reduce_sum(tf.cast(tile_start[:, None] >= start[None, 1:], tf.int32), axis=1)
    return pos, tile_domain, n_tiles


def to_buckets(x, pos, n_tiles, tile: int = BUCKET_SIZE):
    """[B, n] → [n_tiles, tile, n] (padding rows are zeros)."""
    import tensorflow as tf

    return tf.reshape(tf.scatter_nd(pos[:, None], x, tf.stack([n_tiles * tile, tf.shape(x)[-1]])),
                      [n_tiles, tile, x.shape[-1]])


def from_buckets(h, pos):
    """[n_tiles, tile, u] → [B, u] (each sample's row)."""
    return ops.take(ops.reshape(h, (-1, h.shape[-1])), pos, axis=0)


def bucket_dense(h, tile_domain, kernels, biases=None):
    """One per-domain dense layer on bucketed rows: h [T, tile, n] → [T, tile, u]."""
    y = ops.matmul(h, ops.take(kernels, tile_domain, axis=0))
    return y if biases is None else y + ops.take(biases, tile_domain, axis=0)[:, None, :]


def domain_dense(x, kernels, biases, domain, routing: str = "bucket"):
    """Per-sample dense layer with the sample's domain's weights: ``y_b = x_b K_{s_b} + c_{s_b}``.

    Args:
      x: [B, n] inputs.
      kernels: [D, n, u] per-domain kernels.
      biases: [D, u] per-domain biases or None.
      domain: int [B] domain ids.
      routing: "bucket" (default, the fastest measured) — rows grouped into per-domain
        tiles (``domain_buckets``), one batched matmul with each tile's domain kernel;
        "stacked" — one batched einsum for all D domains over the whole batch,
        then ``select_by_domain`` (gather); "masked" — the same compute, then a one-hot
        masked sum; "gather" — per-sample gather of the kernels ([B, n, u]) and a
        batched matrix-vector product (memory B·n·u); "partition" —
        ``tf.dynamic_partition`` by domain, one matmul per domain on its own rows,
        ``tf.dynamic_stitch`` (1/D of the FLOPs, but dynamic shapes: not XLA-compilable).

    Returns:
      [B, u].
    """
    if routing == "bucket":
        pos, tile_domain, n_tiles = domain_buckets(domain, kernels.shape[0])
        return from_buckets(bucket_dense(to_buckets(x, pos, n_tiles), tile_domain, kernels, biases), pos)
    if routing == "stacked":
        return select_by_domain(all_domains_dense(x, kernels, biases), domain)
    if routing == "masked":
        return select_by_domain_masked(all_domains_dense(x, kernels, biases), domain)
    if routing == "gather":
        y = ops.einsum("bn,bnu->bu", x, gather_domain_params(kernels, domain))
        return y if biases is None else y + gather_domain_params(biases, domain)
    if routing == "partition":
        import tensorflow as tf  # dynamic shapes: not XLA-compilable (compile with jit_compile=False)

        d = kernels.shape[0]
        dom = ops.cast(domain, "int32")
        parts = tf.dynamic_partition(x, dom, d)
        rows = tf.dynamic_partition(tf.range(tf.shape(x)[0]), dom, d)
        outs = [ops.matmul(parts[i], kernels[i]) + (biases[i] if biases is not None else 0.0) for i in range(d)]
        return tf.dynamic_stitch(rows, outs)
    raise ValueError(f"unknown routing {routing!r}; available: {ROUTINGS}")
