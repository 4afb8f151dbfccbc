"""Serving-time folding of the first dense layer into the embedding table (issue 18).

The first layer of the DNN, of STAR and of MMoE's experts and gates is a dense layer on
the concatenated input ``e = [E[r_1], ..., E[r_F], x_dense]`` (``FeatureEmbedding``'s
``all`` view; ``r_f`` the field's row of the fused table ``E``). Its pre-activation
splits by field:

    e W + c = Σ_f (E W_f)[r_f] + x_dense W_dense + c,

with ``W_f`` the rows of ``W`` that multiply field f. The products ``P = E W_f`` (one
``u``-wide row per table row) are computed once, at export, so the first and largest
matmul of every call (113 × 128 of the DNN's 24.7k multiply-adds per sample on ML-100k)
becomes a gather of F rows and a sum.

- **STAR**: partitioned normalisation is an affine map per domain,
  ``z = A_d ⊙ e + S_d`` (``A_d = γ γ_d / sqrt(σ²_d + ε)``, ``S_d = β + β_d − A_d μ_d``),
  and the first star layer uses ``K_d = W ⊙ W_d``, ``c_d = b + b_d``; so

      z K_d + c_d = Σ_f (E (A_d,f ⊙ K_d,f))[r_f] + x_dense (A_d,dense ⊙ K_d,dense) + (S_d K_d + c_d),

  one folded table per domain (``[D · R, u]``, indexed by ``d · R + r``). The later star
  layers' effective weights ``W ⊙ W_d``, ``b + b_d`` are formed at export too (float32
  products, bit-identical to the model's per-call ones).
- **MMoE**: the experts' first layer (``[E, n, u]``) and every domain's gate
  (``[D, n, E]``, biases included in the constant) fold into one table
  ``[R, E·u + D·E]``: one gather gives the experts' pre-activations and all D gates'
  logits, of which each sample keeps its own domain's.

The per-domain weights that remain (STAR: the first layer's constant and dense kernel,
the later star layers; MMoE: the towers) are packed into one ``[D, P]`` table. Small
(padded) batches, up to ``SMALL_BATCH`` rows, gather their domain's row of it once and
run per-sample matmuls; larger batches group their rows into per-domain tiles once
(``mdr_tf.layers.routing.domain_buckets``) and run every per-domain layer on the tiles.
Under XLA the batch size is static, so each compiled program holds one of the two paths.
The rest (DNN's later layers, STAR's auxiliary network, MMoE's later expert layers) runs
the model's own layers.

The result equals the model's up to float rounding (the folded products are computed in
float64 and rounded once; the parity tests and the export-time check, on a small and a
large batch, compare to 1e-5). The folded tables are a snapshot of the weights at export:
a model whose variables are changed after loading (fine-tuning a served SavedModel) must
be re-exported. Only float32 models with a plain embedding table (no assignment policy,
no low-precision table, no sequence interest) fold; ``fold_first_layer`` returns None for
everything else.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from mdr_tf.layers.embedding import field_rows
from mdr_tf.layers.routing import bucket_dense, domain_buckets, from_buckets, to_buckets
from mdr_tf.schema import Schema

#: Padded batch sizes up to this run per-sample routing (one gather of the domain's
#: packed weights); larger ones per-domain tiles.
SMALL_BATCH = 8


def fused_rows(embedding, features: dict[str, Any]) -> tuple[tf.Tensor, tf.Tensor]:
    """(rows int32 [B, F+1], domain int32 [B]): the fused-table rows ``FeatureEmbedding.call``
    reads (``mdr_tf.layers.embedding.field_rows`` plus the fields' offsets; the last column
    is the domain id's row)."""
    rows, domain = field_rows(features, embedding.schema)
    return rows + tf.constant(embedding.offsets, tf.int32), domain


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


class _Packed:
    """Per-domain arrays ``[D, *shape_i]`` packed side by side into one ``[D, P]`` table."""

    def __init__(self, arrays: list[np.ndarray]):
        self.shapes = [tuple(a.shape[1:]) for a in arrays]
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.starts = [int(x) for x in np.cumsum([0] + sizes[:-1])]
        self.sizes = sizes
        self.value = np.concatenate([a.reshape(a.shape[0], -1) for a in arrays], axis=1).astype(np.float32)

    def split(self, rows: tf.Tensor) -> list[tf.Tensor]:
        """``rows [N, P]`` (N = D, or one gathered row per sample) → ``[N, *shape_i]`` each."""
        lead = rows.shape[0] if rows.shape[0] is not None else tf.shape(rows)[0]
        return [tf.reshape(rows[:, a:a + n], [lead, *shape])
                for a, n, shape in zip(self.starts, self.sizes, self.shapes)]


def _by_batch(x: tf.Tensor, small: Callable[[], Any], large: Callable[[], Any]) -> Any:
    """``small()`` for batches up to ``SMALL_BATCH`` rows, else ``large()`` (a Python choice
    when the batch size is static, as under XLA; a ``tf.cond`` otherwise)."""
    b = x.shape[0]
    if b is not None:
        return small() if b <= SMALL_BATCH else large()
    return tf.cond(tf.shape(x)[0] <= SMALL_BATCH, small, large)


def _routed(x, domain, layers, act, num_domains: int, small: bool):
    """Per-domain dense layers ``x → act(x K_1,d + c_1,d) → ... → x K_L,d + c_L,d`` (no act
    after the last). ``layers``: [(kernels, biases)], ``[B, n, u]`` / ``[B, u]`` per sample
    when ``small``, else ``[D, n, u]`` / ``[D, u]`` (per-domain tiles)."""
    last = len(layers) - 1
    if small:
        for i, (k, c) in enumerate(layers):
            x = tf.einsum("bn,bnu->bu", x, k) + c
            x = act(x) if i < last else x
        return x
    pos, tile_domain, n_tiles = domain_buckets(domain, num_domains)
    h = to_buckets(x, pos, n_tiles)
    for i, (k, c) in enumerate(layers):
        h = bucket_dense(h, tile_domain, k, c)
        h = act(h) if i < last else h
    return from_buckets(h, pos)


class FoldedForward(tf.Module):
    """``features → probability [B]`` with the first dense layer folded into the table.

    Built by ``fold_first_layer``; call it inside a ``tf.function`` (it is what the XLA
    serving signatures of ``mdr_tf.export`` run). Its variables (the folded tables and
    the packed per-domain weights) are tracked by this module.
    """

    def __init__(self, model: keras.Model, kind: str, folded: np.ndarray, dense_kernel: np.ndarray | None,
                 const: np.ndarray | None, per_domain: list[np.ndarray] | None = None):
        super().__init__(name="folded_forward")
        self.model = model
        self.kind = kind
        self.folded = tf.Variable(folded, trainable=False, name="folded_table")
        self.dense_kernel = None if dense_kernel is None else \
            tf.Variable(dense_kernel, trainable=False, name="folded_dense_kernel")
        self.const = None if const is None else tf.Variable(const, trainable=False, name="folded_const")
        self.packing = _Packed(per_domain) if per_domain else None
        self.domain_params = None if self.packing is None else \
            tf.Variable(self.packing.value, trainable=False, name="folded_domain_params")
        self.num_rows = int(model.embedding.total_rows)
        self.num_domains = int(model.schema.num_domains)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.folded.shape)) * 4

    def _domain_params(self, domain, small: bool) -> list[tf.Tensor]:
        """The packed per-domain weights: each sample's (``small``) or every domain's."""
        return self.packing.split(tf.gather(self.domain_params, domain) if small else self.domain_params.read_value())

    def __call__(self, features: dict[str, Any]) -> tf.Tensor:
        emb = self.model.embedding
        s = emb.schema
        full_rows, domain = fused_rows(emb, features)
        rows = full_rows[:, :emb.num_fields]
        dense = [tf.reshape(tf.cast(features[f.name], tf.float32), [-1, 1]) for f in s.dense]
        x_dense = tf.concat(dense, axis=1) if dense else None
        if self.kind == "star":
            return self._star(rows, domain, full_rows, dense, x_dense)
        pre = tf.reduce_sum(tf.gather(self.folded, rows), axis=1) + self.const
        if dense:
            pre += tf.matmul(x_dense, self.dense_kernel)
        if self.kind == "dnn":
            return self._rest_dnn(pre, domain)
        return self._rest_mmoe(pre, domain)

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

    def _rest_mmoe(self, pre, domain):
        model = self.model
        e, u = model.num_experts, model.experts.units[0]
        experts = model.experts.act(tf.reshape(pre[:, :e * u], [-1, e, u]))  # [B, E, u]
        logits = tf.gather(tf.reshape(pre[:, e * u:], [-1, self.num_domains, e]), domain, batch_dims=1)  # [B, E]
        if len(model.experts.denses) > 1:  # later expert layers: the model's own
            h = tf.transpose(experts, [1, 0, 2])
            for i, dense in enumerate(model.experts.denses[1:], start=1):
                h = model.experts._post(i, dense(h), False)
            experts = tf.transpose(h, [1, 0, 2])
        h = tf.einsum("be,beu->bu", tf.nn.softmax(logits, axis=-1), experts)

        def run(small):
            p = self._domain_params(domain, small)
            return _routed(h, domain, list(zip(p[0::2], p[1::2])), model.towers.act, self.num_domains, small)

        logit = _by_batch(h, lambda: run(True), lambda: run(False))
        return tf.sigmoid(tf.reshape(logit, [-1]))

    def _star(self, rows, domain, full_rows, dense, x_dense):
        model, emb = self.model, self.model.embedding
        s = emb.schema
        pre = tf.reduce_sum(tf.gather(self.folded, rows + domain[:, None] * self.num_rows), axis=1)

        def run(small):
            p = self._domain_params(domain, small)
            const, dense_kernel, layers = p[0], p[1], list(zip(p[2::2], p[3::2]))
            if small:  # the sample's own domain's row of each
                x = pre + const
                if dense:
                    x += tf.einsum("bn,bnu->bu", x_dense, dense_kernel)
            else:
                x = pre + tf.gather(const, domain)
                if dense:
                    x += tf.einsum("bn,bnu->bu", x_dense, tf.gather(dense_kernel, domain))
            return _routed(model.fcn.act(x), domain, layers, model.fcn.act, self.num_domains, small)

        s_m = _by_batch(pre, lambda: run(True), lambda: run(False))
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


