"""Model names used by flags and configs → builders and training procedures.

Builders are referenced as ``"module:callable"`` strings and imported lazily, so a
registry entry costs nothing until used. ``callable(schema_config, **kwargs)`` returns
an (unbuilt) ``MultiDomainModel``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from mdr_tf.schema import Schema

PROCEDURES: dict[str, Callable] = {}


def register_procedure(name: str) -> Callable[[Callable], Callable]:
    """Registers a training procedure ``fn(model, schema, cfg, log) -> ExactEarlyStopping``."""

    def deco(fn: Callable) -> Callable:
        PROCEDURES[name] = fn
        return fn

    return deco


@register_procedure("standard")
def _standard(model, schema, cfg, log=None):
    from mdr_tf import training

    return training.fit(model, schema, cfg, log=log)


def _load(ref: str) -> Callable:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A named model: builder, default arguments, training procedure.

    Attributes:
      name: the flag / config name.
      builder: ``"module:callable"``; called as ``callable(schema_config, **kwargs)``.
      defaults: default keyword arguments (the paper's setting where known).
      procedure: training procedure name ("standard", or e.g. MLoRA's two-stage).
      family: "backbone", "seed" (HAMUR / MLoRA / MI-DPG / HierRec) or "baseline".
      in_main_table: part of the main job's default model list.
      description: one line for ``--helpful``/docs.
      needs_sequences: the model reads behaviour sequences (a dataset like ``ml100k_seq``).
    """

    name: str
    builder: str
    defaults: dict = dataclasses.field(default_factory=dict)
    procedure: str = "standard"
    family: str = "baseline"
    in_main_table: bool = True
    description: str = ""
    needs_sequences: bool = False

    def build(self, schema: Schema | dict, **kwargs: Any):
        cfg = schema.to_config() if isinstance(schema, Schema) else dict(schema)
        args = {**self.defaults, **kwargs}
        return _load(self.builder)(cfg, **args)

    def train(self, model, schema: Schema, cfg, log=None):
        if self.procedure not in PROCEDURES:
            # Procedures live next to their models; importing the builder registers them.
            _load(self.builder)
        if self.procedure not in PROCEDURES:
            raise ValueError(f"model {self.name!r}: unknown training procedure {self.procedure!r}")
        return PROCEDURES[self.procedure](model, schema, cfg, log=log)


_BB = "mdr_tf.models.backbones:BackboneModel"

