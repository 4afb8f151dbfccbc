"""Issue 18.1: the faster HAMUR-MLP and HierRec compute what the earlier implementation did.

``_old_hamur_logit`` and ``_old_hierrec_logit`` are the forward passes of the
implementation before the speed work (kept here verbatim in structure: HAMUR's towers as
D matmuls stacked [B, D, u], BatchNorm over [B, D·u], the adapter tower by tower;
HierRec's SOMs materialising the generated weights ``W [B, H, in, out]`` and
``einsum('bhi,bhio->bho')``), written with raw ops on the model's own variables. The
tests compare outputs and the gradients of every trainable variable, in training and
inference, on seeded tiny models with perturbed weights.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from mdr_tf.layers.routing import select_by_domain
from mdr_tf.layers.stacked import stacked_dense
from mdr_tf.models.hamur import HamurMLP
from mdr_tf.models.hierrec import HierRec
from tests.helpers import random_inputs


def _perturb(model: keras.Model, seed: int = 1) -> None:
    """Seeded noise on every weight (fresh models have many equal / zero slices)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        x = np.asarray(v)
        noise = rng.uniform(0.1, 1.0, x.shape) if "variance" in v.name else rng.normal(0, 0.3, x.shape)
        v.assign((x + noise).astype(x.dtype))


def _batch_norm(x, gamma, beta, moving_mean, moving_var, eps, training):
    """Keras BatchNormalization over axis 0 (biased batch variance in training)."""
    if training:
        mean = ops.mean(x, axis=0)
        var = ops.mean(ops.square(x - mean), axis=0)
    else:
        mean, var = moving_mean, moving_var
    return gamma * (x - mean) / ops.sqrt(var + eps) + beta


def _domain_norm(x, dn, training):
    """HAMUR's DomainNorm: unbiased batch variance; moving statistics at inference ("moving")."""
    if dn.mode == "batch" or training:
        n = ops.cast(ops.shape(x)[0], x.dtype)
        mean = ops.mean(x, axis=0)
        var = ops.mean(ops.square(x - mean), axis=0) * n / ops.maximum(n - 1.0, 1.0)
    else:
        mean, var = dn.moving_mean, dn.moving_variance
    return dn.gamma * (x - mean) / ops.sqrt(var + dn.epsilon) + dn.beta


def _old_adapter_output(a, h, core):
    t = ops.einsum("bk,bkj->bj", ops.matmul(h, a.u1), core)
    s = ops.sigmoid(ops.matmul(t, a.v1) + a.c1)
    t = ops.einsum("bk,bkj->bj", ops.matmul(s, a.u2), core)
    return ops.matmul(t, a.v2) + a.c2


def _tower_norm_vars(norm):
    bn = norm.bn
    return bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, bn.epsilon


def _old_hamur_logit(m: HamurMLP, ctx, training):
    e = ctx["all"]
    core = m.hyper(e, training=training)
    d_count = m.num_domains
    h = e
    for i, (dense, norm) in enumerate(zip(m.towers, m.tower_norms)):
        w, b = dense.kernel, dense.bias
        y = ops.stack([ops.matmul(h if len(h.shape) == 2 else h[:, d], w[d]) for d in range(d_count)], axis=1) + b
        u = y.shape[-1]
        y = ops.reshape(_batch_norm(ops.reshape(y, (-1, d_count * u)), *_tower_norm_vars(norm), training),
                        (-1, d_count, u))
        h = ops.relu(y)
        if i in m.adapter_positions:
            a = m.adapters[m.adapter_positions.index(i)]
            o = ops.stack([_old_adapter_output(a, h[:, d], core) for d in range(d_count)], axis=1)
            h = h + _domain_norm(o, a.norm, training)
    w, b = m.out.kernel, m.out.bias
    logits = ops.stack([ops.matmul(h[:, d], w[d]) for d in range(d_count)], axis=1) + b
    return select_by_domain(ops.transpose(logits, (1, 0, 2)), ctx["domain"])


def _old_som(som, x, cond, index=None):
    cond = ops.cast(cond, "float32")
    if len(cond.shape) == 2:
        cond = ops.reshape(cond, [-1, 1, som.condition_dim])
    if len(x.shape) == 2:
        x = ops.repeat(ops.expand_dims(x, 1), som.heads, axis=1) if som.heads > 1 else ops.expand_dims(x, 1)
    fan_in = som.input_dim
    for i, units in enumerate(som.units):
        p = ops.einsum("nhc,hcx->nhx", cond, som.gen_kernels[i]) + som.gen_biases[i]
        if index is not None:
            p = ops.take(p, ops.cast(index, "int32"), axis=0)
        w = ops.reshape(p[..., : fan_in * units], [-1, som.heads, fan_in, units])
        if som.static_weight:
            w = w + som.static_kernels[i]
        b = p[..., fan_in * units:]
        x = som.act(ops.einsum("bhi,bhio->bho", x, w) + b)
        fan_in = units
    return x


