"""HierRec's scenario-oriented module (SOM): an MLP whose weights are generated from a condition.

Gao et al., "HierRec: Scenario-Aware Hierarchical Modeling for Multi-scenario
Recommendations", CIKM 2024 (arXiv 2309.02061, eqs. 1-2)::

    W_l = Reshape(FC_l^W(SC)),  b_l = FC_l^b(SC)
    O   = σ(W_L(… σ(W_1 I + b_1) …) + b_L)

The module holds ``H`` independent generators ("heads", HierRec's G implicit SOMs run
as one batched op). The condition is either per instance ``[B, H, c]`` or per scenario
``[D, H, c]`` plus an ``index`` [B]: then the weights are generated D times (at
inference one scenario at a time, so a scenario's weights do not depend on D) and gathered
(HierRec's explicit SOM, whose condition depends on the scenario only).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.routing import per_row, select_by_domain
from mdr_tf.layers.stacked import stacked_dense


@keras.saving.register_keras_serializable(package="mdr_tf")
class ScenarioOrientedModule(keras.layers.Layer):
    """Generated-weight MLP ``O = act(W_L(... act(W_1 I + b_1) ...) + b_L)``, weights from ``SC``.

    Initialisation (ours; the paper gives none): ``FC_l^W``'s bias starts as a
    Glorot-uniform ``[in, out]`` kernel and its kernel as small Glorot values, so at step
    0 the SOM is an ordinarily initialised MLP and the condition-dependent part grows
    from there (a zero-initialised, purely generated MLP would sit at a saddle point,
    since the condition vectors start near 0 with N(0, 1e-4) embeddings). Note that the
    generator's bias is already a static shared weight; ``static_weight=True`` adds an
    explicit separate one (and zero-initialises that bias instead).

    Args:
      units: widths of the L generated layers (bottleneck: narrow then wide; ours
        default ``(32, 64)``).
      condition_dim: width c of the condition vector SC.
      heads: number H of independent generators (HierRec's G implicit SOMs).
      activation: σ of eq. 2, applied after every layer (ours: relu).
      static_weight: add a static shared kernel per layer and head (default off, as in
        models.md; unconfirmed).
    """

    def __init__(
        self,
        units: Sequence[int] = (32, 64),
        condition_dim: int = 64,
        heads: int = 1,
        activation: str = "relu",
        static_weight: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        self.condition_dim = int(condition_dim)
        self.heads = int(heads)
        self.activation = activation
        self.static_weight = bool(static_weight)
        self.act = keras.activations.get(activation)

    def build(self, input_shape):
        self.input_dim = int(input_shape[-1])
        h, c = self.heads, self.condition_dim
        self.gen_kernels, self.gen_biases, self.static_kernels = [], [], []
        fan_in = self.input_dim
        for i, out in enumerate(self.units):
            size = fan_in * out + out
            limit = math.sqrt(6.0 / (fan_in + out))
            self.gen_kernels.append(self.add_weight(
                name=f"gen_kernel_{i}", shape=(h, c, size),
                initializer=keras.initializers.VarianceScaling(1.0, "fan_avg", "uniform")))

            def bias_init(shape, dtype=None, fan_in=fan_in, out=out, limit=limit, static=self.static_weight):
                if static:
                    return ops.zeros(shape, dtype=dtype)
                w = keras.random.uniform((shape[0], fan_in * out), -limit, limit, dtype=dtype)
                return ops.concatenate([w, ops.zeros((shape[0], out), dtype=dtype)], axis=1)

            self.gen_biases.append(self.add_weight(name=f"gen_bias_{i}", shape=(h, size), initializer=bias_init))
            if self.static_weight:
                self.static_kernels.append(self.add_weight(
                    name=f"static_kernel_{i}", shape=(h, fan_in, out),
                    initializer=keras.initializers.RandomUniform(-limit, limit)))
            fan_in = out
        self.built = True

    @property
    def output_dim(self) -> int:
        return self.units[-1]

    def generate(self, cond, index=None, row_by_row: bool = True,
                 per_scenario: bool | None = None) -> list[tuple[Any, Any]]:
        """Generated ``(W [N, H, in, out], b [N, H, out])`` per layer (materialised:
        diagnostics and the per-scenario path; ``call`` never builds per-sample weights).

        ``cond``: [N, H, c] (or [N, c] when H = 1); ``index`` (optional, [B]): rows of
        ``cond`` to use per sample — weights are generated N times, then gathered. Rows of
        per-scenario conditions (``per_scenario``, default: when ``index`` is given) are
        generated one at a time if ``row_by_row`` (a row's weights then do not depend on
        N), else in one op (faster in training).
        """
        per_scenario = index is not None if per_scenario is None else per_scenario
        cond = ops.cast(cond, self.compute_dtype)
        if len(cond.shape) == 2:
            cond = ops.reshape(cond, [-1, 1, self.condition_dim])
        out = []
        fan_in = self.input_dim
        for i, units in enumerate(self.units):
            kernel = ops.cast(self.gen_kernels[i], cond.dtype)
            if not (per_scenario and row_by_row):
                p = ops.einsum("nhc,hcx->nhx", cond, kernel)
            else:  # per-scenario rows one by one: a scenario's weights do not depend on N (onboarding)
                p = per_row(lambda row, kernel=kernel: ops.einsum("nhc,hcx->nhx", row, kernel), cond)
            p = p + ops.cast(self.gen_biases[i], cond.dtype)
            if index is not None:
                p = ops.take(p, ops.cast(index, "int32"), axis=0)
            w = ops.reshape(p[..., : fan_in * units], [-1, self.heads, fan_in, units])
            if self.static_weight:
                w = w + ops.cast(self.static_kernels[i], w.dtype)
            b = p[..., fan_in * units:]
            out.append((w, b))
            fan_in = units
        return out

    def call(self, x, cond, index=None, training: bool | None = None, split_heads: bool = False):
        """``x``: [B, in] (shared by all heads) or [B, H, in] → [B, H, units[-1]] (with
        ``split_heads``: the H heads' outputs as a list of [B, units[-1]], unstacked, for a
        caller that consumes each head on its own).

        Per-instance conditions ([B, H, c]): the generated weights are never materialised.
        With ``W_b = reshape(SC_b K + k)``, ``x̃ = [x, 1]`` and ``SC̃ = [SC, 1]``, a layer is the
        bilinear form ``y_b = Σ_{c,j} SC̃_{b,c} x̃_{b,j} K̃_{c,j}`` (``K̃_{c,j}`` [out]: the
        generator's weight and bias rows), evaluated per head in one of two orders, whichever
        has the narrower per-sample intermediate (same multiply-adds as generating ``W_b``,
        without the [B, H, in, out] tensor or per-sample matrix-vector products):

        - ``x̃ K̃`` first (``_condition_kernels``): one GEMM ``[B, in+1] · [in+1, (c+1)·out]``,
          then the weighted sum over c; intermediate ``(c+1)·out`` per sample;
        - ``SC̃ ⊗ x̃`` first (``_outer_kernels``, when ``in + 1 < out`` on a head's own input):
          the outer product ``[B, (c+1)·(in+1)]``, then one GEMM with ``[(c+1)·(in+1), out]``.

        Heads are separate GEMMs on separate tensors (no stacking or slicing of the heads'
        intermediates, whose gradients XLA on CPU runs as slow pad/broadcast fusions).

        Per-scenario conditions ([D, H, c] with ``index``): the D scenarios' weights are
        generated (row by row at inference, so a scenario's weights do not depend on D, see
        ``mdr_tf.onboarding``), every scenario's layer runs on the whole batch (in training
        one GEMM ``[B, in] · [in, D·out]`` and a one-hot masked sum over D; at inference D
        separate matmuls, ``mdr_tf.layers.stacked``, and a gather) and each sample keeps its
        own scenario's output (instead of gathering [B, in, out] weights).
        """
        x = ops.cast(x, self.compute_dtype)
        if index is not None:
            y = self._call_per_scenario(x, cond, index, training)
            return [y[:, h] for h in range(self.heads)] if split_heads else y
        heads = self._call_per_instance(x, cond)
        return heads if split_heads else ops.stack(heads, axis=1)

    def _call_per_instance(self, x, cond) -> list:
        """Per-instance conditions [B, H, c] (or [B, c] when H = 1) → H × [B, units[-1]]."""
        cond = ops.cast(cond, self.compute_dtype)
        if len(cond.shape) == 2:
            cond = ops.reshape(cond, [-1, 1, self.condition_dim])
        c, heads = self.condition_dim, self.heads
        cond1 = ops.concatenate([cond, ops.ones_like(cond[..., :1])], axis=-1)       # [B, H, c+1]
        shared = len(x.shape) == 2  # one input for every head (the first layer's [B, in])
        xs = None if shared else [x[:, h] for h in range(heads)]
        fan_in = self.input_dim
        for i, units in enumerate(self.units):
            outer = not shared and fan_in + 1 < units
            if outer:
                kz = self._outer_kernels(i, fan_in, units, cond.dtype)                   # [H, (c+1)(in+1), out]
            else:
                kernel = self._condition_kernels(i, fan_in, units, cond.dtype)       # [H, in+1, (c+1)·out]
            ys = []
            for h in range(heads):  # one GEMM per head (no slicing / stacking of the heads' tensors)
                x_h = x if shared else xs[h]
                x1 = ops.concatenate([x_h, ops.ones_like(x_h[:, :1])], axis=-1)             # [B, in+1]
                if outer:  # [SC, 1] ⊗ [x, 1] [B, (c+1)(in+1)] · K̂: the narrower intermediate when in+1 < out
                    z = ops.reshape(ops.expand_dims(cond1[:, h], -1) * ops.expand_dims(x1, 1),
                                    [-1, (c + 1) * (fan_in + 1)])
                    y = ops.matmul(z, kz[h])
                else:  # [x, 1] K̃ [B, (c+1)·out], then Σ_c [SC, 1]_c (·)_c
                    t = ops.reshape(ops.matmul(x1, kernel[h]), [-1, c + 1, units])           # [B, c+1, out]
                    y = ops.sum(ops.expand_dims(cond1[:, h], -1) * t, axis=1)                # [B, out]
                if self.static_weight:
                    y = y + ops.matmul(x_h, ops.cast(self.static_kernels[i][h], y.dtype))
                ys.append(self.act(y))
            xs, shared = ys, False
            fan_in = units
        return xs

    def _generator_rows(self, i: int, dtype):
        """Layer i's generator ``FC^W`` as ``[H, c+1, S]``: its kernel rows, then its bias row."""
        return ops.concatenate([ops.cast(self.gen_kernels[i], dtype),
                                ops.expand_dims(ops.cast(self.gen_biases[i], dtype), 1)], axis=1)

    def _condition_kernels(self, i: int, fan_in: int, units: int, dtype):
        """Layer i's generator as ``K̃ [H, in+1, (c+1)·out]``: entry ``(h, j, c·out + o)`` is
        the coefficient of ``SC̃_c x̃_j`` in output o (blocks c < C: ``FC^W``'s kernel, block C:
        its bias; row j = in: the generated bias)."""
        h, c = self.heads, self.condition_dim
        g = self._generator_rows(i, dtype)                                                # [H, c+1, S]
        w = ops.transpose(ops.reshape(g[..., : fan_in * units], [h, c + 1, fan_in, units]), (0, 2, 1, 3))
        b = ops.expand_dims(g[..., fan_in * units:], 1)                                   # [H, 1, c+1, out]
        return ops.reshape(ops.concatenate([w, b], axis=1), [h, fan_in + 1, (c + 1) * units])

    def _outer_kernels(self, i: int, fan_in: int, units: int, dtype):
        """Layer i's generator as ``K̂ [H, (c+1)·(in+1), out]``: row ``c·(in+1) + j`` is the
        coefficient row of ``SC̃_c x̃_j`` (the generator's rows in their stored order)."""
        h, c = self.heads, self.condition_dim
        g = self._generator_rows(i, dtype)                                                # [H, c+1, S]
        w = ops.reshape(g[..., : fan_in * units], [h, c + 1, fan_in, units])
        b = ops.reshape(g[..., fan_in * units:], [h, c + 1, 1, units])
        return ops.reshape(ops.concatenate([w, b], axis=2), [h, (c + 1) * (fan_in + 1), units])

    def _call_per_scenario(self, x, cond, index, training):
        index = ops.cast(index, "int32")
        if training:
            return self._call_per_scenario_masked(x, cond, index)
        # Inference: every scenario's weights generated row by row and D separate matmuls, so a
        # scenario's output does not depend on D (new-domain onboarding's bit-identity).
        if len(x.shape) == 2:
            x = ops.expand_dims(x, 1)
        for w, b in self.generate(cond, row_by_row=True, per_scenario=True):  # [D, H, in, out], [D, H, out]
            heads = []
            for h in range(self.heads):
                x_h = x[:, h if x.shape[1] > 1 else 0]
                heads.append(select_by_domain(stacked_dense(x_h, w[:, h], b[:, h], "branch_major", "loop"), index))
            x = self.act(ops.stack(heads, axis=1))
        return x

    def _call_per_scenario_masked(self, x, cond, index):
        """Training path of ``_call_per_scenario``: each layer of all D scenarios as one GEMM
        ``[B, in] · [in, D·out]``, then each sample's own scenario kept by a one-hot masked sum
        over D (the same values as a gather; its gradient is a mask, not a scatter)."""
        gen = self.generate(cond, row_by_row=False, per_scenario=True)    # [D, H, in, out], [D, H, out]
        d = int(gen[0][0].shape[0])
        mask = ops.expand_dims(ops.one_hot(index, d, dtype=x.dtype), -1)  # [B, D, 1]
        xs = [x] * self.heads if len(x.shape) == 2 else [x[:, h] for h in range(self.heads)]
        fan_in = self.input_dim
        for (w, b), units in zip(gen, self.units):
            ys = []
            for h in range(self.heads):
                kernel = ops.reshape(ops.transpose(w[:, h], (1, 0, 2)), [fan_in, d * units])  # [in, D·out]
                y = ops.reshape(ops.matmul(xs[h], kernel) + ops.reshape(b[:, h], [-1]), [-1, d, units])
                ys.append(self.act(ops.sum(mask * y, axis=1)))
            xs = ys
            fan_in = units
        return ops.stack(xs, axis=1)

    def generated_parameters_per_sample(self) -> int:
        """Weights and biases generated per sample (all heads)."""
        dims = [self.input_dim] + self.units
        return int(self.heads * sum(i * o + o for i, o in zip(dims[:-1], dims[1:])))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"units": self.units, "condition_dim": self.condition_dim, "heads": self.heads,
                       "activation": self.activation, "static_weight": self.static_weight})
        return config

