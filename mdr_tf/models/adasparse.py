"""AdaSparse (Yang et al., CIKM 2022): an MLP whose input and hidden layers are pruned
by domain-aware neuron-level gates (hook "adasparse", ``mdr_tf.layers.mechanisms.gates``).

Assembly only: AdaSparse is ``BackboneModel(backbone="mlp", hook="adasparse",
hook_on_input=True)``; this builder maps the pruner's arguments into ``hook_config``.
"""

from __future__ import annotations

from typing import Any, Sequence

from mdr_tf.models.backbones import BackboneModel


def build_adasparse(
    schema: dict[str, Any],
    hidden_units: Sequence[int] = (128, 64, 32),
    form: str = "fusion",
    alpha_init: float = 1.0,
    delta_alpha: float = 1e-4,
    alpha_max: float | None = None,
    beta: float = 2.0,
    epsilon: float = 1e-2,
    sparsity_target: float = 0.0,
    sparsity_weight: float = 0.0,
    domain_key: str = "domain_side",
    straight_through: bool = False,
    **kwargs: Any,
) -> BackboneModel:
    """AdaSparse: ``h̃_0 = π_0 ⊙ e``, then per layer ``h̃_l = π_l ⊙ act(h̃_{l-1} W_l + b_l)``,
    ``π_l = Pruner_l([e_d ; h_l])``.

    Args:
      schema: ``Schema.to_config()`` dict.
      hidden_units: MLP widths (default 128-64-32 as the other baselines here;
        Scenario-Wise-Rec uses [32, 32] with BN and dropout 0.2 on MovieLens).
      form, alpha_init, delta_alpha, alpha_max, beta, epsilon, sparsity_target,
        sparsity_weight, domain_key, straight_through: ``AdaSparsePruner`` arguments.
      **kwargs: other ``BackboneModel`` arguments (batch_norm, dropout, ...).
    """
    hook_config = {"domain_key": domain_key, "form": form, "alpha_init": alpha_init, "delta_alpha": delta_alpha,
                   "alpha_max": alpha_max, "beta": beta, "epsilon": epsilon,
                   "sparsity_target": sparsity_target, "sparsity_weight": sparsity_weight,
                   "straight_through": straight_through}
    hook_config.update(kwargs.pop("hook_config", None) or {})
    kwargs.setdefault("name", "adasparse")
    return BackboneModel(schema, backbone=kwargs.pop("backbone", "mlp"), hidden_units=hidden_units,
                         hook="adasparse", hook_config=hook_config, hook_on_input=True, **kwargs)
