"""APG: adaptive parameter generation, ``W_b = U S(z_b) V`` (dense block "apg").

Yan et al., "APG: Adaptive Parameter Generation Network for Click-Through Rate
Prediction", NeurIPS 2022. Shared ``U ∈ R^{n×k}``, ``V ∈ R^{k×u}``; a small generator
maps the condition ``z_b`` to the per-sample core ``S_b ∈ R^{k×k}``; the layer computes
``y_b = ((x_b U) S_b) V + b`` without ever materialising ``[B, n, u]``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from mdr_tf.layers.blocks import DenseBlock, register_block

APG_CONDITIONS = ("group", "self", "mix")


@register_block("apg")
class APGDense(DenseBlock):
    """APG dense layer: ``y_b = ((x_b U) S(z_b)) V + b`` or, with a generated bias,
    ``((x_b U) S(z_b)) V + b(z_b)`` (pre-activation).

    Condition ``z_b`` (APG's condition strategies):

    - "group" (default): the scenario embedding ``ctx[condition_key]`` (default the
      domain-side view ``e_s``), under stop-gradient only when ``stop_gradient_condition``
      (MMLRec's APG detaches the scene embedding; off by default, see Args);
    - "self": the layer input ``x_b``;
    - "mix": both concatenated.

    ``S(z) = I + reshape(G(z), [k, k])`` where ``G`` is an MLP (``generator_units``
    hidden ReLU layers, then a linear map to k²; default: a single linear map, as MMLRec).
    The identity offset (``identity_core=True``, ours) is a reparameterisation (G has a
    free bias) that starts the layer as the low-rank product ``U V`` instead of a zero map.

    Over-parameterisation (APG paper): with ``overparam_dim = p > k`` the factors are
    trained as ``U = U_l U_r`` (n×p, p×k) and ``V = V_l V_r`` (k×p, p×u); ``merged_factors``
    / ``merge_overparameterization`` fold them into ``U``, ``V`` for export.

    Args:
      units, num_domains, context_dims, use_bias, kernel_initializer, kernel_regularizer:
        see ``DenseBlock`` (the initializer and regularizer apply to U and V; there is no
        full shared kernel). Default initializer: glorot normal (FuxiCTR).
      rank: k; None = ``ceil(min(n, u) / rank_divisor)`` (MMLRec ``mf_k = 4``).
      rank_divisor: see ``rank``.
      condition: "group", "self" or "mix".
      condition_key: ctx view used as the scenario condition.
      stop_gradient_condition: stop-gradient on the scenario condition (default False,
        ours; MMLRec detaches its scene embedding, but that one starts as a torch
        N(0, 1) code, while the shared table here starts at N(0, 1e-4): detached, the
        generator then sees ~1e-4 for every domain and, when the domain is not also a
        main-path field, never anything else; docs/conflicting_domains.md).
      generator_units: hidden widths of the generator MLP (default none).
      generate_bias: generate a per-sample bias ``b(z_b) ∈ R^u`` that **replaces** the
        shared bias (FuxiCTR does both: generates it and has no shared bias); default off
        (ours: the shared bias ``b``).
      identity_core: add I to the generated core (see above).
      overparam_dim: p of the over-parameterisation; None disables it.
    """

    def __init__(
        self,
        units: int,
        num_domains: int = 1,
        context_dims: dict[str, int] | None = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_normal",
        kernel_regularizer: Any = None,
        rank: int | None = None,
        rank_divisor: int = 4,
        condition: str = "group",
        condition_key: str = "domain_side",
        stop_gradient_condition: bool = False,
        generator_units: Sequence[int] = (),
        generate_bias: bool = False,
        identity_core: bool = True,
        overparam_dim: int | None = None,
        **kwargs,
    ):
        super().__init__(units, num_domains, context_dims, use_bias, kernel_initializer, kernel_regularizer, **kwargs)
        if condition not in APG_CONDITIONS:
            raise ValueError(f"condition must be one of {APG_CONDITIONS}, got {condition!r}")
        self.rank = None if rank is None else int(rank)
        self.rank_divisor = int(rank_divisor)
        self.condition = condition
        self.condition_key = condition_key
        self.stop_gradient_condition = bool(stop_gradient_condition)
        self.generator_units = [int(u) for u in generator_units]
        self.generate_bias = bool(generate_bias)
        self.identity_core = bool(identity_core)
        self.overparam_dim = None if overparam_dim is None else int(overparam_dim)

    def build(self, input_shape):
        n = self.input_dim = int(input_shape[-1])
        u = self.units
        k = self.k = self.rank or max(1, math.ceil(min(n, u) / self.rank_divisor))
        self.kernel = None  # no full shared kernel: W_b = U S_b V
        init, reg = self.kernel_initializer, self.kernel_regularizer
        if self.overparam_dim:
            p = self.overparam_dim
            self.u_left = self.add_weight(name="u_left", shape=(n, p), initializer=init, regularizer=reg)
            self.u_right = self.add_weight(name="u_right", shape=(p, k), initializer=init, regularizer=reg)
            self.v_left = self.add_weight(name="v_left", shape=(k, p), initializer=init, regularizer=reg)
            self.v_right = self.add_weight(name="v_right", shape=(p, u), initializer=init, regularizer=reg)
        else:
            self.u = self.add_weight(name="u", shape=(n, k), initializer=init, regularizer=reg)
            self.v = self.add_weight(name="v", shape=(k, u), initializer=init, regularizer=reg)
        # A generated bias replaces the shared one (FuxiCTR): the generator's own output
        # bias already is a shared offset, a second shared bias would be redundant.
        self.bias = self.add_weight(name="bias", shape=(u,), initializer="zeros") \
            if self.use_bias and not self.generate_bias else None
        width = 0
        if self.condition in ("group", "mix"):
            width += int(self.context_dims[self.condition_key])
        if self.condition in ("self", "mix"):
            width += n
        self.gen_kernels, self.gen_biases = [], []
        out = k * k + (u if self.generate_bias else 0)
        for i, w in enumerate(self.generator_units + [out]):
            self.gen_kernels.append(self.add_weight(name=f"gen_kernel_{i}", shape=(width, w),
                                                    initializer="glorot_uniform"))
            self.gen_biases.append(self.add_weight(name=f"gen_bias_{i}", shape=(w,), initializer="zeros"))
            width = w
        self.built = True

    def condition_input(self, x, ctx: dict | None):
        parts = []
        if self.condition in ("group", "mix"):
            z = ctx[self.condition_key]
            parts.append(ops.stop_gradient(z) if self.stop_gradient_condition else z)
        if self.condition in ("self", "mix"):
            parts.append(x)
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def core(self, x, ctx: dict | None = None):
        """Generated core ``S_b`` [B, k, k] and generated bias [B, u] (or None)."""
        g = ops.cast(self.condition_input(x, ctx), x.dtype)
        last = len(self.gen_kernels) - 1
        for i, (w, b) in enumerate(zip(self.gen_kernels, self.gen_biases)):
            g = ops.matmul(g, w) + b
            if i < last:
                g = ops.relu(g)
        k = self.k
        s = ops.reshape(g[:, : k * k], [-1, k, k])
        if self.identity_core:
            s = s + ops.eye(k, dtype=s.dtype)
        gen_bias = g[:, k * k:] if self.generate_bias else None
        return s, gen_bias

    def call(self, x, ctx: dict | None = None, training: bool | None = None):
        s, gen_bias = self.core(x, ctx)
        if self.overparam_dim:
            xu = ops.matmul(ops.matmul(x, self.u_left), self.u_right)
        else:
            xu = ops.matmul(x, self.u)
        t = ops.einsum("bk,bkl->bl", xu, s)
        y = ops.matmul(ops.matmul(t, self.v_left), self.v_right) if self.overparam_dim else ops.matmul(t, self.v)
        if self.bias is not None:
            y = y + self.bias
        if gen_bias is not None:
            y = y + gen_bias
        return y

    def merged_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(U, V)`` as NumPy arrays (products ``U_l U_r``, ``V_l V_r`` when over-parameterised)."""
        if self.overparam_dim:
            return (ops.convert_to_numpy(self.u_left) @ ops.convert_to_numpy(self.u_right),
                    ops.convert_to_numpy(self.v_left) @ ops.convert_to_numpy(self.v_right))
        return ops.convert_to_numpy(self.u), ops.convert_to_numpy(self.v)

    def generated_parameters_per_sample(self) -> int:
        return self.k * self.k + (self.units if self.generate_bias else 0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "rank": self.rank, "rank_divisor": self.rank_divisor, "condition": self.condition,
            "condition_key": self.condition_key, "stop_gradient_condition": self.stop_gradient_condition,
            "generator_units": self.generator_units, "generate_bias": self.generate_bias,
            "identity_core": self.identity_core, "overparam_dim": self.overparam_dim,
        })
        return config


def _strip_overparam(config: Any) -> Any:
    """Copy of a model config with ``overparam_dim`` removed from every APG block config."""
    if isinstance(config, dict):
        out = {k: _strip_overparam(v) for k, v in config.items()}
        if out.get("block") == "apg" and isinstance(out.get("block_config"), dict):
            out["block_config"] = {**out["block_config"], "overparam_dim": None}
        return out
    if isinstance(config, list):
        return [_strip_overparam(v) for v in config]
    return config


def merge_overparameterization(model: keras.Model) -> keras.Model:
    """Returns an equivalent model whose APG blocks hold merged ``U = U_l U_r``, ``V = V_l V_r``.

    The new model is built from ``model``'s config with ``overparam_dim=None`` in every
    APG ``block_config``; all other weights are copied by variable path. Predictions
    are identical (up to float rounding of the products).
    """
    new = type(model).from_config(_strip_overparam(copy.deepcopy(model.get_config())))
    new.build()
    old_vars = {v.path: v for v in model.weights}
    old_blocks = [lyr for lyr in model._flatten_layers(include_self=False) if isinstance(lyr, APGDense)]
    new_blocks = [lyr for lyr in new._flatten_layers(include_self=False) if isinstance(lyr, APGDense)]
    if len(old_blocks) != len(new_blocks):
        raise ValueError("model structure changed while merging APG factors")
    factor_paths = set()
    for old, blk in zip(old_blocks, new_blocks):
        u, v = old.merged_factors()
        blk.u.assign(u)
        blk.v.assign(v)
        factor_paths.update({blk.u.path, blk.v.path})
    for var in new.weights:
        if var.path in factor_paths:
            continue
        if var.path not in old_vars:
            raise ValueError(f"no weight {var.path!r} in the source model")
        var.assign(old_vars[var.path])
    return new
