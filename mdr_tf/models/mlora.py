"""MLoRA models and its two-stage training procedure (Yang et al., RecSys 2024).

MLoRA is ``BackboneModel(block="mlora")`` on any backbone (MLP, W&D, DCN, DeepFM): only
the deep part's dense layers get per-domain LoRA terms; linear / cross / FM parts stay
domain-agnostic, as in the official DeepCTR variants.

Training (procedure ``mlora_two_stage``, referenced by the registry entry ``mlora_2stage``
as ``"mdr_tf.models.mlora:mlora_two_stage"``; the official ``mlora_freeze``
pipeline of the Amazon_6 / Taobao_10 configs):

1. Stage 1: ``A, B, c`` frozen at zero contribution (``B = c = 0``, not trainable);
   the shared network (embeddings, kernels, head, ...) is trained with early stopping.
   The best-validation weights are restored.
2. Stage 2: ``A`` re-initialised (glorot), ``B = c = 0``; every other variable frozen
   (shared kernels / biases, embeddings incl. the domain embedding, the head, the
   linear / cross parts); only ``A, B, c`` train. Early stopping is seeded with the
   stage-1 best validation value, so stage-2 weights are kept only if they beat
   stage 1 (otherwise the stage-1 weights are restored).

Single-stage joint training (MLoRA's MovieLens config) is the standard procedure
(``mdr_tf.training.fit``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from mdr_tf import training
from mdr_tf.layers.mechanisms.mlora import MLoRADense
from mdr_tf.models.backbones import BackboneModel


def mlora_model(schema: dict[str, Any], backbone: str = "mlp", **kwargs) -> BackboneModel:
    """Builder: ``BackboneModel(schema, backbone=backbone, block="mlora", **kwargs)``."""
    kwargs.setdefault("block", "mlora")
    return BackboneModel(schema, backbone=backbone, **kwargs)


def mlora_layers(model) -> list[MLoRADense]:
    """All ``MLoRADense`` blocks of a model."""
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, MLoRADense)]


def lora_variables(model) -> list:
    """The LoRA parameters ``A, B, c`` of every MLoRA block of ``model``."""
    return [v for layer in mlora_layers(model) for v in layer.lora_variables]


def set_stage(model, stage: int) -> None:
    """Sets trainability for MLoRA's stage 1 (shared only) or stage 2 (LoRA only).

    Stage 1: every non-LoRA variable trainable, LoRA frozen. Stage 2: LoRA trainable,
    everything else frozen. Recompile the model afterwards.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    blocks = mlora_layers(model)
    if not blocks:
        raise ValueError("model has no MLoRA blocks (block='mlora')")
    lora_ids = {id(v) for v in lora_variables(model)}
    for v in model.weights:
        if id(v) not in lora_ids and getattr(v, "_mdr_stage_trainable", None) is None:
            v._mdr_stage_trainable = bool(v.trainable)  # remember the architecture's own flag
    for v in model.weights:
        if id(v) not in lora_ids:
            v.trainable = v._mdr_stage_trainable if stage == 1 else False
    for blk in blocks:
        blk.set_lora_trainable(stage == 2)


def restore_trainable(model) -> None:
    """Undoes ``set_stage``: every variable gets its architecture's trainability back."""
    for v in model.weights:
        flag = getattr(v, "_mdr_stage_trainable", None)
        if flag is not None:
            v.trainable = flag
    for blk in mlora_layers(model):
        blk.set_lora_trainable(True)


def mlora_two_stage(model, schema, cfg, log: Callable[[str], None] | None = None):
    """MLoRA's two-stage procedure (see module docstring). Returns an ``ExactEarlyStopping``
    whose ``history`` covers both stages (rows carry ``"stage"``) and whose
    ``best_epoch`` counts epochs over both stages."""
    # Stage 1: shared network, LoRA frozen at zero.
    set_stage(model, 1)
    for blk in mlora_layers(model):
        blk.lora_b.assign(blk.lora_b * 0.0)
        blk.lora_c.assign(blk.lora_c * 0.0)
    if log:
        log("MLoRA stage 1: shared network (LoRA frozen at zero)")
    stage1 = training.fit(model, schema, cfg, log=log)  # restores its best weights
    n1 = len(stage1.history)

    # Stage 2: LoRA only, early stopping seeded with the stage-1 best.
    for blk in mlora_layers(model):
        blk.reset_lora()
    set_stage(model, 2)
    if log:
        log(f"MLoRA stage 2: LoRA only (seeded with stage-1 best val_{cfg.monitor} {stage1.best:.4f})")
    stopper = training.ExactEarlyStopping(schema, cfg.monitor, cfg.patience, cfg.min_delta,
                                          cfg.eval_batch_size, log)
    stopper.best = stage1.best
    stopper.best_weights = model.get_weights()  # = the stage-1 function (B = c = 0)
    cfg2 = dataclasses.replace(cfg, seed=cfg.seed + 1, checkpoint_dir=(
        os.path.join(cfg.checkpoint_dir, "stage2") if cfg.checkpoint_dir else None))
    training.fit(model, schema, cfg2, log=log, stopper=stopper)  # compiles for the LoRA-only set
    restore_trainable(model)
    training.compile_model(model, cfg)  # the optimizer / train function of the full model

    improved = stopper.best_epoch > 0
    for row in stage1.history:
        row["stage"] = 1
    for row in stopper.history:
        row["stage"] = 2
        row["epoch"] += n1
    stopper.history = stage1.history + stopper.history
    stopper.best_epoch = stopper.best_epoch + n1 if improved else stage1.best_epoch
    stopper.stage1_best = stage1.best
    stopper.stage2_improved = improved
    return stopper
