"""CIGF's layers: compressed interaction graph convolution (CIGCN) and MESI.

Guo et al., "Compressed Interaction Graph based Framework for Multi-behavior
Recommendation", WWW 2023 (arXiv 2303.02418). Equations read from the official code
(MC-CV/CIGF ``defineModel`` / ``sesg_predict``; docs/models/cigf.md):

CIGCN, for behaviour k (behaviours ordered auxiliary → target) with left-normalised
bipartite adjacencies ``Â_k = D_k⁻¹ A_k`` over the N = U + I nodes:

    S^{k,1} = Â_k E⁰
    α^{k,l} = LeakyReLU_0.1(E⁰ W^{k,l} + b^{k,l}) ∈ R^{N×K}              (l ≥ 2, no softmax)
    S^{k,l} = Σ_{k'} diag(α^{k,l}_{:,k'}) Â_{k'} S^{k,l−1}
    H^{k,0} = E⁰,  H^{k,l} = H^{k,l−1} + S^{k,l},   Z^k = Σ_{l=0}^{L} H^{k,l}

The first hop follows behaviour k, each later hop mixes every behaviour's graph with
per-node weights ("instance-level high-order relations"). ``mixing=False`` (ablation)
keeps only behaviour k's own graph at every hop: ``S^{k,l} = Â_k S^{k,l−1}``.

MESI (multi-expert with separate input), task k and pair (u, i):

    g^k = softmax(W_g [Z^k_u ; Z^k_i] + b_g) ∈ R^K      (W_g shared by the tasks, as in the code)
    s^k = scale · Σ_d (Σ_{k'} g^k_{k'} Z^{k'}_u ⊙ Z^{k'}_i)_d       (scale = 300, the code's ``mult``)

``use_gate=False`` (ablation "without MESI") gives each task its own expert only:
``s^k = scale · ⟨Z^k_u, Z^k_i⟩``.

The sparse adjacency products make these layers TensorFlow-backend only.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.graph import propagate


@keras.saving.register_keras_serializable(package="mdr_tf")
class CIGCN(keras.layers.Layer):
    """Compressed interaction graph convolution; returns ``Z`` stacked as [K, N, d].

    Args:
      num_behaviors: K, the number of behaviour graphs (target last).
      num_layers: L ≥ 1 propagation hops (code default 2).
      mixing: mix the behaviours' graphs with per-node weights from hop 2 on (CIGF);
        False keeps behaviour k's graph at every hop (ablation).
      negative_slope: LeakyReLU slope of the mixing weights (code: 0.1).
      kernel_initializer: initializer of the mixing weights W^{k,l} (code: Xavier).
    """

    def __init__(self, num_behaviors: int, num_layers: int = 2, mixing: bool = True, negative_slope: float = 0.1,
                 kernel_initializer: Any = "glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if num_behaviors < 1 or num_layers < 1:
            raise ValueError(f"CIGCN: num_behaviors ({num_behaviors}) and num_layers ({num_layers}) must be >= 1")
        self.num_behaviors = int(num_behaviors)
        self.num_layers = int(num_layers)
        self.mixing = bool(mixing)
        self.negative_slope = float(negative_slope)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        K, hops = self.num_behaviors, max(self.num_layers - 1, 0)
        self.mix_kernel = self.mix_bias = None
        if self.mixing and hops:
            # W^{k,l}: [K (behaviour k), L-1 (hop l ≥ 2), d, K (mixed graph k')].
            self.mix_kernel = self.add_weight(name="mix_kernel", shape=(K, hops, dim, K),
                                              initializer=self.kernel_initializer)
            self.mix_bias = self.add_weight(name="mix_bias", shape=(K, hops, K), initializer="zeros")
        self.built = True

    def mixing_weights(self, embeddings, k: int, hop: int):
        """``α^{k,l}`` [N, K] for hop ``l = hop + 2``."""
        a = ops.matmul(embeddings, self.mix_kernel[k, hop]) + self.mix_bias[k, hop]
        return ops.leaky_relu(a, negative_slope=self.negative_slope)

    def call(self, embeddings, adjacencies: Sequence = ()):
        """``embeddings``: E⁰ [N, d]; ``adjacencies``: K normalised [N, N] adjacencies
        (``mdr_tf.layers.graph.SparseAdjacency`` or ``tf.SparseTensor``; pass as keyword)."""
        K = self.num_behaviors
        if len(adjacencies) != K:
            raise ValueError(f"CIGCN: {len(adjacencies)} adjacencies for {K} behaviours")
        d = ops.shape(embeddings)[-1]
        s = [propagate(adjacencies[k], embeddings) for k in range(K)]  # S^{k,1}
        h = [embeddings + s[k] for k in range(K)]  # H^{k,1}
        z = [2.0 * embeddings + s[k] for k in range(K)]  # H^{k,0} + H^{k,1}
        for hop in range(self.num_layers - 1):
            if self.mixing:
                # One product per graph k' on all behaviours' S^{k,l-1} at once: Â_{k'} [S^1 | … | S^K].
                stacked = ops.concatenate(s, axis=-1)  # [N, K·d]
                prop = [propagate(adjacencies[kp], stacked) for kp in range(K)]
                new_s = []
                for k in range(K):
                    alpha = self.mixing_weights(embeddings, k, hop)  # [N, K]
                    new_s.append(sum(alpha[:, kp:kp + 1] * prop[kp][:, k * d:(k + 1) * d] for kp in range(K)))
                s = new_s
            else:
                s = [propagate(adjacencies[k], s[k]) for k in range(K)]
            h = [h[k] + s[k] for k in range(K)]
            z = [z[k] + h[k] for k in range(K)]
        return ops.stack(z, axis=0)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_behaviors": self.num_behaviors, "num_layers": self.num_layers,
                "mixing": self.mixing, "negative_slope": self.negative_slope,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="mdr_tf")
class MESI(keras.layers.Layer):
    """Multi-expert with separate input: the score of task k from every behaviour's expert.

    Args:
      num_behaviors: K (experts = behaviours).
      scale: output multiplier (code ``mult`` = 300).
      use_gate: the softmax gate over experts (CIGF); False = task k's own expert only.
      kernel_initializer: initializer of the gate kernel W_g (code: Xavier).
    """

    def __init__(self, num_behaviors: int, scale: float = 300.0, use_gate: bool = True,
                 kernel_initializer: Any = "glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_behaviors = int(num_behaviors)
        self.scale = float(scale)
        self.use_gate = bool(use_gate)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.gate_kernel = self.gate_bias = None
        if self.use_gate and self.num_behaviors > 1:  # with one expert the gate is 1
            self.gate_kernel = self.add_weight(name="gate_kernel", shape=(2 * dim, self.num_behaviors),
                                               initializer=self.kernel_initializer)
            self.gate_bias = self.add_weight(name="gate_bias", shape=(self.num_behaviors,), initializer="zeros")
        self.built = True

    def gates(self, zu, zi, task: int):
        """``g^task`` [B, K] from the task's own representations (the "separate input")."""
        if self.gate_kernel is None:
            return ops.one_hot(ops.full((ops.shape(zu)[0],), task), self.num_behaviors, dtype=zu.dtype)
        x = ops.concatenate([zu[:, task], zi[:, task]], axis=-1)
        return ops.softmax(ops.matmul(x, self.gate_kernel) + self.gate_bias, axis=-1)

    def call(self, zu, zi, task: int):
        """``zu``, ``zi``: [B, K, d] user / item representations of every behaviour; returns [B]."""
        experts = zu * zi  # [B, K, d]
        if self.gate_kernel is None:
            return self.scale * ops.sum(experts[:, task], axis=-1)
        g = self.gates(zu, zi, task)  # [B, K]
        return self.scale * ops.sum(ops.sum(experts, axis=-1) * g, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_behaviors": self.num_behaviors, "scale": self.scale,
                "use_gate": self.use_gate, "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}
