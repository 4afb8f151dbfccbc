"""HAMUR models (Li et al., CIKM 2023, arXiv 2309.06217).

- ``HamurMLP``: HAMUR's multi-domain MLP (official ``MLP_adap_2_layer_1_adp`` /
  Scenario-Wise-Rec ``HamurSmall``): one full tower per domain
  ``[Linear → BN → ReLU] × L → Linear(1)`` on the instance embedding ``e``, a
  ``HyperAdapter`` (shared across domains) after the chosen hidden layers of every
  tower, and the output taken from the sample's own domain tower. The towers run as
  one einsum over stacked kernels [D, n, u] on the whole batch (R1, compute-all),
  so each tower's BatchNorm sees the whole mixed batch, as in the official code.
- HAMUR on W&D / DCN: ``BackboneModel(backbone="wdl"|"dcn", hook="hamur",
  hook_positions=[-1])`` (shared backbone, adapter after the deep part); the model
  computes the core once per batch through ``HyperAdapter.context_provider``.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.mechanisms.hamur import HyperAdapter, HyperNetwork, PerDomainBatchNorm, PerDomainDense
from mdr_tf.layers.routing import select_by_domain
from mdr_tf.models.backbones import BackboneModel
from mdr_tf.models.base import MultiDomainModel


@keras.saving.register_keras_serializable(package="mdr_tf")
class HamurMLP(MultiDomainModel):
    """HAMUR with per-domain MLP towers and instance-wise hyper adapters.

    ``ŷ_b = σ(tower_{s_b}(e_b))`` where tower d is
    ``h ← ReLU(BN_d(h W_d + b_d))`` per hidden layer, followed (at
    ``adapter_positions``) by ``h ← h + DN(σ(h U1 H_b V1 + c1) U2 H_b V2 + c2)`` with
    ``H_b = g(e_b)`` computed once per batch, and ``w_dᵀ h + b_d`` at the end.

    The defaults are the registry's main-table "hamur" (the package's common towers
    128-64-32, k 16: ours); the official MovieLens setting is "hamur_official".

    Args:
      schema: ``Schema.to_config()`` dict.
      hidden_units: tower widths (ours: [128, 64, 32]; official MovieLens: [256, 128]).
      k: core size (ours: 16; official MovieLens: 35).
      hyper_dims: hyper-network hidden widths (official: [64]).
      bottleneck: adapter bottleneck width (official: 32).
      adapter_positions: hidden-layer indices (negative from the end) followed by an
        adapter (official small: [-1]; large 7-layer: [-2, -1]).
      adapter_initializer: initializer of U1, V1, U2, V2 (official: ones).
      norm_mode, norm_momentum, norm_epsilon: the adapters' ``DomainNorm`` (default
        "moving" is ours; "batch" is official).
      bn_momentum, bn_epsilon: tower and hyper-network BN (torch 0.1 → 0.9, 1e-5).
      dropout: dropout after each tower ReLU (official 0).
      kernel_initializer: tower / hyper-network kernels (ours: glorot; torch default
        ``VarianceScaling(1/3, "fan_in", "uniform")`` for parity).
      tower_implementation: ``PerDomainDense`` evaluation order ("auto", "loop" or
        "einsum"; same result, see ``mdr_tf.layers.stacked``).
      **kwargs: ``MultiDomainModel`` arguments (embedding_dim, ...).
    """

    def __init__(
        self,
        schema: dict[str, Any],
        hidden_units: Sequence[int] = (128, 64, 32),
        k: int = 16,
        hyper_dims: Sequence[int] = (64,),
        bottleneck: int = 32,
        adapter_positions: Sequence[int] = (-1,),
        adapter_initializer: Any = "ones",
        norm_mode: str = "moving",
        norm_momentum: float = 0.9,
        norm_epsilon: float = 1e-5,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        dropout: float = 0.0,
        kernel_initializer: Any = "glorot_uniform",
        tower_implementation: str = "auto",
        **kwargs,
    ):
        super().__init__(schema, **kwargs)
        self.hidden_units = [int(u) for u in hidden_units]
        if not self.hidden_units:
            raise ValueError("HamurMLP needs at least one hidden layer")
        n = len(self.hidden_units)
        self.k = int(k)
        self.hyper_dims = [int(u) for u in hyper_dims]
        self.bottleneck = int(bottleneck)
        self.adapter_positions = sorted({int(p) % n for p in adapter_positions})
        self.adapter_initializer = adapter_initializer
        self.norm_mode = norm_mode
        self.norm_momentum = float(norm_momentum)
        self.norm_epsilon = float(norm_epsilon)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.dropout = float(dropout)
        self.kernel_initializer = kernel_initializer
        self.tower_implementation = tower_implementation
        d = self.num_domains
        self.hyper = HyperNetwork(self.k, self.hyper_dims, self.bn_momentum, self.bn_epsilon,
                                  kernel_initializer=kernel_initializer, name="hyper", dtype=self.dtype_policy)
        self.towers = [PerDomainDense(u, d, kernel_initializer=kernel_initializer,
                                      implementation=tower_implementation, name=f"tower_{i}",
                                      dtype=self.dtype_policy)
                       for i, u in enumerate(self.hidden_units)]
        self.tower_norms = [PerDomainBatchNorm(self.bn_momentum, self.bn_epsilon, name=f"tower_bn_{i}",
                                              dtype=self.dtype_policy)
                            for i in range(n)]
        self.adapters = [HyperAdapter(d, self.context_dims, k=self.k, bottleneck=self.bottleneck,
                                      hyper_dims=self.hyper_dims, adapter_initializer=adapter_initializer,
                                      norm_mode=norm_mode, norm_momentum=self.norm_momentum,
                                      norm_epsilon=self.norm_epsilon, name=f"adapter_{p}", dtype=self.dtype_policy)
                         for p in self.adapter_positions]  # adapters[j] follows hidden layer adapter_positions[j]
        self.drop = (keras.layers.Dropout(self.dropout, name="dropout", dtype=self.dtype_policy)
                     if self.dropout > 0 else None)
        self.out = PerDomainDense(1, d, kernel_initializer=kernel_initializer, implementation=tower_implementation,
                                  name="tower_out", dtype=self.dtype_policy)

    def compute_logit(self, inputs, ctx, training=None):
        e = ctx["all"]
        core = self.hyper(e, training=training)  # once per batch, shared by every adapter
        adapter_ctx = {**ctx, "hamur_core": core}
        h = e
        for i, (dense, norm) in enumerate(zip(self.towers, self.tower_norms)):
            h = ops.relu(norm(dense(h, training=training), training=training))  # [B, D, u]
            if self.drop is not None:
                h = self.drop(h, training=training)
            if i in self.adapter_positions:
                h = self.adapters[self.adapter_positions.index(i)](h, adapter_ctx, training=training)
        logits = self.out(h, training=training)  # [B, D, 1]
        return select_by_domain(ops.transpose(logits, (1, 0, 2)), ctx["domain"])  # [B, 1]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "hidden_units": self.hidden_units, "k": self.k, "hyper_dims": self.hyper_dims,
            "bottleneck": self.bottleneck, "adapter_positions": self.adapter_positions,
            "adapter_initializer": keras.initializers.serialize(keras.initializers.get(self.adapter_initializer)),
            "norm_mode": self.norm_mode,
            "norm_momentum": self.norm_momentum, "norm_epsilon": self.norm_epsilon,
            "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon, "dropout": self.dropout,
            "kernel_initializer": keras.initializers.serialize(keras.initializers.get(self.kernel_initializer)),
            "tower_implementation": self.tower_implementation,
        })
        return config


def hamur_backbone(schema: dict[str, Any], backbone: str = "wdl", k: int = 35, hyper_dims: Sequence[int] = (64,),
                   bottleneck: int = 32, adapter_initializer: Any = "ones", norm_mode: str = "moving",
                   hook_positions: Sequence[int] = (-1,), **kwargs) -> BackboneModel:
    """Builder: HAMUR on a shared backbone (official W&D / DCN variants): one adapter
    after the deep part, core computed once per batch by the model."""
    hook_config = {"k": int(k), "hyper_dims": [int(u) for u in hyper_dims], "bottleneck": int(bottleneck),
                   "adapter_initializer": adapter_initializer, "norm_mode": norm_mode,
                   **dict(kwargs.pop("hook_config", None) or {})}
    return BackboneModel(schema, backbone=backbone, hook="hamur", hook_config=hook_config,
                         hook_positions=list(hook_positions), **kwargs)
