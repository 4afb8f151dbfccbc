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
    """Named arrays packed side by side into one float32 table: ``[D, P]`` for per-domain
    arrays (``[D, *shape]`` each, ``per_domain=True``), else one ``[P]`` vector."""

    def __init__(self, arrays: dict[str, np.ndarray], per_domain: bool):
        self.per_domain = per_domain
        lead = 1 if per_domain else 0
        self.names = list(arrays)
        self.shapes = [tuple(a.shape[lead:]) for a in arrays.values()]
        self.sizes = [int(np.prod(shape)) for shape in self.shapes]
        self.starts = [int(x) for x in np.cumsum([0] + self.sizes[:-1])]
        flat = [np.asarray(a, np.float32).reshape((a.shape[0], -1) if per_domain else (-1,)) for a in arrays.values()]
        self.value = np.concatenate(flat, axis=lead)

    def split(self, flat: tf.Tensor) -> dict[str, tf.Tensor]:
        """``flat`` (``[N, P]``: N = D, or one gathered row per sample; or ``[P]``) → the arrays."""
        if not self.per_domain:
            return {k: tf.reshape(flat[a:a + n], shape)
                    for k, a, n, shape in zip(self.names, self.starts, self.sizes, self.shapes)}
        lead = flat.shape[0] if flat.shape[0] is not None else tf.shape(flat)[0]
        return {k: tf.reshape(flat[:, a:a + n], [lead, *shape])
                for k, a, n, shape in zip(self.names, self.starts, self.sizes, self.shapes)}


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
    serving signatures of ``mdr_tf.export`` run). It reads only its own variables, a
    snapshot of the model's weights at export: the folded table, the shared weights packed
    into one vector and the per-domain weights packed into one ``[D, P]`` table (three XLA
    arguments instead of one per weight: each costs a few µs per call).
    """

    def __init__(self, model: keras.Model, kind: str, folded: np.ndarray, shared: dict[str, np.ndarray],
                 per_domain: dict[str, np.ndarray] | None = None):
        super().__init__(name="folded_forward")
        self.model = model
        self.kind = kind
        self.folded = tf.Variable(folded, trainable=False, name="folded_table")
        self.shared_packing = _Packed(shared, per_domain=False)
        self.shared_params = tf.Variable(self.shared_packing.value, trainable=False, name="folded_shared_params")
        self.domain_packing = _Packed(per_domain, per_domain=True) if per_domain else None
        self.domain_params = None if self.domain_packing is None else \
            tf.Variable(self.domain_packing.value, trainable=False, name="folded_domain_params")
        self.num_rows = int(model.embedding.total_rows)
        self.num_domains = int(model.schema.num_domains)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.folded.shape)) * 4

    def _domain_params(self, domain, small: bool) -> dict[str, tf.Tensor]:
        """The per-domain weights: each sample's row (``small``) or every domain's."""
        return self.domain_packing.split(tf.gather(self.domain_params, domain) if small
                                         else self.domain_params.read_value())

    def __call__(self, features: dict[str, Any]) -> tf.Tensor:
        emb = self.model.embedding
        s = emb.schema
        full_rows, domain = fused_rows(emb, features)
        x_dense = tf.stack([tf.cast(tf.reshape(features[f.name], [-1]), tf.float32) for f in s.dense], axis=1) \
            if s.dense else None
        shared = self.shared_packing.split(self.shared_params.read_value())
        if self.kind == "star":
            return self._star(full_rows, domain, x_dense, shared)
        pre = tf.reduce_sum(tf.gather(self.folded, full_rows[:, :emb.num_fields]), axis=1) + shared["const"]
        if x_dense is not None:
            pre += tf.matmul(x_dense, shared["dense_kernel"])
        if self.kind == "dnn":
            return self._rest_dnn(pre, shared)
        return self._rest_mmoe(pre, domain, shared)

    def _rest_dnn(self, pre, p):
        mlp = self.model.deep
        x = pre
        for i in range(len(mlp.blocks)):
            if i > 0:
                x = tf.matmul(x, p[f"kernel_{i}"]) + p[f"bias_{i}"]
            if mlp.batch_norm:  # inference BN: an affine map per unit
                x = x * p[f"bn_scale_{i}"] + p[f"bn_shift_{i}"]
            x = mlp.act(x)
        return tf.sigmoid(tf.reshape(tf.matmul(x, p["head_kernel"]) + p["head_bias"], [-1]))

    def _rest_mmoe(self, pre, domain, p):
        model = self.model
        e, u = model.num_experts, model.experts.units[0]
        act = model.experts.act
        experts = act(tf.reshape(pre[:, :e * u], [-1, e, u]))  # [B, E, u]
        logits = tf.gather(tf.reshape(pre[:, e * u:], [-1, self.num_domains, e]), domain, batch_dims=1)  # [B, E]
        for i in range(1, len(model.experts.units)):  # later expert layers (shared)
            experts = act(tf.einsum("ben,enu->beu", experts, p[f"expert_kernel_{i}"]) + p[f"expert_bias_{i}"])
        h = tf.einsum("be,beu->bu", tf.nn.softmax(logits, axis=-1), experts)
        n = len(model.towers.kernels)

        def run(small):
            q = self._domain_params(domain, small)
            return _routed(h, domain, [(q[f"kernel_{i}"], q[f"bias_{i}"]) for i in range(n)], model.towers.act,
                           self.num_domains, small)

        logit = _by_batch(h, lambda: run(True), lambda: run(False))
        return tf.sigmoid(tf.reshape(logit, [-1]))

    def _star(self, full_rows, domain, x_dense, p):
        model = self.model
        u1 = model.fcn.blocks[0].units
        n = len(model.fcn.blocks)  # star layers after the first, then the 1-unit output
        # main and auxiliary first layers of the sample's domain: one gather of F+1 rows
        pre = tf.reduce_sum(tf.gather(self.folded, full_rows + domain[:, None] * self.num_rows), axis=1)

        def run(small):
            q = self._domain_params(domain, small)
            const, dense_kernel = (q["const"], q["dense_kernel"]) if small else \
                (tf.gather(q["const"], domain), tf.gather(q["dense_kernel"], domain))  # the sample's domain's
            x = pre + const
            if x_dense is not None:  # a per-sample [n_dense, u] kernel: a fused multiply-sum, not B tiny matmuls
                x += tf.reduce_sum(x_dense[:, :, None] * dense_kernel, axis=1)
            layers = [(q[f"kernel_{i}"], q[f"bias_{i}"]) for i in range(1, n + 1)]
            s_m = _routed(model.fcn.act(x[:, :u1]), domain, layers, model.fcn.act, self.num_domains, small)
            return s_m, x[:, u1:]

        s_m, aux = _by_batch(pre, lambda: run(True), lambda: run(False))
        aux = model.aux.act(aux)
        for i in range(1, len(model.aux.blocks)):
            aux = model.aux.act(tf.matmul(aux, p[f"aux_kernel_{i}"]) + p[f"aux_bias_{i}"])
        s_a = tf.matmul(aux, p["aux_out_kernel"]) + p["aux_out_bias"]
        return tf.sigmoid(tf.reshape(s_m + s_a, [-1]))


def _random_inputs(schema: Schema, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {f.name: (rng.integers(0, f.vocab_size, batch) if f.kind == "categorical"
                  else rng.random(batch).astype(np.float32)) for f in schema.features}
    x[schema.domain_key] = np.arange(batch) % schema.num_domains
    return x


def _np(v) -> np.ndarray:
    return np.asarray(v)


def _bias(block, units: int) -> np.ndarray:
    return _np(block.bias) if getattr(block, "bias", None) is not None else np.zeros(units, np.float32)


def _bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNormalization as ``x · scale + shift`` (float64, rounded once)."""
    var = _np(bn.moving_variance).astype(np.float64)
    scale = 1.0 / np.sqrt(var + bn.epsilon)
    if getattr(bn, "gamma", None) is not None:
        scale = scale * _np(bn.gamma)
    shift = -_np(bn.moving_mean).astype(np.float64) * scale
    if getattr(bn, "beta", None) is not None:
        shift = shift + _np(bn.beta)
    return scale.astype(np.float32), shift.astype(np.float32)


