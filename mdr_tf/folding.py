"""Serving-time folding of the first dense layer into the embedding table (issue 18).

The first layer of the DNN and of STAR is a dense layer on the concatenated input
``e = [E[r_1], ..., E[r_F], x_dense]`` (``FeatureEmbedding``'s ``all`` view; ``r_f`` the
field's row of the fused table ``E``). Its pre-activation splits by field:

    e W + c = Σ_f (E W_f)[r_f] + x_dense W_dense + c,

with ``W_f`` the rows of ``W`` that multiply field f. The products ``P = E W_f`` (one
``u``-wide row per table row) are computed once, at export, so the first and largest
matmul of every call (113 × 128 of the DNN's 24.7k multiply-adds per sample on ML-100k)
becomes a gather of F rows and a sum. STAR's partitioned normalisation is an affine map
per domain, ``z = A_d ⊙ e + S_d`` (``A_d = γ γ_d / sqrt(σ²_d + ε)``, ``S_d = β + β_d − A_d μ_d``),
and its first star layer uses ``K_d = W ⊙ W_d``, ``c_d = b + b_d``; so

    z K_d + c_d = Σ_f (E (A_d,f ⊙ K_d,f))[r_f] + x_dense (A_d,dense ⊙ K_d,dense) + (S_d K_d + c_d),

one folded table per domain (``[D · R, u]``, indexed by ``d · R + r``). The rest of the
model runs its own layers unchanged. The result equals the model's up to float rounding
(the folded products are computed in float64 and rounded once; the parity tests and the
export-time check compare to 1e-5).

The folded tables are a snapshot of the weights at export: a model whose variables are
changed after loading (fine-tuning a served SavedModel) must be re-exported. Only float32
models with a plain embedding table (no assignment policy, no low-precision table, no
sequence interest) fold; ``fold_first_layer`` returns None for everything else.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mdr_tf.schema import Schema


def fused_rows(embedding, features: dict[str, Any]) -> tuple[tf.Tensor, tf.Tensor]:
    """(rows int32 [B, F+1], domain int32 [B]): the fused-table rows ``FeatureEmbedding.call``
    reads (ids outside ``[0, vocab)`` → the field's row 0, domain id clipped to ``[0, D)``;
    the last column is the domain id's row)."""
    s: Schema = embedding.schema
    domain = tf.clip_by_value(tf.cast(tf.reshape(features[s.domain_key], [-1]), tf.int64), 0, s.num_domains - 1)
    ids = tf.stack([tf.cast(tf.reshape(features[f.name], [-1]), tf.int64) for f in s.categorical] + [domain], axis=1)
    sizes = tf.constant([f.vocab_size for f in s.categorical] + [s.num_domains], tf.int64)
    rows = tf.cast(tf.where((ids < 0) | (ids >= sizes), tf.zeros_like(ids), ids), tf.int32)
    return rows + tf.constant(embedding.offsets, tf.int32), tf.cast(domain, tf.int32)


def _field_blocks(embedding) -> list[tuple[int, int, int]]:
    """(table row start, rows, column start in ``all``) of every field of the ``all`` view."""
    s = embedding.schema
    sizes = [f.vocab_size for f in s.categorical] + [s.num_domains]
    n = embedding.num_fields  # the domain field last when embed_domain
    return [(embedding.offsets[i], sizes[i], i * embedding.embedding_dim) for i in range(n)]


def _fold(table: np.ndarray, blocks, kernel: np.ndarray) -> np.ndarray:
    """``P[r] = E[r] W_f(r)`` for every row of the fields in ``blocks`` (rows outside stay 0)."""
    d = table.shape[1]
    out = np.zeros((table.shape[0], kernel.shape[1]), np.float64)
    for start, rows, col in blocks:
        out[start:start + rows] = table[start:start + rows].astype(np.float64) @ kernel[col:col + d].astype(np.float64)
    return out.astype(np.float32)


class FoldedForward(tf.Module):
    """``features → probability [B]`` with the first dense layer folded into the table.

    Built by ``fold_first_layer``; call it inside a ``tf.function`` (it is what the XLA
    serving signatures of ``mdr_tf.export`` run). Its variables (the folded tables) are
    tracked by this module.
    """

    def __init__(self, model: keras.Model, kind: str, folded: np.ndarray, dense_kernel: np.ndarray,
                 const: np.ndarray):
        super().__init__(name="folded_forward")
        self.model = model
        self.kind = kind
        self.folded = tf.Variable(folded, trainable=False, name="folded_table")
        self.dense_kernel = tf.Variable(dense_kernel, trainable=False, name="folded_dense_kernel")
        self.const = tf.Variable(const, trainable=False, name="folded_const")
        self.num_rows = int(model.embedding.total_rows)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.folded.shape)) * 4

    def __call__(self, features: dict[str, Any]) -> tf.Tensor:
        emb = self.model.embedding
        s = emb.schema
        full_rows, domain = fused_rows(emb, features)
        rows = full_rows[:, :emb.num_fields]
        dense = [tf.reshape(tf.cast(features[f.name], tf.float32), [-1, 1]) for f in s.dense]
        if self.kind == "dnn":
            pre = tf.reduce_sum(tf.gather(self.folded, rows), axis=1) + self.const
            if dense:
                pre += tf.matmul(tf.concat(dense, axis=1), self.dense_kernel)
            return self._rest_dnn(pre, domain)
        # STAR: per-domain folded tables, rows offset by d · R
        pre = tf.reduce_sum(tf.gather(self.folded, rows + domain[:, None] * self.num_rows), axis=1)
        pre += tf.gather(self.const, domain)
        if dense:
            pre += tf.einsum("bn,bnu->bu", tf.concat(dense, axis=1), tf.gather(self.dense_kernel, domain))
        return self._rest_star(pre, domain, full_rows, dense)

    def _rest_dnn(self, pre, domain):
        model = self.model
        mlp = model.deep
        ctx = {"domain": domain}
        x = pre
        for i, blk in enumerate(mlp.blocks):
            if i > 0:
                x = blk(x, ctx, training=False)
            if mlp.batch_norm:
                x = mlp.norms[i](x, training=False)
            x = mlp.act(x)
        return tf.sigmoid(tf.reshape(model.apply_head(x, ctx, training=False), [-1]))

    def _rest_star(self, pre, domain, full_rows, dense):
        model, emb = self.model, self.model.embedding
        s = emb.schema
        ctx = {"domain": domain}
        x = model.fcn.act(pre)
        for blk in model.fcn.blocks[1:]:
            x = model.fcn.act(blk(x, ctx, training=False))
        s_m = model.main_out(x, ctx)
        # domain-side view: domain id embedding, domain-group categorical embeddings, domain-group dense
        side_rows = [len(s.categorical)] + [i for i, f in enumerate(s.categorical) if f.group == "domain"]
        side = [tf.gather(emb.table, full_rows[:, i]) for i in side_rows]
        side += [c for f, c in zip(s.dense, dense) if f.group == "domain"]
        side = tf.concat(side, axis=1) if len(side) > 1 else side[0]
        s_a = model.aux_out(model.aux(side, training=False))
        return tf.sigmoid(tf.reshape(s_m + s_a, [-1]))


