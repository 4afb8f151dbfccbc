"""Domain-agnostic interaction parts of the backbones (wide, cross, FM)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mdr_tf.schema import Schema


def _oov_to_zero(ids: Any, vocab: int) -> Any:
    """Flat int32 row ids; an id outside ``[0, vocab)`` reads the OOV row 0, as in
    ``FeatureEmbedding`` (checked in int64, so 2**32 + 5 is not read as 5)."""
    ids = ops.cast(ops.reshape(ids, [-1]), "int64")
    return ops.cast(ops.where((ids < 0) | (ids >= vocab), 0, ids), "int32")


@keras.saving.register_keras_serializable(package="mdr_tf")
class LinearTerm(keras.layers.Layer):
    """Wide / first-order part: ``Σ_f w_f[x_f] + v·dense + b`` (Wide&Deep, DeepFM).

    An id outside ``[0, vocab)`` reads ``w_f[0]`` (the OOV row, as the embedding does).

    Args:
      schema: ``Schema.to_config()`` dict.
      include_domain: add a per-domain weight too (the domain id as an ordinary field).
    """

    def __init__(self, schema: dict[str, Any], include_domain: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.schema_config = dict(schema)
        self.schema = Schema.from_config(schema)
        self.include_domain = bool(include_domain)

    def build(self, input_shape=None):
        self.weights_per_feature = {
            f.name: self.add_weight(name=f"w_{f.name}", shape=(f.vocab_size,), initializer="zeros")
            for f in self.schema.categorical}
        if self.include_domain:
            self.domain_weight = self.add_weight(name="w_domain", shape=(self.schema.num_domains,),
                                                 initializer="zeros")
        n_dense = len(self.schema.dense)
        self.dense_weight = self.add_weight(name="w_dense", shape=(max(n_dense, 1), 1), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(1,), initializer="zeros")
        self.built = True

    def call(self, inputs: dict[str, Any], ctx: dict[str, Any]):
        terms = [ops.take(w, _oov_to_zero(inputs[name], w.shape[0])) for name, w in self.weights_per_feature.items()]
        if self.include_domain:
            terms.append(ops.take(self.domain_weight, ctx["domain"]))
        out = ops.sum(ops.stack(terms, axis=1), axis=1, keepdims=True) + self.bias
        if self.schema.dense:
            out = out + ops.matmul(ctx["dense"], self.dense_weight)
        return out

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"schema": self.schema_config, "include_domain": self.include_domain})
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class CrossNetwork(keras.layers.Layer):
    """DCN cross network (vector form): ``x_{l+1} = x_0 (x_l · w_l) + b_l + x_l``.

    Args:
      num_layers: number of cross layers (HAMUR MovieLens: 2; DeepCTR default 2).
      kernel_initializer: initializer of the cross vectors ``w_l`` (DeepCTR: glorot-normal).
    """

    def __init__(self, num_layers: int = 2, kernel_initializer: Any = "glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_layers = int(num_layers)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        n = int(input_shape[-1])
        self.ws = [self.add_weight(name=f"w_{i}", shape=(n, 1), initializer=self.kernel_initializer)
                   for i in range(self.num_layers)]
        self.bs = [self.add_weight(name=f"b_{i}", shape=(n,), initializer="zeros") for i in range(self.num_layers)]
        self.built = True

    def call(self, x0):
        x = x0
        for w, b in zip(self.ws, self.bs):
            x = x0 * ops.matmul(x, w) + b + x
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_layers": self.num_layers,
                       "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)})
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class FactorizationMachine(keras.layers.Layer):
    """Second-order FM term on field embeddings [B, F, d]: ``½ Σ_k ((Σ_f v_fk)² − Σ_f v_fk²)``."""

    def call(self, fields):
        s = ops.sum(fields, axis=1)
        return 0.5 * ops.sum(s * s - ops.sum(fields * fields, axis=1), axis=1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)
