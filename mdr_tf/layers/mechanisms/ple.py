"""PLE (Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations", RecSys 2020), domains as tasks: the CGC level.

Equation of one Customized Gate Control level (domain d, ``ns`` specific experts per
domain, ``nsh`` shared experts):

    h_d = Σ_i g_{d,i}(x_d) E_i(x_d),  g_d = softmax(Linear_d(x_d) (→ BN))

over ``[E_{d,1..ns}, E_{shared,1..nsh}]``; a level that feeds another level also
outputs ``h_s = Σ_j g_{s,j}(x_s) E_j`` whose gate spans all experts. The stacked experts
are ``mdr_tf.layers.experts.StackedMLP``; the model (levels → per-domain towers) is
assembled in ``mdr_tf.models.multitower.PLE``.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.experts import StackedMLP, mix_experts
from mdr_tf.layers.routing import select_by_domain


@keras.saving.register_keras_serializable(package="mdr_tf")
class CGCLevel(keras.layers.Layer):
    """One Customized Gate Control level of PLE (Tang et al., RecSys 2020), domains as tasks.

    Domain d has ``num_specific`` experts of its own; ``num_shared`` experts are shared.
    Domain d's gate mixes only its own specific experts and the shared ones:
    ``h_d = Σ_i g_{d,i}(x_d) E_i(x_d)``, ``g_d = softmax(Linear_d(x_d) (→ BN))`` over
    ``[E_{d,1..ns}, E_{shared,1..nsh}]``. A level that feeds another level also outputs
    the shared branch ``h_s = Σ_j g_{s,j}(x_s) E_j`` whose gate spans all experts.

    Input: [B, n] (first level: one input for every branch) or [D+1, B, n] (the D domain
    branches and the shared branch of the previous level). Output: [D, B, u] (last
    level) or [D+1, B, u].

    Args:
      num_domains: D.
      num_specific: specific experts per domain (Scenario-Wise-Rec: 2).
      num_shared: shared experts (Scenario-Wise-Rec: 1).
      expert_units: expert MLP widths.
      last: whether this is the last level (no shared-branch output).
      activation, batch_norm, dropout: expert MLP options.
      gate_batch_norm: BN between the gate's linear layer and its softmax (the
        references' Linear → BN → Softmax).
      bn_momentum, bn_epsilon: BN settings.

    Example:
      >>> level = CGCLevel(num_domains=3, num_specific=2, num_shared=1, expert_units=[64])
      >>> h = level(np.zeros((8, 20), "float32"))  # [3, 8, 64]: every domain's output
      >>> h_own = level(np.zeros((8, 20), "float32"), domain=np.zeros(8, "int32"))  # [8, 64]

    References:
      Tang et al., RecSys 2020, §4.2 (CGC) and §4.3 (PLE).
    """

    def __init__(
        self,
        num_domains: int,
        num_specific: int = 2,
        num_shared: int = 1,
        expert_units: Sequence[int] = (64,),
        last: bool = True,
        activation: str = "relu",
        batch_norm: bool = False,
        gate_batch_norm: bool = False,
        dropout: float = 0.0,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_domains = int(num_domains)
        self.num_specific = int(num_specific)
        self.num_shared = int(num_shared)
        self.expert_units = [int(u) for u in expert_units]
        self.last = bool(last)
        self.activation = activation
        self.batch_norm = bool(batch_norm)
        self.gate_batch_norm = bool(gate_batch_norm)
        self.dropout = float(dropout)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        d, ns, nsh = self.num_domains, self.num_specific, self.num_shared
        mlp = dict(activation=activation, batch_norm=self.batch_norm, dropout=self.dropout,
                   bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=self.dtype_policy)
        gate = dict(activation="linear", batch_norm=self.gate_batch_norm, bn_momentum=self.bn_momentum,
                    bn_epsilon=self.bn_epsilon, dtype=self.dtype_policy)
        self.specific = StackedMLP(d * ns, self.expert_units, per_domain=True, name="specific_experts", **mlp) \
            if ns else None
        self.shared = StackedMLP(nsh, self.expert_units, name="shared_experts", **mlp) if nsh else None
        self.gates = StackedMLP(d, [ns + nsh], per_domain=True, name="domain_gates", **gate)
        self.shared_gate = None if self.last else StackedMLP(1, [d * ns + nsh], name="shared_gate", **gate)

    def build(self, input_shape):
        shape = (None, int(input_shape[-1]))
        for layer in (self.specific, self.shared, self.gates, self.shared_gate):
            if layer is not None:
                layer.build(shape)
        self.built = True

    @property
    def output_dim(self) -> int:
        return self.expert_units[-1]

    def domain_gate_weights(self, x, training: bool | None = None):
        """Softmax gate weights of every domain [D, B, ns + nsh] (own specific, then shared)."""
        x_dom = x if len(x.shape) == 2 else x[: self.num_domains]
        return ops.softmax(self.gates(x_dom, training=training), axis=-1)

    def call(self, x, domain=None, training: bool | None = None):
        """[D(+1), B, u]; or, for the last level given ``domain`` [B], each sample's own
        domain's output [B, u] (only its own gate is mixed)."""
        d, ns, nsh = self.num_domains, self.num_specific, self.num_shared
        shared_in = len(x.shape) == 2
        x_dom = x if shared_in else x[:d]
        x_sh = x if shared_in else x[d]
        spec = self.specific(x if shared_in else ops.repeat(x_dom, ns, axis=0), training=training) \
            if ns else None  # [D·ns, B, u]; branch d·ns + j reads x_d
        sh = self.shared(x_sh, training=training) if nsh else None  # [nsh, B, u]
        if self.last and domain is not None:
            domain = ops.cast(domain, "int32")
            logits = self.gates(x, domain, training=training) if shared_in \
                else select_by_domain(self.gates(x_dom, training=training), domain)
            g = ops.softmax(logits, axis=-1)  # [B, ns + nsh]
            h = 0.0
            if ns:  # own specific experts: the gate spread over all D·ns with zeros elsewhere
                w = ops.one_hot(domain, d, dtype=g.dtype)[:, :, None] * g[:, None, :ns]
                h = mix_experts(ops.reshape(w, (-1, d * ns)), spec)
            return h + mix_experts(g[:, ns:], sh) if nsh else h
        g = self.domain_gate_weights(x, training=training)  # [D, B, ns + nsh]
        h = 0.0
        if ns:
            eye = ops.eye(d, dtype=g.dtype)[:, None, :, None]  # [D, 1, D, 1]
            w = ops.reshape(eye * g[:, :, None, :ns], (d, -1, d * ns))  # [D, B, D·ns]
            h = ops.einsum("dbe,ebu->dbu", w, spec)
        if nsh:
            h = h + ops.einsum("dbj,jbu->dbu", g[:, :, ns:], sh)
        if self.last:
            return h
        every = ops.concatenate(([spec] if ns else []) + ([sh] if nsh else []), axis=0)  # [D·ns + nsh, B, u]
        g_s = ops.softmax(self.shared_gate(x_sh, training=training)[0], axis=-1)
        h_s = mix_experts(g_s, every)
        return ops.concatenate([h, h_s[None]], axis=0)

    def compute_output_shape(self, input_shape):
        return (self.num_domains + (0 if self.last else 1), input_shape[-2], self.output_dim)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "num_domains": self.num_domains, "num_specific": self.num_specific, "num_shared": self.num_shared,
            "expert_units": self.expert_units, "last": self.last, "activation": self.activation,
            "batch_norm": self.batch_norm, "gate_batch_norm": self.gate_batch_norm, "dropout": self.dropout,
            "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon,
        })
        return config
