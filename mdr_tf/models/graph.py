"""Graph / embedding models for top-N recommendation: CIGF, LightGCN, MF-BPR.

A different task from the CTR models of ``mdr_tf.registry``: these score (user, item)
pairs for ranking, train with a BPR loss (``mdr_tf.topn``) and read the multi-behaviour
data of ``data_prep.multibehavior``. Every model exposes

    propagate(adjacencies) -> Z [T, N, d]        representations per task (N = U + I nodes)
    score(Z, users, items, task) -> [B]          task t in 0..T-1, the target task is T-1
    regularization(users, pos, neg) -> scalar    the model's L2 term

and ``behaviors``: which data behaviours (indices, target last) are its graphs and tasks.

- ``CIGF`` (Guo et al., WWW 2023): CIGCN over all K behaviour graphs (left-normalised),
  MESI decoder, score scale 300, L2 0.01 on the full embedding tables, the mixing and the
  gate kernels (official code; docs/models/cigf.md).
- ``LightGCN`` (He et al., SIGIR 2020): symmetric normalisation ``D^-1/2 A D^-1/2`` of the
  target graph, ``Z = mean_{l=0..L} Â^l E⁰``, inner product, L2 on the batch's ego
  embeddings (the paper's form).
- ``MFBPR`` (Rendle et al., UAI 2009): ``s = ⟨e_u, e_i⟩`` on the target behaviour.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.graph import bipartite_adjacency, propagate  # noqa: F401  (re-exported)
from mdr_tf.layers.mechanisms.cigf import CIGCN, MESI


class TopNModel(keras.Model):
    """Base: one ego-embedding table per side; subclasses define propagation and decoder.

    Args:
      num_users, num_items: graph sizes.
      num_behaviors: K behaviours in the data (target last).
      embedding_dim: d.
      embedding_initializer: init of the ego tables.
    """

    adjacency_norm: str | None = None  # None: the model reads no graph

    def __init__(self, num_users: int, num_items: int, num_behaviors: int = 1, embedding_dim: int = 16,
                 embedding_initializer: Any = "glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.num_behaviors = int(num_behaviors)
        self.embedding_dim = int(embedding_dim)
        self.embedding_initializer = keras.initializers.get(embedding_initializer)
        self.user_embedding = self.add_weight(name="user_embedding", shape=(self.num_users, self.embedding_dim),
                                              initializer=self.embedding_initializer)
        self.item_embedding = self.add_weight(name="item_embedding", shape=(self.num_items, self.embedding_dim),
                                              initializer=self.embedding_initializer)
        self._graph: list | None = None

    def build(self, input_shape=None):
        """All weights are created in ``__init__`` (their shapes come from the graph sizes)."""
        self.built = True

    @property
    def behaviors(self) -> tuple[int, ...]:
        """Data behaviours used as graphs and tasks (default: the target only)."""
        return (self.num_behaviors - 1,)

    def ego(self):
        return ops.concatenate([self.user_embedding, self.item_embedding], axis=0)

    def set_graph(self, adjacencies: Sequence) -> None:
        """Stores the normalised adjacencies of ``self.behaviors`` used by ``call``."""
        self._graph = list(adjacencies)

    def propagate(self, adjacencies: Sequence):
        return ops.expand_dims(self.ego(), 0)

    def gather(self, z, users, items):
        """[B, T, d] user and item rows of every task's representations."""
        zu = ops.transpose(ops.take(z, users, axis=1), (1, 0, 2))
        zi = ops.transpose(ops.take(z, ops.convert_to_tensor(items) + self.num_users, axis=1), (1, 0, 2))
        return zu, zi

    def score(self, z, users, items, task: int):
        zu, zi = self.gather(z, users, items)
        return ops.sum(zu[:, task] * zi[:, task], axis=-1)

    def regularization(self, users, pos, neg):
        return ops.convert_to_tensor(0.0)

    def call(self, inputs):
        """``{"user": [B], "item": [B]}`` → target-task score [B] (graph from ``set_graph``)."""
        if self.adjacency_norm is not None and self._graph is None:
            raise ValueError(f"{type(self).__name__}: call set_graph(adjacencies) first")
        z = self.propagate(self._graph or [])
        return self.score(z, inputs["user"], inputs["item"], len(self.behaviors) - 1)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_users": self.num_users, "num_items": self.num_items,
                "num_behaviors": self.num_behaviors, "embedding_dim": self.embedding_dim,
                "embedding_initializer": keras.initializers.serialize(self.embedding_initializer)}


@keras.saving.register_keras_serializable(package="mdr_tf")
class MFBPR(TopNModel):
    """Matrix factorisation with BPR (target behaviour): ``s = ⟨e_u, e_i⟩``.

    Args (beyond ``TopNModel``):
      reg: L2 weight on the batch's ego embeddings, ``reg · (‖e_u‖² + ‖e_i‖² + ‖e_j‖²) / 2B``.
    """

    def __init__(self, num_users: int, num_items: int, num_behaviors: int = 1, embedding_dim: int = 16,
                 embedding_initializer: Any = None, reg: float = 1e-4, **kwargs):
        embedding_initializer = embedding_initializer or keras.initializers.RandomNormal(stddev=0.1)
        super().__init__(num_users, num_items, num_behaviors, embedding_dim, embedding_initializer, **kwargs)
        self.reg = float(reg)

    def regularization(self, users, pos, neg):
        eu = ops.take(self.user_embedding, users, axis=0)
        ei = ops.take(self.item_embedding, pos, axis=0)
        ej = ops.take(self.item_embedding, neg, axis=0)
        b = ops.maximum(ops.cast(ops.shape(users)[0], "float32"), 1.0)
        return self.reg * (ops.sum(eu * eu) + ops.sum(ei * ei) + ops.sum(ej * ej)) / (2.0 * b)

    def get_config(self) -> dict:
        return {**super().get_config(), "reg": self.reg}


