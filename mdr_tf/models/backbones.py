"""Backbones (MLP, Wide&Deep, DCN, DeepFM) whose deep part is a ``DomainMLP``.

A domain mechanism is chosen with ``block`` (replaces every dense layer of the deep
part), ``hook`` (acts between layers) and/or ``input_hook`` (rewrites the backbone's
input once, before every part): "MLoRA on DCN" is
``BackboneModel(schema, backbone="dcn", block="mlora")``, PEPNet is
``BackboneModel(schema, input_hook="epnet", hook="ppnet")`` on any backbone. As in MLoRA's DeepCTR
variants, the wide / cross / FM parts stay domain-agnostic; the domain id enters them
as an ordinary field.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.blocks import hook_class, input_hook_class
from mdr_tf.layers.interaction import CrossNetwork, FactorizationMachine, LinearTerm
from mdr_tf.layers.mlp import DomainMLP
from mdr_tf.models.base import MultiDomainModel

BACKBONES = ("mlp", "wdl", "dcn", "deepfm")


def _initializer_config(init: Any) -> Any:
    """A JSON-able initializer: None and names stay as given, objects are serialised."""
    return init if init is None or isinstance(init, (str, dict)) else keras.initializers.serialize(init)


@keras.saving.register_keras_serializable(package="mdr_tf")
class BackboneModel(MultiDomainModel):
    """A backbone with pluggable domain-aware dense blocks and hooks.

    Args:
      schema: ``Schema.to_config()`` dict.
      backbone: "mlp" (DNN), "wdl" (Wide&Deep), "dcn" (Deep & Cross), "deepfm".
      hidden_units: deep-part widths (MI-DPG setup: 128-64-32).
      block, block_config, hook, hook_config, hook_positions, hook_on_input: see
        ``DomainMLP``.
      input_hook: name of a registered ``InputHook`` (``register_input_hook``, e.g.
        "epnet") run on the input views before the deep part, cross network and FM
        read them (the FM reads the hooked ``ctx["all"]`` as its fields); None: none.
      input_hook_config: its arguments.
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
        input_hook: str | None = None,
        input_hook_config: dict[str, Any] | None = None,
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
        self.input_hook = input_hook
        self.input_hook_config = dict(input_hook_config or {})
        self.input_hook_layer = None
        dims = dict(self.context_dims)
        if input_hook:
            cls = input_hook_class(input_hook)
            if getattr(cls, "rejects_interest", None):
                self.reject_interest(f"input hook {input_hook!r}: {cls.rejects_interest}")
            self.input_hook_layer = cls(
                schema=self.schema_config, context_dims=self.context_dims, num_fields=self.embedding.num_fields,
                num_dense=len(self.schema.dense), embedding_dim=self.embedding_dim,
                embeddings_initializer=self.embeddings_initializer, embedding_l2=self.embedding_l2,
                name="input_hook", dtype=self.dtype_policy, **self.input_hook_config)
            dims.update(self.input_hook_layer.output_dims)
        deep_block_config = dict(self.block_config)
        if kernel_initializer is not None:
            deep_block_config.setdefault("kernel_initializer", kernel_initializer)
        self.deep = DomainMLP(
            self.hidden_units, num_domains=self.num_domains, context_dims=dims, block=block,
            block_config=deep_block_config, hook=hook, hook_config=self.hook_config,
            hook_positions=self.hook_positions, hook_on_input=self.hook_on_input, activation=activation,
            batch_norm=self.batch_norm, dropout=self.dropout, name="deep", dtype=self.dtype_policy)
        # A hook class may provide a layer run once per batch before the deep part whose
        # output dict is merged into ctx (HAMUR: the instance core shared by all adapters).
        provider = getattr(hook_class(hook), "context_provider", None) if hook else None
        self.hook_context = (provider(self.hook_config, dims, name="hook_context", dtype=self.dtype_policy)
                             if provider else None)
        self.head = self.make_head()
        if backbone in ("wdl", "deepfm"):
            self.linear = LinearTerm(self.schema_config, include_domain=self.embed_domain, name="linear",
                                     dtype=self.dtype_policy)
        if backbone == "dcn":
            self.cross = CrossNetwork(self.cross_layers, kernel_initializer=kernel_initializer or "glorot_uniform",
                                      name="cross", dtype=self.dtype_policy)
        if backbone == "deepfm":
            self.fm = FactorizationMachine(name="fm", dtype=self.dtype_policy)

    def make_head(self) -> keras.layers.Layer:
        """The output layer (a subclass may return a domain-aware block, e.g. MI-DPG's DWM head)."""
        return keras.layers.Dense(1, kernel_initializer=self.kernel_initializer or "glorot_uniform", name="head",
                                  dtype=self.dtype_policy)

    def apply_head(self, h, ctx, training=None):
        """Runs the output layer on ``h`` (``ctx`` for heads that need it)."""
        return self.head(h)

    def compute_logit(self, inputs, ctx, training=None):
        if self.input_hook_layer is not None:
            ctx = {**ctx, **self.input_hook_layer(inputs, ctx, training=training)}
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
            fields = ctx["fields"]
            if self.input_hook_layer is not None:  # the FM reads the hooked embedding
                f, d = fields.shape[-2], fields.shape[-1]
                fields = ops.reshape(e[:, : f * d], (-1, f, d))
            logit = logit + self.fm(fields)
        return logit

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "backbone": self.backbone, "hidden_units": self.hidden_units, "block": self.block,
            "block_config": self.block_config, "hook": self.hook, "hook_config": self.hook_config,
            "hook_positions": self.hook_positions, "hook_on_input": self.hook_on_input,
            "batch_norm": self.batch_norm, "dropout": self.dropout, "activation": self.activation,
            "cross_layers": self.cross_layers, "kernel_initializer": _initializer_config(self.kernel_initializer),
            "input_hook": self.input_hook, "input_hook_config": self.input_hook_config,
        })
        return config