def _fold_dnn(model, table, blocks, width, max_bytes) -> FoldedForward | None:
    mlp = model.deep
    if model.backbone != "mlp" or mlp.block != "plain" or mlp.hook or model.hook_context is not None \
            or model.input_hook_layer is not None or not mlp.blocks or type(model.head) is not keras.layers.Dense:
        return None
    first = mlp.blocks[0]
    k = _np(first.kernel)
    if table.shape[0] * k.shape[1] * 4 > max_bytes:
        return None
    shared = {"const": _bias(first, first.units), "dense_kernel": k[width:]}
    for i, blk in enumerate(mlp.blocks):
        if i > 0:
            shared.update({f"kernel_{i}": _np(blk.kernel), f"bias_{i}": _bias(blk, blk.units)})
        if mlp.batch_norm:
            shared[f"bn_scale_{i}"], shared[f"bn_shift_{i}"] = _bn_affine(mlp.norms[i])
    shared.update(head_kernel=_np(model.head.kernel), head_bias=_bias(model.head, 1))
    return FoldedForward(model, "dnn", _fold(table, blocks, k), shared)


def _side_blocks(embedding) -> list[tuple[int, int, int]]:
    """Like ``_field_blocks`` for the ``domain_side`` view: the domain id's embedding, then the
    domain-group categorical features' (their columns in the view)."""
    s = embedding.schema
    d = embedding.embedding_dim
    sizes = [f.vocab_size for f in s.categorical] + [s.num_domains]
    fields = [len(s.categorical)] + [i for i, f in enumerate(s.categorical) if f.group == "domain"]
    return [(embedding.offsets[i], sizes[i], j * d) for j, i in enumerate(fields)]


