"""Embedding assignment policies for streaming recommenders (AutoAssign+, reconstructed).

AutoAssign+ (arXiv 2308.06965; KAIS 2024): an actor ("Identity Agent") represents
low-frequency ids field-wise with a few shared embeddings and decides which ids keep
their own row in the table; a critic guides it. **Only the abstract is available and no
official code exists**: every equation below is our reconstruction
(``docs/models/autoassign.md``), and every
choice is an argument with a stated default.

Policies (``FeatureEmbedding(assignment={"policy": ...})``; ``full`` = no assignment):

- ``threshold``: ids with fewer than ``threshold`` prior events read their field's
  row 0 (the OOV row, a per-field default row); others read their own row.
- ``hash``: every id of a managed field reads row ``1 + h(x) mod M_f`` of its field
  (``M_f = hash_buckets`` rows, or that fraction of the vocabulary), ``h`` a seeded random
  map; row 0 stays the OOV row.
- ``autoassign``: per field a shared pool ``P_f ∈ R^{M×d}``; an id ``x`` in the kept set
  ``K_f`` reads its own row ``E_f[x]``, any other id the mixture ``Σ_j β_xj P_f[j]`` with
  ``β_x = softmax(actor_β(s_x))``; ``ρ_x = σ(actor_ρ(s_x))`` is the keep probability used
  at chunk ends (``decide`` / ``apply_decisions``; the critic lives in
  ``mdr_tf.streaming.AutoAssignAgent``).

The counters (``count``, ``last`` seen chunk, ``now``) are non-trainable variables set at
chunk boundaries from events *before* the current chunk (``set_counters``).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from mdr_tf.schema import Schema

POLICIES = ("full", "threshold", "hash", "autoassign")
DEFAULT_FIELDS = ("user_id", "item_id", "zip")


def managed_fields(schema: Schema, fields: Sequence[str] | None) -> list[str]:
    """The categorical features a policy manages (default: user_id/item_id/zip present, else the id features)."""
    names = [f.name for f in schema.categorical]
    if fields is None:
        chosen = [n for n in DEFAULT_FIELDS if n in names] or [f.name for f in schema.categorical if f.is_id]
        if not chosen:
            raise ValueError("embedding assignment: the schema has none of the default fields "
                             f"{list(DEFAULT_FIELDS)} and no id feature; pass fields=[...] from {names}")
        return chosen
    bad = [n for n in fields if n not in names]
    if bad:
        raise ValueError(f"embedding assignment: field(s) {bad} are not categorical features of the schema "
                         f"(expected names from {names})")
    return list(fields)


def state_dim(num_fields: int, embedding_dim: int, use_row: bool) -> int:
    """Width of the actor state ``[log1p c, log1p age, kept, is_new, onehot(f), row?]``."""
    return 4 + num_fields + (embedding_dim if use_row else 0)


@keras.saving.register_keras_serializable(package="mdr_tf")
class EmbeddingAssignment(keras.layers.Layer):
    """Maps ids of the managed fields to rows / shared representations (see module doc).

    Used by ``FeatureEmbedding`` through two calls: ``remap(local_ids)`` before the fused
    gather (threshold, hash) and ``transform(local_ids, gathered, training)`` after it
    (autoassign). Every initializer is seeded explicitly, so adding this layer to a model
    does not shift the random initialisation of the model's other weights.

    Args:
      schema: ``Schema.to_config()`` dict.
      embedding_dim: ``d``.
      policy: "threshold", "hash" or "autoassign" ("full" means no assignment layer).
      fields: managed features (default: user_id, item_id, zip where present).
      pool_size: autoassign pool rows per field ``M`` (ours: 8).
      threshold: threshold policy: an id needs this many prior events for its own row (ours: 5).
      hash_buckets: hash policy: buckets per field; a value < 1 is a fraction of the
        field's vocabulary (ours: 0.7, i.e. 30 % fewer rows than the vocabulary).
      hash_seed: seed of the random hash map.
      actor_units: hidden width of the actor's two heads (ours: 32).
      state_row: include ``stopgrad(own row) · kept`` in the state (more-seeds §2.1).
      serve: shared representation outside training: "soft" (the mixture, as in
        training; default) or "argmax" (the single most likely pool row; more-seeds §2.1).
      keep_all: every id is kept from the start and decisions are skipped (the actor
        is bypassed): equals the ``full`` policy bit-exactly.
      keep_bias: initial bias of the keep head (ours: 1, i.e. ρ ≈ 0.73: start by
        admitting and learn to evict).
      pool_stddev: std of the pool's normal init (ours: 0.01).
      seed: seed of the layer's own initializers.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        embedding_dim: int = 16,
        policy: str = "autoassign",
        fields: Sequence[str] | None = None,
        pool_size: int = 8,
        threshold: int = 5,
        hash_buckets: float = 0.7,
        hash_seed: int = 0,
        actor_units: int = 32,
        state_row: bool = True,
        serve: str = "soft",
        keep_all: bool = False,
        keep_bias: float = 1.0,
        pool_stddev: float = 0.01,
        seed: int = 1234,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if policy not in POLICIES[1:]:
            raise ValueError(f"embedding assignment: policy {policy!r} must be one of {list(POLICIES[1:])} "
                             "('full' means no assignment layer)")
        if serve not in ("soft", "argmax"):
            raise ValueError(f"embedding assignment: serve={serve!r}, expected 'soft' or 'argmax'")
        self.schema_config = dict(schema)
        self.schema = Schema.from_config(schema)
        self.embedding_dim = int(embedding_dim)
        self.policy = policy
        self.fields = managed_fields(self.schema, fields)
        self.pool_size = int(pool_size)
        self.threshold = int(threshold)
        self.hash_buckets = float(hash_buckets)
        self.hash_seed = int(hash_seed)
        self.actor_units = int(actor_units)
        self.state_row = bool(state_row)
        self.serve = serve
        self.keep_all = bool(keep_all)
        self.keep_bias = float(keep_bias)
        self.pool_stddev = float(pool_stddev)
        self.seed = int(seed)
        cats = [f.name for f in self.schema.categorical]
        self.columns = [cats.index(n) for n in self.fields]  # column of each managed field in the fused gather
        self.vocab = [self.schema.feature(n).vocab_size for n in self.fields]
        if policy == "hash" and self.hash_buckets <= 0:
            raise ValueError(f"embedding assignment: hash_buckets={hash_buckets} must be > 0")
        if policy == "autoassign" and self.pool_size < 1:
            raise ValueError(f"embedding assignment: pool_size={pool_size} must be >= 1")

    # ------------------------------------------------------------------ build
    def buckets(self, k: int) -> int:
        """Hash buckets of managed field ``k`` (excluding the OOV row)."""
        v = self.vocab[k] - 1
        m = int(np.ceil(self.hash_buckets * v)) if self.hash_buckets < 1 else int(self.hash_buckets)
        return max(1, min(m, v))

    def _init(self, i: int, stddev: float):
        return keras.initializers.RandomNormal(0.0, stddev, seed=self.seed + 7919 * i)

    def build(self, input_shape=None):
        nf = len(self.fields)
        self.count, self.last, self.kept, self.bucket = [], [], [], []
        for k, (name, v) in enumerate(zip(self.fields, self.vocab)):
            self.count.append(self.add_weight(name=f"count_{name}", shape=(v,), initializer="zeros", trainable=False))
            self.last.append(self.add_weight(name=f"last_{name}", shape=(v,),
                                             initializer=keras.initializers.Constant(-1.0), trainable=False))
            self.kept.append(self.add_weight(name=f"kept_{name}", shape=(v,),
                                             initializer="ones" if self.keep_all else "zeros", trainable=False))
            if self.policy == "hash":
                b = self.add_weight(name=f"bucket_{name}", shape=(v,), initializer="zeros", dtype="int32",
                                    trainable=False)
                rng = np.random.default_rng([self.hash_seed, k])
                table = np.concatenate([[0], 1 + rng.integers(0, self.buckets(k), size=v - 1)]).astype(np.int32)
                b.assign(table)
                self.bucket.append(b)
        self.now = self.add_weight(name="now", shape=(), initializer="zeros", trainable=False)
        if self.policy == "autoassign":
            d, h, m = self.embedding_dim, self.actor_units, self.pool_size
            s = state_dim(nf, d, self.state_row)
            self.pool = self.add_weight(name="pool", shape=(nf, m, d), initializer=self._init(0, self.pool_stddev))
            # β head: trained by the recommender loss (the exact pathwise gradient of the
            # immediate reward −BCE w.r.t. the relaxed action β).
            self.beta_w1 = self.add_weight(name="beta_w1", shape=(s, h), initializer=self._init(1, (1 / s) ** 0.5))
            self.beta_b1 = self.add_weight(name="beta_b1", shape=(h,), initializer="zeros")
            self.beta_w2 = self.add_weight(name="beta_w2", shape=(h, m), initializer=self._init(2, (1 / h) ** 0.5))
            self.beta_b2 = self.add_weight(name="beta_b2", shape=(m,), initializer="zeros")
            # ρ head: not used in the forward pass; trained by the critic (AutoAssignAgent),
            # so it is non-trainable for Keras optimisers of the recommender.
            self.keep_w1 = self.add_weight(name="keep_w1", shape=(s, h), initializer=self._init(3, (1 / s) ** 0.5),
                                           trainable=False)
            self.keep_b1 = self.add_weight(name="keep_b1", shape=(h,), initializer="zeros", trainable=False)
            self.keep_w2 = self.add_weight(name="keep_w2", shape=(h, 1), initializer=self._init(4, 0.01 / h ** 0.5),
                                           trainable=False)
            self.keep_b2 = self.add_weight(name="keep_b2", shape=(1,),
                                           initializer=keras.initializers.Constant(self.keep_bias), trainable=False)
        self.built = True

    @property
    def keep_variables(self) -> list:
        """The ρ head's variables (trained by the agent's DDPG step)."""
        return [self.keep_w1, self.keep_b1, self.keep_w2, self.keep_b2]

    # ------------------------------------------------------------------ forward
    def state(self, k: int, x, own):
        """Actor state of ids ``x`` [N] of managed field ``k`` with own rows ``own`` [N, d]."""
        c = ops.take(self.count[k], x)
        last = ops.take(self.last[k], x)
        kept = ops.take(self.kept[k], x)
        age = ops.where(last < 0, self.now + 1.0, self.now - last)
        n = ops.shape(x)[0]
        onehot = ops.broadcast_to(ops.convert_to_tensor(np.eye(len(self.fields), dtype="float32")[k]),
                                  (n, len(self.fields)))
        parts = [ops.log1p(c)[:, None], ops.log1p(age)[:, None], kept[:, None],
                 ops.cast(c <= 0, "float32")[:, None], onehot]
        if self.state_row:
            parts.append(ops.stop_gradient(ops.cast(own, "float32")) * kept[:, None])
        return ops.concatenate(parts, axis=1)

    def mixture_weights(self, s):
        """β = softmax(actor_β(s)) [N, M]."""
        h = ops.relu(ops.matmul(s, self.beta_w1) + self.beta_b1)
        return ops.softmax(ops.matmul(h, self.beta_w2) + self.beta_b2, axis=-1)

    def keep_probability(self, s):
        """ρ = σ(actor_ρ(s)) [N]."""
        h = ops.relu(ops.matmul(s, self.keep_w1) + self.keep_b1)
        return ops.sigmoid(ops.matmul(h, self.keep_w2) + self.keep_b2)[:, 0]

    def mixture(self, k: int, x, own, training: bool = True):
        """Shared representation ``Σ_j β_j P_f[j]`` of ids ``x`` of field ``k`` (and β)."""
        beta = self.mixture_weights(self.state(k, x, own))
        if not training and self.serve == "argmax":
            beta = ops.one_hot(ops.argmax(beta, axis=-1), self.pool_size)
        return ops.matmul(beta, self.pool[k]), beta

    def remap(self, local):
        """Local ids [B, F+1] → the local rows to gather (threshold and hash policies)."""
        if self.policy not in ("threshold", "hash"):
            return local
        cols = [local[:, i] for i in range(local.shape[1])]
        for k, i in enumerate(self.columns):
            x = cols[i]
            if self.policy == "threshold":
                cols[i] = ops.where(ops.take(self.kept[k], x) > 0.5, x, ops.zeros_like(x))
            else:
                cols[i] = ops.take(self.bucket[k], x)
        return ops.stack(cols, axis=1)

    def transform(self, local, gathered, training=None):
        """Replaces the managed fields' rows of ``gathered`` [B, F+1, d] (autoassign policy)."""
        if self.policy != "autoassign":
            return gathered
        cols = [gathered[:, i, :] for i in range(gathered.shape[1])]
        for k, i in enumerate(self.columns):
            x = local[:, i]
            own = cols[i]
            mix, _ = self.mixture(k, x, own, training=bool(training))
            kept = ops.take(self.kept[k], x)[:, None] > 0.5
            cols[i] = ops.where(kept, own, ops.cast(mix, own.dtype))
        return ops.stack(cols, axis=1)

    def call(self, local, gathered, training=None):
        return self.transform(local, gathered, training=training)

    # ------------------------------------------------------------------ host side (chunk ends)
    def set_counters(self, counts: Sequence[np.ndarray], last: Sequence[np.ndarray], now: int) -> None:
        """Sets the counters from events before chunk ``now`` (threshold: kept = count ≥ τ)."""
        for k in range(len(self.fields)):
            self.count[k].assign(np.asarray(counts[k], np.float32))
            self.last[k].assign(np.asarray(last[k], np.float32))
            if self.policy == "threshold":
                self.kept[k].assign((np.asarray(counts[k]) >= self.threshold).astype(np.float32))
        self.now.assign(float(now))

    def rows_held(self) -> int:
        """Embedding rows the policy holds for its managed fields (see docs/models/autoassign.md)."""
        if self.policy == "autoassign":
            return int(sum(float(ops.sum(k)) for k in self.kept)) + len(self.fields) * self.pool_size
        if self.policy == "threshold":
            return int(sum(float(ops.sum(k)) for k in self.kept)) + len(self.fields)
        # hash: buckets hit by the ids seen so far (allocated on demand).
        out = 0
        for k in range(len(self.fields)):
            seen = ops.convert_to_tensor(self.count[k]) > 0
            b = np.asarray(ops.convert_to_numpy(self.bucket[k]))[np.asarray(ops.convert_to_numpy(seen))]
            out += len(np.unique(b))
        return out

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "schema": self.schema_config, "embedding_dim": self.embedding_dim, "policy": self.policy,
            "fields": list(self.fields), "pool_size": self.pool_size, "threshold": self.threshold,
            "hash_buckets": self.hash_buckets, "hash_seed": self.hash_seed, "actor_units": self.actor_units,
            "state_row": self.state_row, "serve": self.serve, "keep_all": self.keep_all,
            "keep_bias": self.keep_bias, "pool_stddev": self.pool_stddev, "seed": self.seed,
        })
        return config
