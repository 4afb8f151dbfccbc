"""Model names used by flags and configs → builders and training procedures.

A ``ModelSpec`` names its builder and its training procedure as importable
``"module:function"`` references, resolved only when used: this module imports no
model and no training code (``mdr_tf.trial`` and the experiment scripts, the runners,
import it; nothing it references imports it back). ``builder(schema_config, **kwargs)``
returns an (unbuilt) ``MultiDomainModel``; ``procedure(model, schema, cfg, log=...)``
trains it and returns an ``ExactEarlyStopping``.

Defaults have one home each: a model class's constructor defaults are its main-table
setting, and an entry's ``defaults`` hold only what differs from them (paper settings,
backbone variants). Entries of one mechanism on several backbones are generated from
(mechanism, backbone) pairs (``_on_backbones``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import typing
from typing import Any, Callable

from mdr_tf.schema import Schema

#: The standard procedure: ``mdr_tf.training.fit`` (compile, early stopping, best weights).
STANDARD_PROCEDURE = "mdr_tf.training:fit"
#: MLoRA's official two-stage procedure (shared network, then LoRA only).
MLORA_TWO_STAGE = "mdr_tf.models.mlora:mlora_two_stage"
#: Short names accepted for ``ModelSpec.procedure`` (the names used before it held references).
PROCEDURE_ALIASES = {"standard": STANDARD_PROCEDURE, "mlora_two_stage": MLORA_TWO_STAGE}


def load(ref: str) -> Callable:
    """The object a ``"module:attribute"`` reference names (imports the module)."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected a 'module:attribute' reference, got {ref!r}")
    return getattr(importlib.import_module(module), attr)


_load = load  # former private name


def builder_targets(builder: Callable, ref: str = "") -> list:
    """The callables whose parameters a builder accepts: itself, plus the model class it
    returns when it forwards ``**kwargs`` (its return annotation)."""
    targets = [builder]
    if not isinstance(builder, type):
        params = inspect.signature(builder).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            returned = typing.get_type_hints(builder).get("return")
            if not isinstance(returned, type):
                raise TypeError(f"builder {ref or builder} takes **kwargs but has no model class as its return "
                                "annotation; cannot tell which arguments it accepts")
            targets.append(returned)
    return targets


_FOREIGN = ("builtins", "keras", "tensorflow", "tf_keras")