def _old_hierrec_logit(m: HierRec, ctx, training):
    o_global = m.global_fc(ctx["all"])
    table = m.scenario_table()
    o_exp = _old_som(m.explicit_som, o_global, m.sc_explicit(table), index=ctx["domain"])[:, 0]
    o_imp = _old_som(m.implicit_som, o_exp, _v3_implicit_condition(m, ctx))
    return m.head(ops.reshape(o_imp, [-1, m.num_heads * m.implicit_som.output_dim]))


# --- HierRec as of commit ca40422 (third pass, issue 18.1), verbatim in structure: the
# implicit SOM as ``Σ_c [SC, 1]_c ([x, 1] K̃_c)`` with one GEMM for all heads on the shared
# input and H stacked GEMMs after, the explicit SOM as every scenario's layer on the batch
# (StackedDense) and a gather, the implicit condition through the [B, G, F, d] re-weighted
# fields.
def _v3_condition_kernels(som, i, fan_in, units, dtype):
    h, c = som.heads, som.condition_dim
    g = ops.concatenate([ops.cast(som.gen_kernels[i], dtype),
                         ops.expand_dims(ops.cast(som.gen_biases[i], dtype), 1)], axis=1)  # [H, c+1, S]
    w = ops.transpose(ops.reshape(g[..., : fan_in * units], [h, c + 1, fan_in, units]), (0, 2, 1, 3))
    b = ops.expand_dims(g[..., fan_in * units:], 1)                                   # [H, 1, c+1, out]
    return ops.reshape(ops.concatenate([w, b], axis=1), [h, fan_in + 1, (c + 1) * units])


def _v3_som_per_scenario(som, x, cond, index, training):
    index = ops.cast(index, "int32")
    impl = "einsum" if training else "loop"
    if len(x.shape) == 2:
        x = ops.expand_dims(x, 1)
    for w, b in som.generate(cond, row_by_row=not training, per_scenario=True):  # [D, H, in, out], [D, H, out]
        heads = []
        for h in range(som.heads):
            x_h = x[:, h if x.shape[1] > 1 else 0]
            heads.append(select_by_domain(stacked_dense(x_h, w[:, h], b[:, h], "branch_major", impl), index))
        x = som.act(ops.stack(heads, axis=1))
    return x


def _v3_som(som, x, cond, index=None, training=None):
    x = ops.cast(x, som.compute_dtype)
    if index is not None:
        return _v3_som_per_scenario(som, x, cond, index, training)
    cond = ops.cast(cond, som.compute_dtype)
    if len(cond.shape) == 2:
        cond = ops.reshape(cond, [-1, 1, som.condition_dim])
    cond1 = ops.concatenate([cond, ops.ones_like(cond[..., :1])], axis=-1)       # [B, H, c+1]
    shared = len(x.shape) == 2
    fan_in = som.input_dim
    for i, units in enumerate(som.units):
        kernel = _v3_condition_kernels(som, i, fan_in, units, cond.dtype)          # [H, in+1, (c+1)·out]
        x1 = ops.concatenate([x, ops.ones_like(x[..., :1])], axis=-1)               # [B, (H,) in+1]
        if shared:
            t = ops.matmul(x1, ops.reshape(ops.transpose(kernel, (1, 0, 2)), [fan_in + 1, -1]))
        else:
            t = ops.stack([ops.matmul(x1[:, h], kernel[h]) for h in range(som.heads)], axis=1)
        t = ops.reshape(t, [-1, som.heads, som.condition_dim + 1, units])          # [B, H, c+1, out]
        y = ops.sum(ops.expand_dims(cond1, -1) * t, axis=2)                         # [B, H, out]
        if som.static_weight:
            y = y + ops.einsum("bi,hio->bho" if shared else "bhi,hio->bho", x,
                               ops.cast(som.static_kernels[i], x.dtype))
        x, shared = som.act(y), False
        fan_in = units
    return x


