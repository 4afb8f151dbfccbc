"""MLoRA: a per-domain low-rank adapter on every dense layer.

Yang et al., "MLoRA: Multi-Domain Low-Rank Adaptive Network for CTR Prediction",
RecSys 2024 (arXiv 2408.08913); layer ``MLoRAFCN`` of the official TF code.

For a dense layer with input ``x ∈ R^{B×n}``, output width ``u`` and domain ``d = s_b``::

    y = Drop_p(x W + b) + (x A_d) B_d + c_d            (pre-activation)

with ``A ∈ R^{D×n×r}`` (glorot), ``B ∈ R^{D×r×u}`` (**zeros**, so at step 0 MLoRA is
the shared layer), ``c ∈ R^{D×u}`` (zeros), no ``α/r`` output scaling, and the rank
``r = max(⌊u/α⌋, 1)`` where ``u`` is the layer's **output** width (the official code:
``lora_r < 1`` → ``max(int(units / lora_reduce), 1)``; its configs give ranks
[16, 8, 4] for [256, 128, 64] with α = 16).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mdr_tf.layers.blocks import DenseBlock, register_block
from mdr_tf.params import mark_per_domain

ROUTINGS = ("matmul", "gather")


@register_block("mlora")
class MLoRADense(DenseBlock):
    """Dense layer plus a per-domain LoRA term (MLoRA, Yang et al., RecSys 2024).

    ``y = Drop_p(x W + b) + (x A_d) B_d + c_d`` (pre-activation; the activation is the
    backbone's). ``W, b`` are the shared ``kernel``/``bias`` of ``DenseBlock``.

    Routing of mixed-domain batches (``routing``):

    - ``"matmul"`` (default, faster on CPU in our measurement, see docs/models/mlora.md):
      in training, ``z = x [A_0 | … | A_{D-1}]`` as one ``[B, n] × [n, D·r]`` matmul, the
      columns of other domains zeroed with a one-hot mask, then ``z [B_0; …; B_{D-1}]``
      as one ``[B, D·r] × [D·r, u]`` matmul. Exact: the masked terms contribute 0. At
      inference, ``Σ_d (m_d ⊙ x A_d) B_d`` with one ``[B, n] × [n, r]`` matmul per domain
      (``m_d`` the one-hot column): the same value up to float rounding, computed with
      shapes that do not depend on D, so a domain's predictions stay bit-identical when
      a domain is added (``mdr_tf.onboarding.add_domain``). This costs inference time
      (measured in docs/models/mlora.md); ``per_domain_inference=False`` uses the
      training path at inference too.
    - ``"gather"``: per-sample gather ``A_{s_b}`` ([B, n, r]) and ``B_{s_b}`` ([B, r, u])
      and two batched contractions.

    ``single_domain_batches=True`` (the official code's routing, where every training batch
    holds one domain): in **training** the domain of row 0 is used for the whole batch with
    plain matmuls. It must only be used with
    single-domain training batches (``TrainConfig(mode="single_domain")``); a mixed
    training batch makes the output NaN (a check that also works under XLA). At
    inference the mixed routing above is used, so evaluation and serving of mixed
    batches stay correct.

    Args:
      units, num_domains, context_dims, use_bias, kernel_initializer,
        kernel_regularizer: see ``DenseBlock``.
      alpha: MLoRA's ``lora_reduce``; rank ``r = max(units // alpha, 1)``.
      rank: explicit rank (overrides ``alpha``).
      dropout: dropout rate on the shared branch only, before the addition (official
        configs: 0.5).
      lora_initializer: initializer of ``A`` (official: glorot; ``B``, ``c`` are zeros).
      lora_trainable: whether ``A, B, c`` start trainable (``False`` = MLoRA's stage 1,
        LoRA frozen at zero); see ``set_lora_trainable``.
      routing: "matmul" or "gather" (mixed batches).
      single_domain_batches: use the single-domain path (domain of row 0) in training.
      per_domain_inference: ``"matmul"`` routing at inference with one matmul per
        domain (default; D-invariant predictions, needed by ``add_domain``) or, if
        False, the fused all-domain matmuls of training.
    """

    def __init__(
        self,
        units: int,
        num_domains: int = 1,
        context_dims: dict[str, int] | None = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        kernel_regularizer: Any = None,
        alpha: float = 16.0,
        rank: int | None = None,
        dropout: float = 0.0,
        lora_initializer: Any = "glorot_uniform",
        lora_trainable: bool = True,
        routing: str = "matmul",
        single_domain_batches: bool = False,
        per_domain_inference: bool = True,
        **kwargs,
    ):
        super().__init__(units, num_domains, context_dims, use_bias, kernel_initializer, kernel_regularizer,
                         **kwargs)
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if rank is not None and int(rank) < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.alpha = float(alpha)
        self.rank = None if rank is None else int(rank)
        self.r = self.rank if self.rank is not None else max(int(self.units // self.alpha), 1)
        self.dropout = float(dropout)
        self.lora_initializer = keras.initializers.get(lora_initializer)
        self.lora_trainable = bool(lora_trainable)
        self.routing = routing
        self.single_domain_batches = bool(single_domain_batches)
        self.per_domain_inference = bool(per_domain_inference)
        self.drop = (keras.layers.Dropout(self.dropout, name="shared_dropout", dtype=self.dtype_policy)
                     if self.dropout > 0 else None)

    def build(self, input_shape):
        super().build(input_shape)
        d, n, r, u = self.num_domains, self.input_dim, self.r, self.units
        self.lora_a = self.add_weight(name="lora_A", shape=(d, n, r), initializer=self.lora_initializer,
                                      trainable=self.lora_trainable)
        self.lora_b = self.add_weight(name="lora_B", shape=(d, r, u), initializer="zeros",
                                      trainable=self.lora_trainable)
        self.lora_c = self.add_weight(name="lora_c", shape=(d, u), initializer="zeros",
                                      trainable=self.lora_trainable)
        for v in self.lora_variables:
            mark_per_domain(v)
        if self.drop is not None:
            self.drop.build(tuple(input_shape[:-1]) + (u,))
        self.built = True

    @property
    def lora_variables(self) -> list:
        """``[A, B, c]``: the per-domain LoRA parameters."""
        return [self.lora_a, self.lora_b, self.lora_c]

    def set_lora_trainable(self, trainable: bool) -> None:
        """Freezes / unfreezes ``A, B, c`` (recompile the model afterwards)."""
        self.lora_trainable = bool(trainable)
        for v in self.lora_variables:
            v.trainable = self.lora_trainable

    def reset_lora(self) -> None:
        """Re-initialises ``A`` (``lora_initializer``), ``B = 0``, ``c = 0`` (MLoRA stage-2 start)."""
        self.lora_a.assign(self.lora_initializer(self.lora_a.shape, dtype=self.lora_a.dtype))
        self.lora_b.assign(ops.zeros(self.lora_b.shape, self.lora_b.dtype))
        self.lora_c.assign(ops.zeros(self.lora_c.shape, self.lora_c.dtype))

    def lora_delta(self, x, domain, training: bool | None = None):
        """The LoRA term ``(x A_d) B_d + c_d`` with mixed-batch routing ([B, u])."""
        d, n, r, u = self.num_domains, self.input_dim, self.r, self.units
        a = ops.cast(self.lora_a, x.dtype)
        b = ops.cast(self.lora_b, x.dtype)
        onehot = ops.one_hot(domain, d, dtype=x.dtype)  # [B, D]
        c = ops.matmul(onehot, ops.cast(self.lora_c, x.dtype))  # [B, u]
        if self.routing == "gather":
            a_b = ops.take(a, domain, axis=0)  # [B, n, r]
            b_b = ops.take(b, domain, axis=0)  # [B, r, u]
            z = ops.einsum("bn,bnr->br", x, a_b)
            return ops.einsum("br,bru->bu", z, b_b) + c
        # Per-domain shapes: an old domain's output is unchanged when D grows.
        if not training and self.per_domain_inference:
            out = c
            for k in range(d):  # other domains' terms are exact zeros
                out = out + ops.matmul(ops.matmul(x, a[k]) * onehot[:, k:k + 1], b[k])
            return out
        a_all = ops.reshape(ops.transpose(a, (1, 0, 2)), (n, d * r))  # [n, D·r], block d = A_d
        z = ops.matmul(x, a_all)  # [B, D·r]
        z = z * ops.repeat(onehot, r, axis=1)  # keep only the sample's own domain block
        return ops.matmul(z, ops.reshape(b, (d * r, u))) + c

    def single_domain_delta(self, x, domain):
        """Single-domain path: ``(x A_{d0}) B_{d0} + c_{d0}`` with ``d0 = domain[0]``; NaN if the batch
        mixes domains."""
        d0 = domain[0]
        a = ops.cast(ops.take(self.lora_a, d0, axis=0), x.dtype)
        b = ops.cast(ops.take(self.lora_b, d0, axis=0), x.dtype)
        c = ops.cast(ops.take(self.lora_c, d0, axis=0), x.dtype)
        out = ops.matmul(ops.matmul(x, a), b) + c
        mixed = ops.logical_not(ops.all(ops.equal(domain, d0)))
        return out + ops.where(mixed, float("nan"), 0.0)

    def call(self, x, ctx: dict | None = None, training: bool | None = None):
        if ctx is None or "domain" not in ctx:
            raise ValueError("MLoRADense needs ctx['domain'] (int32 [B] domain ids)")
        domain = ops.cast(ops.reshape(ctx["domain"], (-1,)), "int32")
        shared = self.shared_output(x)
        if self.drop is not None:
            shared = self.drop(shared, training=training)
        if self.single_domain_batches and training:
            return shared + self.single_domain_delta(x, domain)
        return shared + self.lora_delta(x, domain, training=training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "alpha": self.alpha,
            "rank": self.rank,
            "dropout": self.dropout,
            "lora_initializer": keras.initializers.serialize(self.lora_initializer),
            "lora_trainable": self.lora_trainable,
            "routing": self.routing,
            "single_domain_batches": self.single_domain_batches,
            "per_domain_inference": self.per_domain_inference,
        })
        return config