def _parameters(target: Callable, own_only: bool = False) -> list[inspect.Parameter]:
    """Named parameters of a function, or of a class's ``__init__`` along its MRO (base
    first; with ``own_only`` without Keras' / Python's own base classes)."""
    out: list[inspect.Parameter] = []
    for klass in (reversed(target.__mro__) if isinstance(target, type) else [target]):
        if own_only and isinstance(klass, type) and klass.__module__.split(".")[0] in _FOREIGN:
            continue
        init = klass.__init__ if isinstance(klass, type) else klass
        try:
            out += [p for p in inspect.signature(init).parameters.values()
                    if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
        except (TypeError, ValueError):
            pass
    return out


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A named model: builder, default arguments, training procedure.

    Attributes:
      name: the flag / config name.
      builder: ``"module:callable"``; called as ``callable(schema_config, **kwargs)``.
      defaults: keyword arguments that differ from the builder's own defaults (the
        paper's setting where known, or a variant).
      procedure: ``"module:function"`` of the training procedure, called as
        ``function(model, schema, cfg, log=log)``; default ``STANDARD_PROCEDURE``. The
        short names of ``PROCEDURE_ALIASES`` are accepted.
      family: "backbone", "seed" (HAMUR / MLoRA / MI-DPG / HierRec) or "baseline".
      in_main_table: part of the main job's default model list.
      description: one line for ``--helpful``/docs.
      needs_sequences: the model reads behaviour sequences (a dataset like ``ml100k_seq``).
    """

    name: str
    builder: str
    defaults: dict = dataclasses.field(default_factory=dict)
    procedure: str = STANDARD_PROCEDURE
    family: str = "baseline"
    in_main_table: bool = True
    description: str = ""
    needs_sequences: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "procedure", PROCEDURE_ALIASES.get(self.procedure, self.procedure))
        for field in ("builder", "procedure"):
            if ":" not in getattr(self, field):
                raise ValueError(f"model {self.name!r}: {field} must be a 'module:function' reference, "
                                 f"got {getattr(self, field)!r}")

    def build(self, schema: Schema | dict, **kwargs: Any):
        cfg = schema.to_config() if isinstance(schema, Schema) else dict(schema)
        args = {**self.defaults, **kwargs}
        return load(self.builder)(cfg, **args)

    def train(self, model, schema: Schema, cfg, log=None):
        """Trains ``model`` with the spec's procedure; returns its ``ExactEarlyStopping``."""
        return load(self.procedure)(model, schema, cfg, log=log)

    def accepted_args(self) -> set[str]:
        """Names of the keyword arguments the builder accepts (through the class it returns)."""
        builder = load(self.builder)
        return {p.name for t in builder_targets(builder, self.builder) for p in _parameters(t)}

    def builder_defaults(self) -> dict[str, Any]:
        """The builder's signature defaults, resolved through the model class it returns
        (along its MRO without Keras' base classes; a subclass's default wins, the builder's own
        over the class's). What an entry does not set in ``defaults`` comes from here."""
        builder = load(self.builder)
        out: dict[str, Any] = {}
        for target in reversed(builder_targets(builder, self.builder)):
            for p in _parameters(target, own_only=True):
                if p.default is not inspect.Parameter.empty:
                    out[p.name] = p.default
        return out


def _on_backbones(mechanism: str, builder: str, defaults: dict[str, Any], backbones: dict[str, str],
                  description: str, **spec_kwargs: Any) -> list[ModelSpec]:
    """Entries ``<mechanism>_<backbone>`` for (mechanism, backbone) pairs: ``defaults`` plus
    ``backbone``; ``backbones`` maps the backbone name to its label in ``description``."""
    return [ModelSpec(f"{mechanism}_{b}", builder, {"backbone": b, **copy.deepcopy(defaults)},
                      description=description.format(backbone=label), **spec_kwargs)
            for b, label in backbones.items()]


_BB = "mdr_tf.models.backbones:BackboneModel"
_MLORA_BUILDER = "mdr_tf.models.mlora:mlora_model"
#: MLoRA's setting on every backbone (the same dict for each (mlora, backbone) pair).
_MLORA = {"hidden_units": [128, 64, 32], "block_config": {"alpha": 16}}

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
    # MLoRA (docs/models/mlora.md): alpha 16 → ranks [8, 4, 2] on 128-64-32; on other backbones
    # from the (mlora, backbone) pairs below (LoRA in the deep part only).
    ModelSpec("mlora", _MLORA_BUILDER, {"backbone": "mlp", **copy.deepcopy(_MLORA)}, family="seed",
              description="MLoRA: per-domain LoRA (x A_d) B_d + c_d on every MLP layer, joint training"),
    ModelSpec("mlora_2stage", _MLORA_BUILDER, {"backbone": "mlp", **copy.deepcopy(_MLORA)},
              procedure=MLORA_TWO_STAGE, family="seed", in_main_table=False,
              description="MLoRA, official two-stage: shared network, then LoRA only"),
    *_on_backbones("mlora", _MLORA_BUILDER, _MLORA, {"wdl": "Wide&Deep", "dcn": "DCN", "deepfm": "DeepFM"},
                   "MLoRA on {backbone} (LoRA in the deep part only)", family="seed", in_main_table=False),
    # HAMUR (docs/models/hamur.md). Main table: HamurMLP's class defaults, the package's common
    # setup (towers 128-64-32) with k=16 (ours); the official MovieLens setting (towers 256-128,
    # k=35, batch-stat DN) is "hamur_official" (~10x the DNN's FLOPs).
    ModelSpec("hamur", "mdr_tf.models.hamur:HamurMLP", {},
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
    # HierRec (docs/models/hierrec.md): every width is ours. Main table: HierRec's class defaults
    # (G 2, c 16, SOM 16→32; ~6k samples/s on 2 CPU cores); "hierrec_large" (G 4, c 64, SOM
    # 32→64, ~40x the DNN's FLOPs per sample) was the class default before.
    ModelSpec("hierrec_large", "mdr_tf.models.hierrec:build_hierrec",
              {"num_heads": 4, "condition_dim": 64, "som_units": [32, 64]}, family="seed", in_main_table=False,
              description="HierRec, wide: G 4, c 64, SOM 32→64"),
    ModelSpec("hierrec", "mdr_tf.models.hierrec:build_hierrec", {}, family="seed",
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
    # PEPNet as a backbone with an input hook (EPNet) and a layer hook (PPNet, the paper's
    # layout: the input of every layer incl. the output layer); equal to PEPNetModel's
    # default (tests/models/test_pepnet_adasparse_sarnet.py), and "backbone": "dcn" etc. work.
    ModelSpec("pepnet", "mdr_tf.models.backbones:BackboneModel",
              {"hidden_units": [128, 64, 32], "input_hook": "epnet", "input_hook_config": {"gate_ids": True},
               "hook": "ppnet", "hook_config": {"id_key": "gate_ids", "context_key": "all"}, "hook_on_input": True},
              description="PEPNet: EPNet embedding gate (domain side) + PPNet gates (ids) on every layer input, "
                          "MLP 128-64-32"),
    ModelSpec("ppnet", "mdr_tf.models.pepnet:PEPNetModel", {"hidden_units": [128, 64, 32], "use_epnet": False},
              in_main_table=False,
              description="PPNet only: id-conditioned GateNU on the input of every layer (L + 1 gates)"),
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
