"""Feature embedding → the conditioning views every multi-domain mechanism needs."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from mdr_tf.schema import Schema


def check_inputs(inputs: dict[str, Any], schema: Schema) -> None:
    """Rejects (``InvalidArgumentError``) a ``domain_id`` outside ``[0, D)`` and a NaN/inf dense value.

    Same checks and messages as the serving signatures (``mdr_tf.export``), so Keras and
    serving agree. They are TF ``Assert`` ops: they run in eager calls, ``predict`` and
    any graph that is not XLA-compiled; inside XLA-compiled steps (``jit_compile``
    training) TF drops ``Assert``, and there an out-of-range domain id is clipped to
    ``[0, D)`` (training data is checked when written: ``data_prep``).
    """
    import tensorflow as tf  # Assert ops: the package runs on the TensorFlow backend only

    if not tf.executing_eagerly() and tf.inside_function() and _in_xla_context():
        return
    d = tf.convert_to_tensor(inputs[schema.domain_key])
    d = tf.cast(d, tf.int64)
    tf.debugging.Assert(tf.reduce_all((d >= 0) & (d < schema.num_domains)),
                        [f"domain_id must be in [0, {schema.num_domains}); got", tf.reduce_min(d), tf.reduce_max(d)])
    for f in schema.dense:
        v = tf.convert_to_tensor(inputs[f.name])
        if v.dtype.is_floating:
            tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(v)),
                                [f"dense feature {f.name!r} must be finite (no NaN/inf)"])


def field_rows(inputs: dict[str, Any], schema: Schema) -> tuple[Any, Any]:
    """Each field's row within its own table and the domain id: ``(rows int32 [B, F+1], domain int32 [B])``.

    The one definition of the serving / Keras id rules (``FeatureEmbedding.call`` and
    ``mdr_tf.folding`` both use it): a categorical id outside ``[0, vocab)`` (checked in
    int64, so ``2**32 + 5`` is not read as 5) reads the field's out-of-vocabulary row 0;
    the domain id is clipped to ``[0, D)`` (out-of-range ids are rejected before, by
    ``check_inputs``) and is the last column. Add ``FeatureEmbedding.offsets`` for rows
    of the fused table.
    """
    domain = ops.clip(ops.cast(ops.reshape(inputs[schema.domain_key], [-1]), "int64"), 0, schema.num_domains - 1)
    ids = [ops.cast(ops.reshape(inputs[f.name], [-1]), "int64") for f in schema.categorical] + [domain]
    rows = ops.stack(ids, axis=1)  # [B, F+1]
    sizes = ops.convert_to_tensor([f.vocab_size for f in schema.categorical] + [schema.num_domains], dtype="int64")
    rows = ops.cast(ops.where((rows < 0) | (rows >= sizes), 0, rows), "int32")
    return rows, ops.cast(domain, "int32")


def _in_xla_context() -> bool:
    """Whether the graph being built is XLA-compiled (where ``Assert`` is dropped anyway)."""
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util

        return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())
    except (ImportError, AttributeError):
        return False


@keras.saving.register_keras_serializable(package="mdr_tf")
class FeatureEmbedding(keras.layers.Layer):
    """Embeds a schema's inputs and returns a context dict of named views.

    Returned keys (B = batch, F = categorical fields incl. the domain field when
    ``embed_domain``, d = ``embedding_dim``):

    - ``domain``: int32 [B] domain ids.
    - ``fields``: [B, F, d] stacked categorical embeddings (FM / attention / HierRec).
    - ``dense``: [B, n_dense] dense feature values (may have width 0).
    - ``all``: [B, F*d + n_dense] everything concatenated (the backbone input ``e``).
    - ``domain_emb``: [B, d] embedding of the domain id (always computed).
    - ``domain_side``: [B, ds] scenario-aware input ``e_s``: domain id embedding, the
      embeddings of features in group "domain" and dense domain features.
    - ``agnostic``: [B, na] the other (scenario-agnostic) features.
    - ``ids``: [B, di] embeddings of id features (PPNet's gate prior; falls back to
      ``domain_emb`` when the schema marks none).

    Args:
      schema: ``Schema.to_config()`` dict.
      embedding_dim: size of every categorical embedding.
      embed_domain: include the domain id as an ordinary embedded field in
        ``fields``/``all`` (HAMUR's and MLoRA's official scripts do).
      embeddings_initializer: initializer of the tables (HAMUR / Scenario-Wise-Rec use
        N(0, 1e-4); keras default is U(±0.05)).
      embeddings_regularizer: optional regularizer (e.g. torch-style coupled L2).
      assignment: optional embedding assignment policy for streaming, the keyword
        arguments of ``mdr_tf.layers.assignment.EmbeddingAssignment`` (e.g.
        ``{"policy": "autoassign"}``); None or ``{"policy": "full"}``: one row per id.
      embedding_precision: "fp" (float32 table, default) or a low-precision table
        ("lpt_dr", "lpt_sr", "alpt"; ``mdr_tf.layers.quantized_embedding``, ALPT, AAAI 2023).
      embedding_bits: bit width of a low-precision table (2-16).
      quantization: further ``QuantizedEmbedding`` arguments (step, grad_scale,
        delta_init, delta_lr, rounding, ...).
    """

    def __init__(
        self,
        schema: dict[str, Any],
        embedding_dim: int = 16,
        embed_domain: bool = True,
        embeddings_initializer: Any = "random_normal",
        embeddings_regularizer: Any = None,
        assignment: dict[str, Any] | None = None,
        embedding_precision: str = "fp",
        embedding_bits: int = 8,
        quantization: dict[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.schema_config = dict(schema)
        self.schema = Schema.from_config(schema)
        self.embedding_dim = int(embedding_dim)
        self.embed_domain = bool(embed_domain)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        # All categorical features and the domain id share one fused table: feature f
        # owns rows [offset_f, offset_f + vocab_f); one gather serves every field.
        sizes = [f.vocab_size for f in self.schema.categorical] + [self.schema.num_domains]
        self.offsets = [int(o) for o in np.cumsum([0] + sizes[:-1])]
        self.total_rows = int(sum(sizes))
        self.assignment_config = dict(assignment) if assignment else None
        self.assignment = None
        if assignment and assignment.get("policy", "autoassign") != "full":
            from mdr_tf.layers.assignment import EmbeddingAssignment

            self.assignment = EmbeddingAssignment(schema, embedding_dim=self.embedding_dim, name="assignment",
                                                  dtype=self.dtype_policy, **assignment)
        self.embedding_precision = str(embedding_precision)
        self.embedding_bits = int(embedding_bits)
        self.quantization = dict(quantization or {})
        self.quantized = None  # QuantizedEmbedding when embedding_precision != "fp"
        if self.embedding_precision != "fp":
            from mdr_tf.layers.quantized_embedding import QuantizedEmbedding

            if self.assignment is not None:
                raise ValueError("FeatureEmbedding: an embedding assignment policy is not supported with "
                                 f"embedding_precision={self.embedding_precision!r}")
            if self.embeddings_regularizer is not None:
                raise ValueError("FeatureEmbedding: an embeddings regularizer (embedding_l2) is not supported with "
                                 f"embedding_precision={self.embedding_precision!r}")
            self.quantized = QuantizedEmbedding(self.total_rows, self.embedding_dim, self.embedding_precision,
                                                self.embedding_bits, embeddings_initializer=embeddings_initializer,
                                                name="quantized_table", dtype=self.dtype_policy, **self.quantization)

    def build(self, input_shape=None):
        if self.quantized is not None:
            self.quantized.build(None)
        else:
            self.table = self.add_weight(name="table", shape=(self.total_rows, self.embedding_dim),
                                         initializer=self.embeddings_initializer,
                                         regularizer=self.embeddings_regularizer)
        if self.assignment is not None:
            self.assignment.build(None)
        self.built = True

    def gather_rows(self, rows):
        """Rows of the fused table (de-quantised for a low-precision table)."""
        if self.quantized is not None:
            return self.quantized.lookup(rows)
        return ops.take(self.table, rows, axis=0)

    def table_rows(self, name: str) -> tuple[int, int]:
        """Row range ``[start, end)`` of a feature (or ``"domain_id"``) in the fused table."""
        names = [f.name for f in self.schema.categorical] + [self.schema.domain_key]
        i = names.index(name)
        sizes = [f.vocab_size for f in self.schema.categorical] + [self.schema.num_domains]
        return self.offsets[i], self.offsets[i] + sizes[i]

    @property
    def num_fields(self) -> int:
        return len(self.schema.categorical) + int(self.embed_domain)

    @property
    def output_dims(self) -> dict[str, int]:
        """Static widths of the context views (for layers that size themselves from them)."""
        d = self.embedding_dim
        s = self.schema
        dom_cat = sum(1 for f in s.categorical if f.group == "domain")
        dom_dense = sum(1 for f in s.dense if f.group == "domain")
        ids = sum(1 for f in s.categorical if f.is_id)
        all_w = self.num_fields * d + len(s.dense)
        side = d * (1 + dom_cat) + dom_dense
        return {"all": all_w, "domain_side": side, "agnostic": all_w - side + (0 if self.embed_domain else d),
                "ids": d * ids if ids else d, "dense": len(s.dense), "fields": self.num_fields}

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        s = self.schema
        # Out-of-range ids: a feature id outside [0, vocab) reads the OOV row 0 (checked in
        # int64, so 2**32 + 5 is not read as 5); a domain id outside [0, D) or a NaN/inf dense
        # value is rejected (check_inputs), as by the serving signatures.
        check_inputs(inputs, s)
        rows, domain = field_rows(inputs, s)  # [B, F+1] (OOV ids → row 0), [B]
        local = rows
        if self.assignment is not None:  # streaming policies: id -> row remap (threshold, hash)
            rows = self.assignment.remap(rows)
        rows = rows + ops.convert_to_tensor(self.offsets, dtype="int32")
        gathered = self.gather_rows(rows)  # [B, F+1, d]
        if self.assignment is not None:  # autoassign: shared mixtures for ids not in the kept set
            gathered = self.assignment.transform(local, gathered, training=training)
        gathered = ops.cast(gathered, self.compute_dtype)
        domain_emb = gathered[:, -1, :]
        embs = {f.name: gathered[:, i, :] for i, f in enumerate(s.categorical)}
        dense_cols = [ops.reshape(ops.cast(inputs[f.name], self.compute_dtype), [-1, 1]) for f in s.dense]
        field_list = [embs[f.name] for f in s.categorical] + ([domain_emb] if self.embed_domain else [])
        fields = gathered if self.embed_domain else gathered[:, :-1, :]
        batch = ops.shape(domain)[0]
        dense = ops.concatenate(dense_cols, axis=1) if dense_cols else ops.zeros((batch, 0), self.compute_dtype)
        flat = ops.reshape(fields, [-1, len(field_list) * self.embedding_dim])
        all_ = ops.concatenate([flat, dense], axis=1) if dense_cols else flat
        side = [domain_emb] + [embs[f.name] for f in s.categorical if f.group == "domain"]
        side += [c for f, c in zip(s.dense, dense_cols) if f.group == "domain"]
        agn = [embs[f.name] for f in s.categorical if f.group != "domain"]
        agn += [c for f, c in zip(s.dense, dense_cols) if f.group != "domain"]
        id_embs = [embs[f.name] for f in s.categorical if f.is_id] or [domain_emb]
        return {
            "domain": domain,
            "fields": fields,
            "dense": dense,
            "all": all_,
            "domain_emb": domain_emb,
            "domain_side": ops.concatenate(side, axis=1) if len(side) > 1 else side[0],
            "agnostic": (ops.concatenate(agn, axis=1) if len(agn) > 1 else agn[0]) if agn
            else ops.zeros((batch, 0), self.compute_dtype),
            "ids": ops.concatenate(id_embs, axis=1) if len(id_embs) > 1 else id_embs[0],
        }

    def lookup(self, name: str, ids: Any) -> Any:
        """Embeddings of ids of categorical feature ``name`` (any shape → shape + [d]).

        Behaviour sequences share their feature's rows this way (click / unclick item ids
        read the ``item_id`` rows). Ids outside ``[0, vocab)`` read the OOV row 0.
        """
        if self.assignment is not None:
            raise ValueError("behaviour-sequence lookups do not support an embedding assignment policy "
                             f"({self.assignment_config}); use one row per id")
        start, end = self.table_rows(name)
        ids = ops.cast(ids, "int32")
        ids = ops.where((ids < 0) | (ids >= end - start), 0, ids) + start
        return ops.cast(self.gather_rows(ids), self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "schema": self.schema_config,
            "embedding_dim": self.embedding_dim,
            "embed_domain": self.embed_domain,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer)
            if self.embeddings_regularizer else None,
        })
        if self.embedding_precision != "fp":
            config.update(embedding_precision=self.embedding_precision, embedding_bits=self.embedding_bits,
                          quantization=self.quantization)
        if self.assignment_config:
            config["assignment"] = self.assignment_config
        return config
