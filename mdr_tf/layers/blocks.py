"""The one seam every paper plugs into: domain-aware dense blocks and hooks.

A backbone's dense layers are ``DenseBlock`` instances chosen by name. The base
block computes ``x W + b``; a mechanism subclass changes how (MLoRA: ``W + A_d B_d``;
STAR: ``W ⊙ W_d``; MI-DPG: ``W ⊙ M(e_s, x)``; APG: ``U S(z) V``). Hooks act on the
hidden activations between layers (PPNet / AdaSparse gates, HAMUR adapters).

Every block and hook receives ``ctx``, the dict of conditioning views produced by
``FeatureEmbedding`` (domain ids, domain-side embedding, id embeddings, ...), and is
told the static widths of those views through ``context_dims`` so that it can build
its own weights in ``build()``.

So "MLoRA on DCN" is ``backbone="dcn", block="mlora"``, not a new class.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras import ops

BLOCKS: dict[str, type] = {}
HOOKS: dict[str, type] = {}
INPUT_HOOKS: dict[str, type] = {}


def register_block(name: str) -> Callable[[type], type]:
    """Class decorator: makes a ``DenseBlock`` subclass selectable by ``name`` and serialisable."""

    def deco(cls: type) -> type:
        cls = keras.saving.register_keras_serializable(package="mdr_tf")(cls)
        BLOCKS[name] = cls
        return cls

    return deco


def register_hook(name: str) -> Callable[[type], type]:
    """Class decorator: makes a ``DomainHook`` subclass selectable by ``name`` and serialisable."""

    def deco(cls: type) -> type:
        cls = keras.saving.register_keras_serializable(package="mdr_tf")(cls)
        HOOKS[name] = cls
        return cls

    return deco


def register_input_hook(name: str) -> Callable[[type], type]:
    """Class decorator: makes an ``InputHook`` subclass selectable by ``name`` and serialisable."""

    def deco(cls: type) -> type:
        cls = keras.saving.register_keras_serializable(package="mdr_tf")(cls)
        INPUT_HOOKS[name] = cls
        return cls

    return deco


def _ensure_registered() -> None:
    # Mechanism modules register themselves on import; ``import mdr_tf`` imports them all
    # (already done by the time this module runs; idempotent).
    import mdr_tf

    mdr_tf.register_all()


def block_class(name: str) -> type:
    _ensure_registered()
    if name not in BLOCKS:
        raise ValueError(f"unknown dense block {name!r}; available: {sorted(BLOCKS)}")
    return BLOCKS[name]


def hook_class(name: str) -> type:
    _ensure_registered()
    if name not in HOOKS:
        raise ValueError(f"unknown hook {name!r}; available: {sorted(HOOKS)}")
    return HOOKS[name]


def input_hook_class(name: str) -> type:
    _ensure_registered()
    if name not in INPUT_HOOKS:
        raise ValueError(f"unknown input hook {name!r}; available: {sorted(INPUT_HOOKS)}")
    return INPUT_HOOKS[name]


class DenseBlock(keras.layers.Layer):
    """Base domain-aware dense layer: ``y = x W + b`` (pre-activation).

    Subclasses keep ``self.kernel`` / ``self.bias`` as the shared backbone weights and
    override ``call`` (and ``build`` to add their own weights).

    Args:
      units: output width.
      num_domains: number of domains D.
      context_dims: widths of the ``ctx`` views (``FeatureEmbedding.output_dims``).
      use_bias: add the shared bias.
      kernel_initializer: initializer of the shared kernel.
      kernel_regularizer: regularizer of the shared kernel.
    """

    def __init__(
        self,
        units: int,
        num_domains: int = 1,
        context_dims: dict[str, int] | None = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        kernel_regularizer: Any = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = int(units)
        self.num_domains = int(num_domains)
        self.context_dims = dict(context_dims or {})
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        self.input_dim = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(self.input_dim, self.units),
                                      initializer=self.kernel_initializer, regularizer=self.kernel_regularizer)
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros") if self.use_bias else None
        self.built = True

    def shared_output(self, x):
        y = ops.matmul(x, self.kernel)
        return y + self.bias if self.bias is not None else y

    def call(self, x, ctx: dict | None = None, training: bool | None = None):
        return self.shared_output(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "units": self.units,
            "num_domains": self.num_domains,
            "context_dims": self.context_dims,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)
            if self.kernel_regularizer else None,
        })
        return config


@register_block("plain")
class PlainDense(DenseBlock):
    """The plain shared dense layer ``x W + b`` (DNN baseline)."""


class DomainHook(keras.layers.Layer):
    """Base of a transform applied to hidden activations between backbone layers.

    Args:
      num_domains: number of domains D.
      context_dims: widths of the ``ctx`` views.
    """

    def __init__(self, num_domains: int = 1, context_dims: dict[str, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = int(num_domains)
        self.context_dims = dict(context_dims or {})

    def call(self, h, ctx: dict | None = None, training: bool | None = None):
        return h

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_domains": self.num_domains, "context_dims": self.context_dims})
        return config


class InputHook(keras.layers.Layer):
    """Base of a transform of a backbone's *input* views, run once before every part.

    ``call(inputs, ctx)`` returns the ``ctx`` views it replaces or adds (e.g. EPNet:
    ``{"all": e'}`` plus the views its own gate table produces); the backbone merges them
    into ``ctx`` before its deep part, cross network or FM read it. ``output_dims`` names
    the widths of the views it adds, so that the layer hooks can build against them.

    Args:
      schema: ``Schema.to_config()`` dict of the model.
      context_dims: widths of the model's ``ctx`` views.
      num_fields: F, the categorical fields of ``ctx["all"]`` (each ``embedding_dim`` wide).
      num_dense: dense scalars appended to ``ctx["all"]``.
      embedding_dim: d.
      embeddings_initializer, embedding_l2: the model's embedding settings (for a hook
        with its own embedding table).
    """

    def __init__(self, schema: dict[str, Any] | None = None, context_dims: dict[str, int] | None = None,
                 num_fields: int = 0, num_dense: int = 0, embedding_dim: int = 16,
                 embeddings_initializer: Any = "uniform", embedding_l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.schema = dict(schema or {})
        self.context_dims = dict(context_dims or {})
        self.num_fields = int(num_fields)
        self.num_dense = int(num_dense)
        self.embedding_dim = int(embedding_dim)
        self.embeddings_initializer = embeddings_initializer
        self.embedding_l2 = float(embedding_l2)

    @property
    def output_dims(self) -> dict[str, int]:
        """Widths of the ``ctx`` views this hook adds (replaced views keep their width)."""
        return {}

    def call(self, inputs, ctx: dict, training: bool | None = None) -> dict:
        return {}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"schema": self.schema, "context_dims": self.context_dims, "num_fields": self.num_fields,
                       "num_dense": self.num_dense, "embedding_dim": self.embedding_dim,
                       "embeddings_initializer": self.embeddings_initializer, "embedding_l2": self.embedding_l2})
        return config
