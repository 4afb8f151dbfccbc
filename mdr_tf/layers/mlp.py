"""``DomainMLP``: the MLP backbone built from dense blocks and hooks."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import keras

from mdr_tf.layers.blocks import block_class, hook_class


@keras.saving.register_keras_serializable(package="mdr_tf")
class DomainMLP(keras.layers.Layer):
    """A stack ``[block → (BN) → act → (dropout) → (hook)] × L`` with pluggable blocks/hooks.

    Args:
      units: hidden widths, e.g. ``[128, 64, 32]`` (MI-DPG's setup).
      num_domains: number of domains D.
      context_dims: widths of the ``ctx`` views (``FeatureEmbedding.output_dims``).
      block: name of the dense block ("plain", "mlora", "dwm", "star", "apg", ...).
      block_config: extra constructor arguments of the block.
      hook: name of a hook applied after chosen hidden layers (None: no hook).
      hook_config: extra constructor arguments of the hook.
      hook_positions: hidden-layer indices (negative counts from the end) after which
        the hook is applied; None means every hidden layer.
      hook_on_input: also apply a hook to the MLP input (AdaSparse prunes it).
      activation: hidden activation.
      batch_norm: BatchNormalization after each block (before the activation).
      bn_momentum: BN momentum (torch's 0.1 is Keras 0.9).
      bn_epsilon: BN epsilon.
      dropout: dropout rate after each activation.
    """

    def __init__(
        self,
        units: Sequence[int],
        num_domains: int = 1,
        context_dims: dict[str, int] | None = None,
        block: str = "plain",
        block_config: dict[str, Any] | None = None,
        hook: str | None = None,
        hook_config: dict[str, Any] | None = None,
        hook_positions: Sequence[int] | None = None,
        hook_on_input: bool = False,
        activation: str = "relu",
        batch_norm: bool = False,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        self.num_domains = int(num_domains)
        self.context_dims = dict(context_dims or {})
        self.block = block
        self.block_config = dict(block_config or {})
        self.hook = hook
        self.hook_config = dict(hook_config or {})
        n = len(self.units)
        positions = range(n) if hook_positions is None else hook_positions
        self.hook_positions = sorted({p % n for p in positions}) if n else []
        self.hook_on_input = bool(hook_on_input)
        self.activation = activation
        self.batch_norm = bool(batch_norm)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.dropout = float(dropout)
        # Every sublayer shares this layer's dtype policy (so "mixed_float16" on the MLP
        # reaches its blocks and hooks even when the global policy is float32).
        dtype = self.dtype_policy
        block_cls = block_class(block)
        self.blocks = [block_cls(units=u, num_domains=self.num_domains, context_dims=self.context_dims,
                                 name=f"{block}_{i}", dtype=dtype, **self.block_config)
                       for i, u in enumerate(self.units)]
        self.norms = [keras.layers.BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                                      name=f"bn_{i}", dtype=dtype)
                      for i in range(n)] if self.batch_norm else []
        self.act = keras.layers.Activation(activation, name="act", dtype=dtype)
        self.drop = keras.layers.Dropout(self.dropout, name="dropout", dtype=dtype) if self.dropout > 0 else None
        if hook:
            hook_cls = hook_class(hook)
            if self.hook_on_input:
                self.input_hook = hook_cls(num_domains=self.num_domains, context_dims=self.context_dims,
                                           name=f"{hook}_input", dtype=dtype, **self.hook_config)
            self.hook_layers = [hook_cls(num_domains=self.num_domains, context_dims=self.context_dims,
                                         name=f"{hook}_{p}", dtype=dtype, **self.hook_config)
                                for p in self.hook_positions]
        else:
            self.hook_layers = []

    def build(self, input_shape):
        width = int(input_shape[-1])
        if self.hook and self.hook_on_input:
            self.input_hook.build((None, width))
        it = iter(self.hook_layers)
        for i, blk in enumerate(self.blocks):
            blk.build((None, width))
            width = blk.units
            if self.batch_norm:
                self.norms[i].build((None, width))
            if self.hook and i in self.hook_positions:
                next(it).build((None, width))
        self.built = True

    @property
    def output_dim(self) -> int:
        return self.units[-1] if self.units else 0

    @contextlib.contextmanager
    def record_block_inputs(self) -> Iterator[list[dict[str, Any]]]:
        """Records what each block receives while the block of code runs (eager inspection).

        Every call of this MLP inside the ``with`` appends ``{"ctx": ctx, "block_inputs":
        [input of block 0, ..., input of block L-1], "output": the MLP's output}`` to the
        yielded list, so a model's own forward (``model(x, training=False)``) exposes
        block i's input (e.g. MI-DPG's weighting matrices, docs/models/midpg.md). Outside
        the ``with`` nothing is recorded; the computation is the same either way.
        """
        log: list[dict[str, Any]] = []
        object.__setattr__(self, "_block_input_log", log)  # plain attribute: not tracked by Keras
        try:
            yield log
        finally:
            object.__setattr__(self, "_block_input_log", None)

    def call(self, x, ctx: dict | None = None, training: bool | None = None):
        log = getattr(self, "_block_input_log", None)
        record = None if log is None else {"ctx": ctx, "block_inputs": []}
        if self.hook and self.hook_on_input:
            x = self.input_hook(x, ctx, training=training)
        it = iter(self.hook_layers)
        for i, blk in enumerate(self.blocks):
            if record is not None:
                record["block_inputs"].append(x)
            x = blk(x, ctx, training=training)
            if self.batch_norm:
                x = self.norms[i](x, training=training)
            x = self.act(x)
            if self.drop is not None:
                x = self.drop(x, training=training)
            if self.hook and i in self.hook_positions:
                x = next(it)(x, ctx, training=training)
        if record is not None:
            record["output"] = x
            log.append(record)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "units": self.units, "num_domains": self.num_domains, "context_dims": self.context_dims,
            "block": self.block, "block_config": self.block_config, "hook": self.hook,
            "hook_config": self.hook_config, "hook_positions": self.hook_positions,
            "hook_on_input": self.hook_on_input, "activation": self.activation, "batch_norm": self.batch_norm,
            "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon, "dropout": self.dropout,
        })
        return config
