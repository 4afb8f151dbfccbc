"""Multiplicative gates: PEPNet's GateNU / EPNet / PPNet and AdaSparse's neuron pruner.

- ``GateNU`` (PEPNet, Chang et al., KDD 2023): ``δ = γ · σ(W2 ReLU(W1 x + b1) + b2)``,
  γ = 2, so δ ∈ (0, 2) and δ ≈ 1 (identity) when the logits are near 0.
- ``EPNet`` (embedding personalisation): ``δ_dom = GateNU(e_s ⊕ ⊘(e))``, ``e' = δ_dom ⊙ e``
  where ``e_s`` is the domain-side embedding and ``⊘`` is stop-gradient.
- ``PPNetGate`` (hook "ppnet", parameter personalisation): per layer input
  ``h' = GateNU_l(e_id ⊕ ⊘(e')) ⊙ h``.
- ``AdaSparsePruner`` (hook "adasparse", Yang et al., CIKM 2022): domain-aware
  neuron-level pruner ``π_l = Pruner([e_d ; h_l])``, ``h̃_l = π_l ⊙ h_l``.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from mdr_tf.layers.blocks import DomainHook, register_hook


@keras.saving.register_keras_serializable(package="mdr_tf")
class GateNU(keras.layers.Layer):
    """PEPNet's gate neural unit: ``δ = γ · sigmoid(W2 · ReLU(W1 x + b1) + b2)``.

    Chang et al., "PEPNet: Parameter and Embedding Personalized Network for Infusing
    with Personalized Prior Information", KDD 2023. With γ = 2 the gate lies
    in (0, 2): it can amplify (>1) as well as suppress (<1) a unit.

    Args:
      units: output width (number of gated units).
      hidden_units: width of the hidden ReLU layer; None = ``units`` (paper default).
      gamma: scaling factor γ (paper: 2).
      kernel_initializer: initializer of W1 and W2.
    """

    def __init__(self, units: int, hidden_units: int | None = None, gamma: float = 2.0,
                 kernel_initializer: Any = "glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.hidden_units = int(hidden_units) if hidden_units else self.units
        self.gamma = float(gamma)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        # input_shape: one shape, or a list of shapes when called on a list of parts.
        shapes = list(input_shape) if isinstance(input_shape, (list, tuple)) and input_shape \
            and isinstance(input_shape[0], (list, tuple)) else [input_shape]
        self.part_dims = [int(sh[-1]) for sh in shapes]
        n = sum(self.part_dims)
        self.w1 = self.add_weight(name="w1", shape=(n, self.hidden_units), initializer=self.kernel_initializer)
        self.b1 = self.add_weight(name="b1", shape=(self.hidden_units,), initializer="zeros")
        self.w2 = self.add_weight(name="w2", shape=(self.hidden_units, self.units),
                                  initializer=self.kernel_initializer)
        self.b2 = self.add_weight(name="b2", shape=(self.units,), initializer="zeros")
        self.built = True

    def call(self, x):
        """``x``: [B, n], or a list of parts whose concatenation is the gate input.

        With a list, ``x W1 = Σ_i x_i W1[rows_i]``: no concatenation, and a part under
        ``stop_gradient`` costs no input-gradient matmul in the backward pass.
        """
        if isinstance(x, (list, tuple)):
            pre, start = None, 0
            for part, width in zip(x, self.part_dims):
                term = ops.matmul(part, self.w1[start:start + width])
                pre = term if pre is None else pre + term
                start += width
        else:
            pre = ops.matmul(x, self.w1)
        hidden = ops.relu(pre + self.b1)
        return self.gamma * ops.sigmoid(ops.matmul(hidden, self.w2) + self.b2)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"units": self.units, "hidden_units": self.hidden_units, "gamma": self.gamma,
                       "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)})
        return config


@keras.saving.register_keras_serializable(package="mdr_tf")
class EPNet(keras.layers.Layer):
    """PEPNet's embedding personalisation: ``e' = GateNU(e_s ⊕ stop_grad(e)) ⊙ e``.

    Called on ``[e, e_s]`` (general embedding ``ctx["all"]`` and domain-side embedding
    ``ctx["domain_side"]``). The general embedding enters the gate through a
    stop-gradient (as in the paper), so it is trained only through the main path; ``e_s``
    is trained through the gate.

    Args:
      num_fields: number of categorical fields F in ``e`` (each ``embedding_dim`` wide).
      embedding_dim: d.
      num_dense: number of dense scalars appended to ``e`` (each its own "field").
      granularity: "dimension" (default: one gate per element of ``e``, the paper's
        ``δ ∈ R^{|E|}``) or "field" (one gate per field, shared by its d dimensions).
      hidden_units: GateNU hidden width; None = gate output width.
      gamma: GateNU γ.
    """

    def __init__(self, num_fields: int, embedding_dim: int, num_dense: int = 0, granularity: str = "dimension",
                 hidden_units: int | None = None, gamma: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        if granularity not in ("dimension", "field"):
            raise ValueError(f"granularity must be 'dimension' or 'field', got {granularity!r}")
        self.num_fields = int(num_fields)
        self.embedding_dim = int(embedding_dim)
        self.num_dense = int(num_dense)
        self.granularity = granularity
        self.hidden_units = None if hidden_units is None else int(hidden_units)
        self.gamma = float(gamma)
        self.width = self.num_fields * self.embedding_dim + self.num_dense
        self.gate_units = self.width if granularity == "dimension" else self.num_fields + self.num_dense
        # field granularity: element j of e reads gate column index[j].
        self.index = np.concatenate([np.repeat(np.arange(self.num_fields), self.embedding_dim),
                                     self.num_fields + np.arange(self.num_dense)]).astype("int32")

    def build(self, input_shape):
        e_shape, side_shape = input_shape
        if int(e_shape[-1]) != self.width:
            raise ValueError(f"EPNet expects e of width {self.width}, got {e_shape}")
        self.gate = GateNU(self.gate_units, hidden_units=self.hidden_units, gamma=self.gamma, name="gate",
                           dtype=self.dtype_policy)
        self.gate.build([(None, int(side_shape[-1])), (None, self.width)])
        self.built = True

    def gate_values(self, inputs):
        """δ_dom expanded to the width of ``e`` ([B, F*d + n_dense])."""
        e, side = inputs
        delta = self.gate([side, ops.stop_gradient(e)])
        if self.granularity == "field":
            delta = ops.take(delta, ops.convert_to_tensor(self.index), axis=1)
        return delta

    def call(self, inputs):
        return self.gate_values(inputs) * inputs[0]

    def generated_parameters_per_sample(self) -> int:
        """Per-sample gate values δ_dom (one per gated unit)."""
        return self.gate_units

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_fields": self.num_fields, "embedding_dim": self.embedding_dim,
                       "num_dense": self.num_dense, "granularity": self.granularity,
                       "hidden_units": self.hidden_units, "gamma": self.gamma})
        return config


@register_hook("ppnet")
class PPNetGate(DomainHook):
    """PPNet gate: ``h' = GateNU(ctx[id_key] ⊕ stop_grad(ctx[context_key])) ⊙ h``.

    PEPNet (KDD 2023): the personalised prior (user / item / author id embeddings)
    is concatenated with the stop-gradient EPNet output ``O_ep`` and fed to one GateNU
    per DNN layer; the paper's equation ``H_{l+1} = f((δ_l ⊙ H_l) W_l + b_l)`` gates the
    input of every layer including the output layer (MMLRec's ``PPNetBlock`` too: L + 1
    gates). As a ``DomainMLP`` hook that is ``hook_on_input=True`` plus a hook after
    every hidden layer (``PEPNetModel(ppnet_gate_position="paper")``); FuxiCTR gates each
    hidden output only ("after").

    Args:
      num_domains, context_dims: see ``DomainHook``.
      id_key: ctx view of the personalised prior (default "ids": user/item ids).
      context_key: ctx view concatenated under stop-gradient (default "all", which
        PEPNet replaces by the EPNet output); None uses the ids only.
      hidden_units: GateNU hidden width; None = the gated layer's width (paper).
      gamma: GateNU γ (2).
    """

    def __init__(self, num_domains: int = 1, context_dims: dict[str, int] | None = None, id_key: str = "ids",
                 context_key: str | None = "all", hidden_units: int | None = None, gamma: float = 2.0, **kwargs):
        super().__init__(num_domains, context_dims, **kwargs)
        self.id_key = id_key
        self.context_key = context_key
        self.hidden_units = None if hidden_units is None else int(hidden_units)
        self.gamma = float(gamma)

    def build(self, input_shape):
        units = int(input_shape[-1])
        shapes = [(None, int(self.context_dims[self.id_key]))]
        if self.context_key:
            shapes.append((None, int(self.context_dims[self.context_key])))
        self.gate = GateNU(units, hidden_units=self.hidden_units, gamma=self.gamma, name="gate",
                           dtype=self.dtype_policy)
        self.gate.build(shapes)
        self.built = True

    def gate_input(self, ctx: dict) -> list:
        """Parts of the gate input: ``[ids, stop_grad(context)]``."""
        parts = [ctx[self.id_key]]
        if self.context_key:
            parts.append(ops.stop_gradient(ctx[self.context_key]))
        return parts

    def call(self, h, ctx: dict | None = None, training: bool | None = None):
        return self.gate(self.gate_input(ctx)) * h

    def generated_parameters_per_sample(self) -> int:
        """Per-sample gate values δ_pp (one per hidden unit)."""
        return self.gate.units if self.built else 0

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"id_key": self.id_key, "context_key": self.context_key,
                       "hidden_units": self.hidden_units, "gamma": self.gamma})
        return config


ADASPARSE_FORMS = ("fusion", "binarization", "scaling")


@register_hook("adasparse")
class AdaSparsePruner(DomainHook):
    """AdaSparse domain-aware neuron-level pruner: ``h̃ = π ⊙ h``, ``π = f(v)``, ``v = [e_d ; h] W (+ b)``.

    Yang et al., "AdaSparse: Learning Adaptively Sparse Structures for Multi-Domain
    Click-Through Rate Prediction", CIKM 2022. Forms of ``f``:

    - "fusion" (default): ``π = β σ(α v)``, then ``π ← π · 1[π ≥ ε]`` (units below ε are
      **zeroed**; Scenario-Wise-Rec multiplies by ``sign(π − ε)`` instead, which flips
      them to negative values — a bug not reproduced here);
    - "binarization": the step ``1[v > 0]`` approached by a sharpening sigmoid: in
      training ``π = σ(α v)`` with α growing over the steps (the paper's schedule: the
      soft gate tends to the step as α → ∞), at inference the step ``π = 1[v > 0]``.
      ``straight_through=True`` (ours) instead uses the step in the training forward pass
      too with the gradient of ``σ(α v)`` (straight-through estimator); there α only
      scales the gradient.
    - "scaling": ``π = β σ(v)``.

    α is a non-trainable variable (saved with the model) that grows by ``delta_alpha``
    on every **training** call only (optionally capped at ``alpha_max``); inference
    calls leave it unchanged.

    Optional sparsity regulariser (default off, ``sparsity_weight=0``; the paper's idea,
    our differentiable surrogate): ``λ (r̃ − r*)²`` added with ``add_loss`` in training,
    where ``r̃ = mean σ(t − a v)`` is a soft zero ratio (``a = α``, ``t = logit(ε/β)`` for
    fusion; ``t = 0`` for binarization; ``a = 1`` for scaling) and ``r*`` is
    ``sparsity_target``.

    Args:
      num_domains, context_dims: see ``DomainHook``.
      domain_key: ctx view used as the domain embedding ``e_d`` (default "domain_side").
      form: "fusion", "binarization" or "scaling".
      alpha_init: initial α (reference: 1.0).
      delta_alpha: α increment per training call (reference: 1e-4).
      alpha_max: optional cap on α (None: no cap).
      beta: β (2).
      epsilon: ε threshold of the fusion form (reference: 1e-2).
      use_bias: bias in the pruner's linear map (reference: no bias).
      sparsity_target: target zero ratio r* of the regulariser.
      sparsity_weight: λ; 0 disables the regulariser.
      straight_through: binarization only, see above (default False: soft σ(α v) in
        training).
    """

    def __init__(self, num_domains: int = 1, context_dims: dict[str, int] | None = None,
                 domain_key: str = "domain_side", form: str = "fusion", alpha_init: float = 1.0,
                 delta_alpha: float = 1e-4, alpha_max: float | None = None, beta: float = 2.0,
                 epsilon: float = 1e-2, use_bias: bool = False, sparsity_target: float = 0.0,
                 sparsity_weight: float = 0.0, straight_through: bool = False, **kwargs):
        super().__init__(num_domains, context_dims, **kwargs)
        if form not in ADASPARSE_FORMS:
            raise ValueError(f"form must be one of {ADASPARSE_FORMS}, got {form!r}")
        self.domain_key = domain_key
        self.form = form
        self.alpha_init = float(alpha_init)
        self.delta_alpha = float(delta_alpha)
        self.alpha_max = None if alpha_max is None else float(alpha_max)
        self.beta = float(beta)
        self.epsilon = float(epsilon)
        self.use_bias = bool(use_bias)
        self.sparsity_target = float(sparsity_target)
        self.sparsity_weight = float(sparsity_weight)
        self.straight_through = bool(straight_through)

    def build(self, input_shape):
        units = int(input_shape[-1])
        width = int(self.context_dims[self.domain_key]) + units
        self.kernel = self.add_weight(name="kernel", shape=(width, units), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(units,), initializer="zeros") if self.use_bias else None
        self.alpha = self.add_weight(name="alpha", shape=(), initializer=keras.initializers.Constant(self.alpha_init),
                                     trainable=False)
        self.built = True

    def generated_parameters_per_sample(self) -> int:
        """Per-sample neuron weights π (one per unit)."""
        return int(self.kernel.shape[1]) if self.built else 0

    def logits(self, h, ctx: dict):
        """``v = [e_d ; h] W (+ b)``, computed as ``e_d W_d + h W_h``: no concatenated copy of h."""
        e_d = ctx[self.domain_key]
        d = int(self.context_dims[self.domain_key])
        v = ops.matmul(e_d, self.kernel[:d]) + ops.matmul(h, self.kernel[d:])
        return v + self.bias if self.bias is not None else v

    def gate_values(self, h, ctx: dict, training: bool | None = None):
        """The neuron weights π ([B, units]) at the current α (training or inference form)."""
        v = self.logits(h, ctx)
        alpha = ops.cast(self.alpha, v.dtype)
        if self.form == "scaling":
            return self.beta * ops.sigmoid(v)
        soft = ops.sigmoid(alpha * v)
        if self.form == "binarization":
            hard = ops.cast(v > 0, v.dtype)
            if training is not True:
                return hard
            if self.straight_through:
                return soft + ops.stop_gradient(hard - soft)
            return soft  # sharpening towards the step as α grows
        pi = self.beta * soft
        return pi * ops.cast(pi >= self.epsilon, v.dtype)

    def soft_zero_ratio(self, h, ctx: dict):
        """Differentiable surrogate of the fraction of pruned units (see class doc)."""
        v = self.logits(h, ctx)
        if self.form == "binarization":
            return ops.mean(ops.sigmoid(-ops.cast(self.alpha, v.dtype) * v))
        t = math.log(self.epsilon / (self.beta - self.epsilon)) if self.beta > self.epsilon else 0.0
        a = ops.cast(self.alpha, v.dtype) if self.form == "fusion" else 1.0
        return ops.mean(ops.sigmoid(t - a * v))

    def call(self, h, ctx: dict | None = None, training: bool | None = None):
        out = self.gate_values(h, ctx, training=training) * h
        if training is True:
            if self.sparsity_weight > 0:
                r = self.soft_zero_ratio(h, ctx)
                self.add_loss(self.sparsity_weight * ops.square(ops.cast(r, "float32") - self.sparsity_target))
            new = self.alpha + self.delta_alpha
            if self.alpha_max is not None:
                new = ops.minimum(new, self.alpha_max)
            self.alpha.assign(new)
        return out

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"domain_key": self.domain_key, "form": self.form, "alpha_init": self.alpha_init,
                       "delta_alpha": self.delta_alpha, "alpha_max": self.alpha_max, "beta": self.beta,
                       "epsilon": self.epsilon, "use_bias": self.use_bias,
                       "sparsity_target": self.sparsity_target, "sparsity_weight": self.sparsity_weight,
                       "straight_through": self.straight_through})
        return config