@keras.saving.register_keras_serializable(package="mdr_tf")
class LightGCN(MFBPR):
    """LightGCN on the target graph: ``Z = (1/(L+1)) Σ_{l=0}^{L} Â^l E⁰``, ``Â = D^-1/2 A D^-1/2``.

    He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation", SIGIR 2020.

    Args (beyond ``MFBPR``):
      num_layers: L (paper: 3; here 2 like CIGF's default).
    """

    adjacency_norm = "symm"

    def __init__(self, num_users: int, num_items: int, num_behaviors: int = 1, embedding_dim: int = 16,
                 embedding_initializer: Any = None, reg: float = 1e-4, num_layers: int = 2, **kwargs):
        super().__init__(num_users, num_items, num_behaviors, embedding_dim, embedding_initializer, reg, **kwargs)
        self.num_layers = int(num_layers)

    def propagate(self, adjacencies: Sequence):
        (adj,) = adjacencies
        e = self.ego()
        total = e
        for _ in range(self.num_layers):
            e = propagate(adj, e)
            total = total + e
        return ops.expand_dims(total / float(self.num_layers + 1), 0)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_layers": self.num_layers}


@keras.saving.register_keras_serializable(package="mdr_tf")
class CIGF(TopNModel):
    """CIGF: CIGCN over every behaviour's graph + MESI decoder, one BPR task per behaviour.

    Guo et al., "Compressed Interaction Graph based Framework for Multi-behavior
    Recommendation", WWW 2023. Defaults are the official code's (d = latdim/2 = 16,
    L = 2, left normalisation, scale 300, L2 0.01 on the full tables and kernels).

    Args (beyond ``TopNModel``):
      num_layers: CIGCN hops L.
      mixing: per-node mixing of all graphs from hop 2 on (False: ablation).
      use_gate: MESI's gate over experts (False: ablation "without MESI").
      scale: score multiplier (code ``mult``).
      reg: L2 weight on the full ego tables, mixing and gate kernels (biases excluded).
      target_only: use only the target behaviour (one graph, one task; ablation "without
        multi-behaviour data": MESI's single gate is 1, the score 300·<Z_u, Z_i>).
    """

    adjacency_norm = "left"

    def __init__(self, num_users: int, num_items: int, num_behaviors: int = 3, embedding_dim: int = 16,
                 embedding_initializer: Any = "glorot_uniform", num_layers: int = 2, mixing: bool = True,
                 use_gate: bool = True, scale: float = 300.0, reg: float = 0.01, negative_slope: float = 0.1,
                 target_only: bool = False, **kwargs):
        super().__init__(num_users, num_items, num_behaviors, embedding_dim, embedding_initializer, **kwargs)
        self.num_layers = int(num_layers)
        self.mixing = bool(mixing)
        self.use_gate = bool(use_gate)
        self.scale = float(scale)
        self.reg = float(reg)
        self.negative_slope = float(negative_slope)
        self.target_only = bool(target_only)
        k = len(self.behaviors)
        self.cigcn = CIGCN(k, self.num_layers, mixing=self.mixing, negative_slope=self.negative_slope, name="cigcn",
                           dtype=self.dtype_policy)
        self.mesi = MESI(k, scale=self.scale, use_gate=self.use_gate, name="mesi", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.cigcn.build((self.num_users + self.num_items, self.embedding_dim))
        self.mesi.build((None, len(self.behaviors), self.embedding_dim))
        self.built = True

    @property
    def behaviors(self) -> tuple[int, ...]:
        if getattr(self, "target_only", False):
            return (self.num_behaviors - 1,)
        return tuple(range(self.num_behaviors))

    def propagate(self, adjacencies: Sequence):
        if not self.built:
            self.build()
        return self.cigcn(self.ego(), adjacencies=list(adjacencies))

    def score(self, z, users, items, task: int):
        if not self.built:
            self.build()
        zu, zi = self.gather(z, users, items)
        return self.mesi(zu, zi, task=task)

    def regularization(self, users, pos, neg):
        if not self.built:
            self.build()
        terms = [self.user_embedding, self.item_embedding]
        if self.cigcn.mix_kernel is not None:
            terms.append(self.cigcn.mix_kernel)
        if self.mesi.gate_kernel is not None:
            terms.append(self.mesi.gate_kernel)
        return self.reg * sum(ops.sum(ops.square(t)) for t in terms)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_layers": self.num_layers, "mixing": self.mixing,
                "use_gate": self.use_gate, "scale": self.scale, "reg": self.reg,
                "negative_slope": self.negative_slope, "target_only": self.target_only}