def _fold_star(model, table, blocks, width, max_bytes) -> FoldedForward | None:
    if model.pn is None or model.fcn.hook or model.fcn.batch_norm or not model.fcn.blocks or \
            model.aux.hook or model.aux.batch_norm or model.aux.block != "plain" or not model.aux.blocks:
        return None
    emb, s = model.embedding, model.schema
    first, aux1 = model.fcn.blocks[0], model.aux.blocks[0]
    d = model.num_domains
    if d * table.shape[0] * (first.units + aux1.units) * 4 > max_bytes:
        return None
    pn = model.pn

    def f64(v):
        return _np(v).astype(np.float64)

    a = f64(pn.gamma)[None] * f64(pn.gamma_d) / np.sqrt(f64(pn.moving_variance) + pn.epsilon)  # [D, n]
    shift = f64(pn.beta)[None] + f64(pn.beta_d) - a * f64(pn.moving_mean)  # [D, n]
    kd = f64(first.kernel)[None] * f64(first.kernel_d)  # [D, n, u]
    cd = f64(first.bias_d) + (f64(first.bias)[None] if first.bias is not None else 0.0)  # [D, u]
    m = a[:, :, None] * kd  # [D, n, u]
    # the auxiliary network's first layer on the domain-side view: its embedding part folds into
    # the same rows (extra columns), its dense part (domain-group dense features) into the dense kernel
    ka = _np(aux1.kernel)
    side_emb = (1 + sum(1 for f in s.categorical if f.group == "domain")) * emb.embedding_dim
    aux_table = _fold(table, _side_blocks(emb), ka)  # [R, ua]
    aux_dense = np.zeros((len(s.dense), aux1.units), np.float32)
    for j, i in enumerate([i for i, f in enumerate(s.dense) if f.group == "domain"]):
        aux_dense[i] = ka[side_emb + j]
    folded = np.concatenate([np.concatenate([_fold(table, blocks, m[i]), aux_table], axis=1) for i in range(d)])
    const = np.concatenate([np.einsum("dn,dnu->du", shift, kd) + cd, np.repeat(_bias(aux1, aux1.units)[None], d, 0)],
                           axis=1)
    per_domain = {"const": const, "dense_kernel": np.concatenate(
        [m[:, width:], np.repeat(aux_dense[None], d, 0)], axis=2)}
    # later star layers and the 1-unit output: W ⊙ W_d, b + b_d in float32, as the model forms them
    for i, blk in enumerate(list(model.fcn.blocks[1:]) + [model.main_out], start=1):
        per_domain[f"kernel_{i}"] = _np(blk.kernel)[None] * _np(blk.kernel_d)
        per_domain[f"bias_{i}"] = _np(blk.effective_biases())
    shared = {}
    for i, blk in enumerate(model.aux.blocks[1:], start=1):
        shared.update({f"aux_kernel_{i}": _np(blk.kernel), f"aux_bias_{i}": _bias(blk, blk.units)})
    shared.update(aux_out_kernel=_np(model.aux_out.kernel), aux_out_bias=_bias(model.aux_out, 1))
    return FoldedForward(model, "star", folded, shared, per_domain)


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
    shared = {"const": np.concatenate([_np(ex.biases[0]).reshape(-1), _np(gates.biases[0]).reshape(-1)]),
              "dense_kernel": kernel[width:]}
    for i in range(1, len(ex.kernels)):
        shared.update({f"expert_kernel_{i}": _np(ex.kernels[i]), f"expert_bias_{i}": _np(ex.biases[i])})
    towers_w = {}
    for i, (k, b) in enumerate(zip(towers.kernels, towers.biases)):
        towers_w.update({f"kernel_{i}": _np(k), f"bias_{i}": _np(b)})
    return FoldedForward(model, "mmoe", _fold(table, blocks, kernel), shared, towers_w)


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