def _np(v) -> np.ndarray:
    return np.asarray(v)


def _fold_dnn(model, table, blocks, width, max_bytes) -> FoldedForward | None:
    mlp = model.deep
    if model.backbone != "mlp" or mlp.block != "plain" or mlp.hook or model.hook_context is not None \
            or not mlp.blocks:
        return None
    first = mlp.blocks[0]
    k = _np(first.kernel)
    if table.shape[0] * k.shape[1] * 4 > max_bytes:
        return None
    const = _np(first.bias) if first.bias is not None else np.zeros(k.shape[1], np.float32)
    return FoldedForward(model, "dnn", _fold(table, blocks, k), k[width:], const)


def _fold_star(model, table, blocks, width, max_bytes) -> FoldedForward | None:
    if model.pn is None or model.fcn.hook or model.fcn.batch_norm or not model.fcn.blocks:
        return None
    first = model.fcn.blocks[0]
    d = model.num_domains
    if d * table.shape[0] * first.units * 4 > max_bytes:
        return None
    pn = model.pn

    def f64(v):
        return _np(v).astype(np.float64)

    a = f64(pn.gamma)[None] * f64(pn.gamma_d) / np.sqrt(f64(pn.moving_variance) + pn.epsilon)  # [D, n]
    shift = f64(pn.beta)[None] + f64(pn.beta_d) - a * f64(pn.moving_mean)  # [D, n]
    kd = f64(first.kernel)[None] * f64(first.kernel_d)  # [D, n, u]
    cd = f64(first.bias_d) + (f64(first.bias)[None] if first.bias is not None else 0.0)  # [D, u]
    m = a[:, :, None] * kd  # [D, n, u]
    folded = np.concatenate([_fold(table, blocks, m[i]) for i in range(d)], axis=0)
    const = (np.einsum("dn,dnu->du", shift, kd) + cd).astype(np.float32)
    # later star layers and the 1-unit output: W ⊙ W_d, b + b_d in float32, as the model forms them
    later = []
    for blk in list(model.fcn.blocks[1:]) + [model.main_out]:
        later += [_np(blk.kernel)[None] * _np(blk.kernel_d), _np(blk.effective_biases())]
    return FoldedForward(model, "star", folded, None, None, [const, m[:, width:].astype(np.float32), *later])