def _random_inputs(schema: Schema, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {f.name: (rng.integers(0, f.vocab_size, batch) if f.kind == "categorical"
                  else rng.random(batch).astype(np.float32)) for f in schema.features}
    x[schema.domain_key] = np.arange(batch) % schema.num_domains
    return x


def fold_first_layer(model: keras.Model, max_bytes: int = 64 << 20, check_atol: float = 1e-5
                     ) -> FoldedForward | None:
    """A ``FoldedForward`` of ``model`` (a DNN, ``BackboneModel(backbone="mlp")`` with plain
    blocks, or ``STAR``), or None when the model does not fold or the folded tables would
    exceed ``max_bytes``. The folded forward is checked against ``model`` on random valid
    inputs (max |Δp| <= ``check_atol``, else ``AssertionError``)."""
    from mdr_tf.models.backbones import BackboneModel
    from mdr_tf.models.star import STAR

    emb = getattr(model, "embedding", None)
    if emb is None or emb.quantized is not None or emb.assignment is not None or \
            getattr(model, "interest_layer", None) is not None or model.compute_dtype != "float32":
        return None
    if type(model) not in (BackboneModel, STAR):
        return None
    if not model.built:
        model.build()
    table = np.asarray(emb.table)
    blocks = _field_blocks(emb)
    width = emb.num_fields * emb.embedding_dim
    if type(model) is BackboneModel:
        mlp = model.deep
        if model.backbone != "mlp" or mlp.block != "plain" or mlp.hook or model.hook_context is not None \
                or not mlp.blocks:
            return None
        first = mlp.blocks[0]
        k = np.asarray(first.kernel)
        if table.shape[0] * k.shape[1] * 4 > max_bytes:
            return None
        const = np.asarray(first.bias) if first.bias is not None else np.zeros(k.shape[1], np.float32)
        fwd = FoldedForward(model, "dnn", _fold(table, blocks, k), k[width:], const)
    elif type(model) is STAR:
        if model.pn is None or model.fcn.hook or model.fcn.batch_norm or not model.fcn.blocks:
            return None
        first = model.fcn.blocks[0]
        d = model.num_domains
        if d * table.shape[0] * first.units * 4 > max_bytes:
            return None
        pn = model.pn

        def f64(v):
            return np.asarray(v).astype(np.float64)

        a = f64(pn.gamma)[None] * f64(pn.gamma_d) / np.sqrt(f64(pn.moving_variance) + pn.epsilon)  # [D, n]
        shift = f64(pn.beta)[None] + f64(pn.beta_d) - a * f64(pn.moving_mean)  # [D, n]
        kd = f64(first.kernel)[None] * f64(first.kernel_d)  # [D, n, u]
        cd = f64(first.bias_d) + (f64(first.bias)[None] if first.bias is not None else 0.0)  # [D, u]
        m = a[:, :, None] * kd  # [D, n, u]
        folded = np.concatenate([_fold(table, blocks, m[i]) for i in range(d)], axis=0)
        const = np.einsum("dn,dnu->du", shift, kd) + cd
        fwd = FoldedForward(model, "star", folded, m[:, width:].astype(np.float32), const.astype(np.float32))
    else:
        return None
    x = _random_inputs(model.schema, 64)
    got = tf.function(fwd)({k: tf.constant(v) for k, v in x.items()}).numpy()
    want = np.asarray(model(x, training=False)).reshape(-1)
    err = float(np.max(np.abs(got - want)))
    if not err <= check_atol:
        raise AssertionError(f"fold_first_layer: the folded {type(model).__name__} differs from the model by "
                             f"{err:.2e} > {check_atol} on random inputs")
    return fwd
