"""Backbones (MLP, Wide&Deep, DCN, DeepFM) whose deep part is a ``DomainMLP``.

A domain mechanism is chosen with ``block`` (replaces every dense layer of the deep
part) and/or ``hook`` (acts between layers): "MLoRA on DCN" is
``BackboneModel(schema, backbone="dcn", block="mlora")``. As in MLoRA's DeepCTR
variants, the wide / cross / FM parts stay domain-agnostic; the domain id enters them
as an ordinary field.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.blocks import hook_class
from mdr_tf.layers.interaction import CrossNetwork, FactorizationMachine, LinearTerm
from mdr_tf.layers.mlp import DomainMLP
from mdr_tf.models.base import MultiDomainModel

BACKBONES = ("mlp", "wdl", "dcn", "deepfm")


@keras.saving.register_keras_serializable(package="mdr_tf")
class BackboneModel(MultiDomainModel):
    """A backbone with pluggable domain-aware dense blocks and hooks.

    Args:
      schema: ``Schema.to_config()`` dict.
      backbone: "mlp" (DNN), "wdl" (Wide&Deep), "dcn" (Deep & Cross), "deepfm".
      hidden_units: deep-part widths (MI-DPG setup: 128-64-32).
      block, block_config, hook, hook_config, hook_positions, hook_on_input: see
        ``DomainMLP``.
      batch_norm, dropout, activation: deep-part options.
      cross_layers: DCN cross layers.
      kernel_initializer: initializer of the deep blocks' shared kernels (unless
        ``block_config`` names one), the cross layers and the head; None keeps each
        layer's own default (glorot-uniform). MLoRA's DeepCTR variants: "glorot_normal".
      **kwargs: ``MultiDomainModel`` arguments (embedding_dim, ...).
    """

    def __init__(
        self,
        schema: dict[str, Any],
        backbone: str = "mlp",
        hidden_units: Sequence[int] = (128, 64, 32),
        block: str = "plain",
        block_config: dict[str, Any] | None = None,
        hook: str | None = None,
        hook_config: dict[str, Any] | None = None,
        hook_positions: Sequence[int] | None = None,
        hook_on_input: bool = False,
        batch_norm: bool = False,
        dropout: float = 0.0,
        activation: str = "relu",
        cross_layers: int = 2,
        kernel_initializer: Any = None,
        **kwargs,
    ):
        super().__init__(schema, **kwargs)
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; available: {BACKBONES}")
        self.backbone = backbone
        self.hidden_units = [int(u) for u in hidden_units]
        self.block = block
        self.block_config = dict(block_config or {})
        self.hook = hook
        self.hook_config = dict(hook_config or {})
        self.hook_positions = None if hook_positions is None else [int(p) for p in hook_positions]
        self.hook_on_input = bool(hook_on_input)
        self.batch_norm = bool(batch_norm)
        self.dropout = float(dropout)
        self.activation = activation
        self.cross_layers = int(cross_layers)
        self.kernel_initializer = kernel_initializer
        deep_block_config = dict(self.block_config)
        if kernel_initializer is not None:
            deep_block_config.setdefault("kernel_initializer", kernel_initializer)
        self.deep = DomainMLP(
            self.hidden_units, num_domains=self.num_domains, context_dims=self.context_dims, block=block,
            block_config=deep_block_config, hook=hook, hook_config=self.hook_config,
            hook_positions=self.hook_positions, hook_on_input=self.hook_on_input, activation=activation,
            batch_norm=self.batch_norm, dropout=self.dropout, name="deep")
        # A hook class may provide a layer run once per batch before the deep part whose
        # output dict is merged into ctx (HAMUR: the instance core shared by all adapters).
        provider = getattr(hook_class(hook), "context_provider", None) if hook else None
        self.hook_context = provider(self.hook_config, self.context_dims, name="hook_context") if provider else None
        self.head = self.make_head()
        if backbone in ("wdl", "deepfm"):
            self.linear = LinearTerm(self.schema_config, include_domain=self.embed_domain, name="linear")
        if backbone == "dcn":
            self.cross = CrossNetwork(self.cross_layers, kernel_initializer=kernel_initializer or "glorot_uniform",
                                      name="cross")
        if backbone == "deepfm":
            self.fm = FactorizationMachine(name="fm")

    def make_head(self) -> keras.layers.Layer:
        """The output layer (a subclass may return a domain-aware block, e.g. MI-DPG's DWM head)."""
        return keras.layers.Dense(1, kernel_initializer=self.kernel_initializer or "glorot_uniform", name="head")

    def apply_head(self, h, ctx, training=None):
        """Runs the output layer on ``h`` (``ctx`` for heads that need it)."""
        return self.head(h)

    def compute_logit(self, inputs, ctx, training=None):
        e = ctx["all"]
        if self.hook_context is not None:
            ctx = {**ctx, **self.hook_context(ctx, training=training)}
        h = self.deep(e, ctx, training=training)
        if self.backbone == "dcn":
            return self.apply_head(ops.concatenate([self.cross(e), h], axis=1), ctx, training)
        logit = self.apply_head(h, ctx, training)
        if self.backbone in ("wdl", "deepfm"):
            logit = logit + self.linear(inputs, ctx)
        if self.backbone == "deepfm":
            logit = logit + self.fm(ctx["fields"])
        return logit

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "backbone": self.backbone, "hidden_units": self.hidden_units, "block": self.block,
            "block_config": self.block_config, "hook": self.hook, "hook_config": self.hook_config,
            "hook_positions": self.hook_positions, "hook_on_input": self.hook_on_input,
            "batch_norm": self.batch_norm, "dropout": self.dropout, "activation": self.activation,
            "cross_layers": self.cross_layers, "kernel_initializer": self.kernel_initializer,
        })
        return config