def _fold_mmoe(model, table, blocks, width, max_bytes) -> FoldedForward | None:
    ex, gates, towers = model.experts, model.gates, model.towers
    if ex.batch_norm or gates.batch_norm or towers.batch_norm or len(gates.denses) != 1:
        return None
    e, d = model.num_experts, model.num_domains
    k_ex = _np(ex.kernels[0])  # [E, n, u]
    k_gate = _np(gates.kernels[0])  # [D, n, E]
    n, u = k_ex.shape[1], k_ex.shape[2]
    cols = e * u + d * e
    if table.shape[0] * cols * 4 > max_bytes:
        return None
    kernel = np.concatenate([k_ex.transpose(1, 0, 2).reshape(n, e * u), k_gate.transpose(1, 0, 2).reshape(n, d * e)],
                            axis=1)  # [n, E·u + D·E]: experts (e, j), then every domain's gate logits (d, k)
    const = np.concatenate([_np(ex.biases[0]).reshape(-1), _np(gates.biases[0]).reshape(-1)]).astype(np.float32)
    towers_w = []
    for k, b in zip(towers.kernels, towers.biases):
        towers_w += [_np(k), _np(b)]
    return FoldedForward(model, "mmoe", _fold(table, blocks, kernel), kernel[width:].astype(np.float32), const,
                         towers_w)