_SPECS: list[ModelSpec] = [
    # --- backbones (issue 2); "dnn" is the MI-DPG setup: MLP 128-64-32 ---
    ModelSpec("dnn", _BB, {"backbone": "mlp"}, family="backbone", description="DNN: shared MLP 128-64-32"),
    ModelSpec("wdl", _BB, {"backbone": "wdl"}, family="backbone", in_main_table=False,
              description="Wide&Deep: linear + MLP"),
    ModelSpec("dcn", _BB, {"backbone": "dcn"}, family="backbone", in_main_table=False,
              description="DCN: cross network (2 layers) + MLP"),
    ModelSpec("deepfm", _BB, {"backbone": "deepfm"}, family="backbone", in_main_table=False,
              description="DeepFM: linear + FM + MLP"),
    # --- seed models (issue 3) ---
    # MLoRA (docs/models/mlora.md): alpha 16 → ranks [8, 4, 2] on 128-64-32.
    ModelSpec("mlora", "mdr_tf.models.mlora:mlora_model",
              {"backbone": "mlp", "hidden_units": [128, 64, 32], "block_config": {"alpha": 16}}, family="seed",
              description="MLoRA: per-domain LoRA (x A_d) B_d + c_d on every MLP layer, joint training"),
    ModelSpec("mlora_2stage", "mdr_tf.models.mlora:mlora_model",
              {"backbone": "mlp", "hidden_units": [128, 64, 32], "block_config": {"alpha": 16}},
              procedure="mlora_two_stage", family="seed", in_main_table=False,
              description="MLoRA, official two-stage: shared network, then LoRA only"),
    ModelSpec("mlora_wdl", "mdr_tf.models.mlora:mlora_model",
              {"backbone": "wdl", "hidden_units": [128, 64, 32], "block_config": {"alpha": 16}}, family="seed",
              in_main_table=False, description="MLoRA on Wide&Deep (LoRA in the deep part only)"),
    ModelSpec("mlora_dcn", "mdr_tf.models.mlora:mlora_model",
              {"backbone": "dcn", "hidden_units": [128, 64, 32], "block_config": {"alpha": 16}}, family="seed",
              in_main_table=False, description="MLoRA on DCN (LoRA in the deep part only)"),
    ModelSpec("mlora_deepfm", "mdr_tf.models.mlora:mlora_model",
              {"backbone": "deepfm", "hidden_units": [128, 64, 32], "block_config": {"alpha": 16}}, family="seed",
              in_main_table=False, description="MLoRA on DeepFM (LoRA in the deep part only)"),
    # HAMUR (docs/models/hamur.md): official MovieLens settings.
    # Main table: the package's common setup (towers 128-64-32) with k=16 (ours); the
    # official MovieLens setting (towers 256-128, k=35) is "hamur_official" (~10x the DNN's FLOPs).
    ModelSpec("hamur", "mdr_tf.models.hamur:HamurMLP", {"hidden_units": [128, 64, 32], "k": 16, "hyper_dims": [64]},
              family="seed", description="HAMUR: per-domain towers 128-64-32 + instance hyper adapter (k=16)"),
    ModelSpec("hamur_official", "mdr_tf.models.hamur:HamurMLP",
              {"hidden_units": [256, 128], "k": 35, "hyper_dims": [64], "norm_mode": "batch"}, family="seed",
              in_main_table=False,
              description="HAMUR, official MovieLens setting: towers 256-128, k=35, hyper-net [64], batch-stat DN"),
    ModelSpec("hamur_wdl", "mdr_tf.models.hamur:hamur_backbone",
              {"backbone": "wdl", "hidden_units": [256, 128], "batch_norm": True, "dropout": 0.2, "k": 45,
               "hyper_dims": [128]}, family="seed", in_main_table=False,
              description="HAMUR on Wide&Deep: shared backbone, adapter after the deep part (k=45)"),
    ModelSpec("hamur_dcn", "mdr_tf.models.hamur:hamur_backbone",
              {"backbone": "dcn", "hidden_units": [256, 128], "batch_norm": True, "k": 30, "hyper_dims": [128]},
              family="seed", in_main_table=False,
              description="HAMUR on DCN: shared backbone, adapter after the deep part (k=30)"),
    # MI-DPG / DPG (docs/models/midpg.md): MLP 128-64-32, DWM-R a=b=8 k=4 (ours), λ1 0.1 (ours).
    ModelSpec("midpg", "mdr_tf.models.midpg:build_midpg", {"variant": "r", "mir_weight": 0.1}, family="seed",
              description="MI-DPG: W ⊙ Repeat(σ(P(e_s,h) Q)) on every layer (DWM-R) + JSD MI regulariser"),
    ModelSpec("dpg", "mdr_tf.models.midpg:build_midpg", {"variant": "r", "mir_weight": 0.0}, family="seed",
              description="DPG: MI-DPG without the MI regulariser (λ1 = 0)"),
    ModelSpec("midpg_rc", "mdr_tf.models.midpg:build_midpg", {"variant": "rc", "mir_weight": 0.1}, family="seed",
              in_main_table=False, description="MI-DPG, DWM-RC: P and Q both generated"),
    ModelSpec("midpg_c", "mdr_tf.models.midpg:build_midpg", {"variant": "c", "mir_weight": 0.1}, family="seed",
              in_main_table=False, description="MI-DPG, DWM-C: Q generated, P global"),
    ModelSpec("midpg_non", "mdr_tf.models.midpg:build_midpg", {"variant": "non", "mir_weight": 0.1},
              family="seed", in_main_table=False, description="MI-DPG, DWM-Non: full n×m matrix generated"),
    # HierRec (docs/models/hierrec.md): every width is ours (d 16, G 4, SOM 32→64, c 64).
    # Main table: G 2, c 16, SOM 16→32 (ours; ~6k samples/s on 2 CPU cores). The class defaults
    # (G 4, c 64, SOM 32→64) are "hierrec_large" (~40x the DNN's FLOPs per sample).
    ModelSpec("hierrec_large", "mdr_tf.models.hierrec:build_hierrec", {}, family="seed", in_main_table=False,
              description="HierRec with the class defaults: G 4, c 64, SOM 32→64"),
    ModelSpec("hierrec", "mdr_tf.models.hierrec:build_hierrec",
              {"num_heads": 2, "condition_dim": 16, "som_units": [16, 32]}, family="seed",
              description="HierRec: explicit per-scenario SOM → G implicit per-instance SOMs (field attention)"),
    # --- baselines (issue 4) ---
    ModelSpec("shared_bottom", "mdr_tf.models.multitower:SharedBottom", {},
              description="Shared-Bottom: bottom MLP 128-64, per-domain towers 32"),
    ModelSpec("mmoe", "mdr_tf.models.multitower:MMoE", {},
              description="MMoE: 4 experts [64], per-domain softmax gates, per-domain towers 32"),
    ModelSpec("ple", "mdr_tf.models.multitower:PLE", {},
              description="PLE: 1 CGC level, 2 specific experts/domain + 1 shared [64], per-domain towers 32"),
    ModelSpec("star", "mdr_tf.models.star:STAR", {},
              description="STAR: partitioned norm + star-topology FCN 128-64-32 (W*W_d, b+b_d) + aux net [32]"),
    ModelSpec("m2m", "mdr_tf.models.m2m:M2M", {},
              description="M2M: field transformer, 4 experts, meta attention + meta tower from the scenario embedding"),
    ModelSpec("pepnet", "mdr_tf.models.pepnet:PEPNetModel", {"hidden_units": [128, 64, 32]},
              description="PEPNet: EPNet embedding gate (domain side) + PPNet gates (ids) on every layer input, MLP 128-64-32"),
    ModelSpec("ppnet", "mdr_tf.models.pepnet:PEPNetModel", {"hidden_units": [128, 64, 32], "use_epnet": False},
              in_main_table=False, description="PPNet only: id-conditioned GateNU on the input of every layer (L + 1 gates)"),
    ModelSpec("epnet", "mdr_tf.models.pepnet:PEPNetModel", {"hidden_units": [128, 64, 32], "use_ppnet": False},
              in_main_table=False, description="EPNet only: domain-side GateNU on the embedding + MLP"),
    ModelSpec("adasparse", "mdr_tf.models.adasparse:build_adasparse", {"hidden_units": [128, 64, 32]},
              description="AdaSparse: domain-aware neuron pruners (fusion form) on input + hidden layers"),
    ModelSpec("apg", _BB, {"backbone": "mlp", "hidden_units": [128, 64, 32], "block": "apg",
                           "block_config": {"condition": "group"}},
              description="APG: W = U S(z) V per sample, group-wise condition, MLP 128-64-32"),
    ModelSpec("sarnet", "mdr_tf.models.sarnet:SARNetModel", {},
              description="SAR-Net: per-domain feature transform + shared/specific experts + gate"),
    # --- behaviour sequences (issue 15; docs/models/tem4ctr.md): need a dataset with sequences (ml100k_seq) ---
    ModelSpec("din", "mdr_tf.models.tem4ctr:SequenceCTR", {"mode": "din"}, in_main_table=False,
              needs_sequences=True,
              description="DIN: target attention (80-40) over the click sequence + head BN-200-80 PReLU"),
    ModelSpec("tem4ctr", "mdr_tf.models.tem4ctr:SequenceCTR", {"mode": "tem4ctr"}, family="seed",
              in_main_table=False,
              needs_sequences=True,
              description="TEM4CTR: time-aligned unclick windows → local attention → projection on each click; "
                          "two target attentions + head BN-200-80 PReLU"),
    ModelSpec("star_tem4ctr", "mdr_tf.models.star:STAR", {"interest": {"mode": "tem4ctr"}}, in_main_table=False,
              needs_sequences=True,
              description="STAR with the TEM4CTR interest [v1, v2] appended to its input"),
]

REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def get(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def names(main_table_only: bool = False) -> list[str]:
    return [s.name for s in _SPECS if s.in_main_table or not main_table_only]
