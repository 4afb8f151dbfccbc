"""``MultiDomainModel``: the base every model shares (inputs, embedding, output, build)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from mdr_tf.layers.embedding import FeatureEmbedding
from mdr_tf.schema import Schema


@keras.saving.register_keras_serializable(package="mdr_tf")
class MultiDomainModel(keras.Model):
    """Base model: dict of raw feature tensors (incl. ``domain_id``) → probability [B, 1].

    Subclasses implement ``compute_logit(inputs, ctx, training)`` where ``ctx`` is the
    dict of conditioning views from ``FeatureEmbedding``. Works with ``compile``/``fit``/
    ``evaluate``/``predict``, ``.keras`` save/load and ``mdr_tf.export``.

    Args:
      schema: ``Schema.to_config()`` dict (features, number of domains).
      embedding_dim: embedding size of every categorical feature (default 16).
      embed_domain: feed the domain id as an embedded field of the backbone input.
      embeddings_initializer: embedding initializer (default N(0, 1e-4), HAMUR / SWR).
      embedding_l2: coupled L2 weight on the embedding tables (torch ``weight_decay``
        style, ``0.5 * wd * ||E||²`` per step on the whole table); 0 disables.
      embedding_assignment: optional streaming embedding-assignment policy
        (``FeatureEmbedding``'s ``assignment``; docs/models/autoassign.md); None = one row per id.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        embedding_dim: int = 16,
        embed_domain: bool = True,
        embeddings_initializer: Any = None,
        embedding_l2: float = 0.0,
        embedding_assignment: dict[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.schema_config = dict(schema)
        self.schema = Schema.from_config(schema)
        self.embedding_dim = int(embedding_dim)
        self.embed_domain = bool(embed_domain)
        self.embeddings_initializer = embeddings_initializer or {
            "class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 1e-4}}
        self.embedding_l2 = float(embedding_l2)
        self.embedding_assignment = dict(embedding_assignment) if embedding_assignment else None
        self.embedding = FeatureEmbedding(
            schema, embedding_dim=self.embedding_dim, embed_domain=self.embed_domain,
            embeddings_initializer=keras.initializers.get(self.embeddings_initializer),
            embeddings_regularizer=keras.regularizers.L2(self.embedding_l2 / 2) if self.embedding_l2 else None,
            assignment=self.embedding_assignment, name="embedding")
        self.context_dims = self.embedding.output_dims

    @property
    def num_domains(self) -> int:
        return self.schema.num_domains

    def dummy_inputs(self, batch: int = 2) -> dict[str, np.ndarray]:
        """Valid zero inputs (domain ids 0..D-1 cycled), used to build the model."""
        x = {f.name: np.zeros([batch], np.int64 if f.kind == "categorical" else np.float32)
             for f in self.schema.features}
        x[self.schema.domain_key] = np.arange(batch, dtype=np.int64) % self.num_domains
        return x

    def build(self, input_shape=None):
        # The schema fixes every input; build by tracing one call on dummy inputs so
        # that all sublayers (incl. ones sized from context views) create weights.
        if self.built:
            return
        self.embedding.build(None)
        self.call(self.dummy_inputs(max(2, self.num_domains)), training=False)
        self.built = True

    def compute_logit(self, inputs: dict[str, Any], ctx: dict[str, Any], training: bool | None = None):
        raise NotImplementedError

    def call(self, inputs: dict[str, Any], training: bool | None = None):
        ctx = self.embedding(inputs)
        logit = self.compute_logit(inputs, ctx, training=training)
        return ops.sigmoid(ops.cast(ops.reshape(logit, [-1, 1]), "float32"))

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "schema": self.schema_config,
            "embedding_dim": self.embedding_dim,
            "embed_domain": self.embed_domain,
            "embeddings_initializer": self.embeddings_initializer,
            "embedding_l2": self.embedding_l2,
            **({"embedding_assignment": self.embedding_assignment} if self.embedding_assignment else {}),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)