def _v3_implicit_condition(m: HierRec, ctx):
    w = m.field_weights_from_ctx(ctx)                                    # [B, G, F']
    f = m.num_fields
    fields = ops.cast(ctx["fields"], m.compute_dtype)                    # [B, F, d]
    ie = ops.expand_dims(w[:, :, :f], -1) * ops.expand_dims(fields, 1)   # [B, G, F, d]
    ie = ops.reshape(ie, [-1, m.num_heads, f * m.embedding_dim])
    if m.num_dense_fields:
        dense = ops.cast(ctx["dense"], m.compute_dtype)                  # [B, n_dense]
        ie = ops.concatenate([ie, w[:, :, f:] * ops.expand_dims(dense, 1)], axis=-1)
    return m.sc_implicit(ie)                                             # [B, G, c]


def _v3_hierrec_logit(m: HierRec, ctx, training):
    o_global = m.global_fc(ctx["all"])                                   # [B, h0]
    o_exp = _v3_som(m.explicit_som, o_global, m._explicit_condition(row_by_row=not training), index=ctx["domain"],
                    training=training)[:, 0]
    o_imp = _v3_som(m.implicit_som, o_exp, _v3_implicit_condition(m, ctx))  # [B, G, h]
    return m.head(ops.reshape(o_imp, [-1, m.num_heads * m.implicit_som.output_dim]))


def _compare(model, old_logit, x, training, rtol=1e-5, atol=1e-5):
    """Outputs and gradients (every trainable variable) of the model vs the old forward."""
    variables = model.trainable_variables

    def run(fn):
        with tf.GradientTape() as tape:
            ctx = model.embedding(x)
            logit = ops.reshape(fn(ctx), [-1])
            loss = ops.sum(ops.sigmoid(logit) * np.linspace(-1.0, 1.0, logit.shape[0], dtype="float32"))
        return logit.numpy(), tape.gradient(loss, variables)

    old, old_grads = run(lambda ctx: old_logit(model, ctx, training))
    new, new_grads = run(lambda ctx: model.compute_logit(x, ctx, training=training))
    assert np.std(old) > 1e-3  # a non-degenerate reference
    np.testing.assert_allclose(new, old, rtol=rtol, atol=atol)
    for v, g_old, g_new in zip(variables, old_grads, new_grads):
        if g_old is None:
            assert g_new is None, v.path
            continue
        g_old, g_new = ops.convert_to_numpy(g_old), ops.convert_to_numpy(g_new)
        scale = max(1.0, float(np.max(np.abs(g_old))))
        np.testing.assert_allclose(g_new, g_old, rtol=rtol, atol=atol * scale, err_msg=v.path)
    return old


HAMUR_CASES = {
    "default": {},
    "two_adapters_batch_norm_mode": {"adapter_positions": [-2, -1], "norm_mode": "batch"},
}


@pytest.mark.parametrize("case", sorted(HAMUR_CASES))
@pytest.mark.parametrize("training", [True, False])
def test_hamur_matches_the_earlier_implementation(synth_schema, case, training):
    keras.utils.set_random_seed(0)
    m = HamurMLP(synth_schema.to_config(), hidden_units=[12, 8, 6], k=3, hyper_dims=[8], bottleneck=4,
                 embedding_dim=4, **HAMUR_CASES[case])
    m.build()
    _perturb(m)
    x = random_inputs(synth_schema, 64, seed=2)
    _compare(m, _old_hamur_logit, x, training)


HIERREC_CASES = {
    "default": {},
    "static_weight_one_head": {"static_weight": True, "num_heads": 1},
    # second layer narrowing (in + 1 >= out): the [x, 1] K̃ order on each head's own input
    "narrowing_three_heads": {"som_units": [6, 4], "num_heads": 3, "static_weight": True},
}


@pytest.mark.parametrize("case", sorted(HIERREC_CASES))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("reference", ["before_speed_work", "ca40422"])
def test_hierrec_matches_the_earlier_implementations(synth_schema, case, training, reference):
    """Today's HierRec against the implementation before the speed work (materialised
    per-sample weights) and against commit ca40422's (before the fourth pass of issue 18.1)."""
    keras.utils.set_random_seed(0)
    kwargs = {"global_units": 8, "condition_dim": 5, "som_units": [4, 6], "num_heads": 2, "embedding_dim": 4,
              **HIERREC_CASES[case]}
    m = HierRec(synth_schema.to_config(), **kwargs)
    m.build()
    _perturb(m)
    x = random_inputs(synth_schema, 64, seed=2)
    _compare(m, {"before_speed_work": _old_hierrec_logit, "ca40422": _v3_hierrec_logit}[reference], x, training)