def check_folded(model: keras.Model, fwd: FoldedForward, atol: float = 1e-5, batches=(64, 5)) -> float:
    """Max |Δp| between ``fwd`` and ``model`` on random valid inputs, one batch per size in
    ``batches`` (the default covers the per-domain-tile and the per-sample path);
    ``AssertionError`` above ``atol``."""
    err = 0.0
    for i, n in enumerate(batches):
        x = _random_inputs(model.schema, n, seed=i)
        got = tf.function(fwd)({k: tf.constant(v) for k, v in x.items()}).numpy()
        want = np.asarray(model(x, training=False)).reshape(-1)
        err = max(err, float(np.max(np.abs(got - want))))
    if not err <= atol:
        raise AssertionError(f"fold_first_layer: the folded {type(model).__name__} differs from the model by "
                             f"{err:.2e} > {atol} on random inputs")
    return err


def fold_first_layer(model: keras.Model, max_bytes: int = 64 << 20, check_atol: float = 1e-5
                     ) -> FoldedForward | None:
    """A ``FoldedForward`` of ``model`` (a DNN, ``BackboneModel(backbone="mlp")`` with plain
    blocks, ``STAR`` or ``MMoE``), or None when the model does not fold or the folded tables
    would exceed ``max_bytes``. The folded forward is checked against ``model`` on random
    valid inputs (``check_folded``: max |Δp| <= ``check_atol`` at a small and a large batch,
    else ``AssertionError``)."""
    from mdr_tf.models.backbones import BackboneModel
    from mdr_tf.models.multitower import MMoE
    from mdr_tf.models.star import STAR

    emb = getattr(model, "embedding", None)
    if emb is None or emb.quantized is not None or emb.assignment is not None or \
            getattr(model, "interest_layer", None) is not None or model.compute_dtype != "float32":
        return None
    folders = {BackboneModel: _fold_dnn, STAR: _fold_star, MMoE: _fold_mmoe}
    if type(model) not in folders:
        return None
    if not model.built:
        model.build()
    width = emb.num_fields * emb.embedding_dim
    fwd = folders[type(model)](model, np.asarray(emb.table), _field_blocks(emb), width, max_bytes)
    if fwd is not None:
        check_folded(model, fwd, check_atol)
    return fwd
