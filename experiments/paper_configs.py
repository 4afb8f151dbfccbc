"""One config per paper table: dataset, models, the paper's training settings and its numbers.

Paper numbers are transcribed only from the papers' own texts. Where a table could not be
found the value is ``None`` and prints as "not found". HierRec's overall numbers come from
third-party notes on the paper (marked [3P]) and are labelled so; see docs/reproduce.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PAPER_SETUP = dict(batch_size=512, learning_rate=1e-3)  # MI-DPG §3.3: Adam 1e-3, batch 512, 10 trials


@dataclasses.dataclass(frozen=True)
class PaperConfig:
    """A reproducible paper table.

    Attributes:
      title: the table it reproduces.
      dataset: registered dataset name (data_prep/registry.py).
      models: registered model names, in the paper's row order.
      train: TrainConfig overrides (the paper's optimisation settings).
      model_kwargs: constructor arguments for every model (e.g. the 128-64-32 backbone).
      per_model_args: extra arguments per model.
      trials: the paper's number of trials.
      base_model: RelaImpr reference.
      paper: {"source", "note", "metric_columns", "rows": {model: {column: value | None}}}.
    """

    title: str
    dataset: str
    models: tuple[str, ...]
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    per_model_args: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    trials: int = 10
    base_model: str = "dnn"
    paper: dict[str, Any] | None = None


_MIDPG_MODELS = ("dnn", "ple", "star", "pepnet", "adasparse", "apg", "dpg", "midpg")


def _midpg_rows(col: int) -> dict[str, dict[str, float]]:
    # MI-DPG Table 1: AUC / LogLoss on Amazon, IAAC, Advertising.
    t = {"dnn": (0.6590, 0.5235, 0.6335, 0.0865), "ple": (0.6639, 0.5201, 0.6377, 0.0846),
         "star": (0.6623, 0.5205, 0.6424, 0.0829), "pepnet": (0.6671, 0.5167, 0.6435, 0.0825),
         "adasparse": (0.6695, 0.5142, 0.6462, 0.0810), "apg": (0.6697, 0.5138, 0.6457, 0.0817),
         "dpg": (0.6716, 0.5104, 0.6479, 0.0801), "midpg": (0.6745, 0.5062, 0.6504, 0.0794)}
    return {m: {"AUC": v[col], "LogLoss": v[col + 1]} for m, v in t.items()}


def _not_found(models: tuple[str, ...]) -> dict[str, dict[str, None]]:
    return {m: {"AUC": None, "LogLoss": None} for m in models}


_HAMUR_MODELS = ("dnn", "hamur_official", "wdl", "hamur_wdl", "dcn", "hamur_dcn", "shared_bottom", "mmoe", "ple",
                 "star")


def _hamur_setup(mlp: list[int], deep: list[int], k_mlp: int, k_wdl: int, k_dcn: int, hyper_mlp: list[int],
                 hyper_deep: list[int], cross_layers: int, adapter_positions: list[int]) -> dict[str, Any]:
    """``per_model_args`` of a HAMUR config (official example scripts, models.md §2.3): each
    backbone with and without HAMUR has the same MLP (Linear-BN-ReLU, W&D's deep part with
    dropout 0.2). Every adapter's domain norm uses batch statistics, as the official
    ``adapter.py`` / ``adapter_wd.py`` / ``adapter_dcn.py`` (``hamur_official``'s registry default)."""
    wdl = {"hidden_units": deep, "batch_norm": True, "dropout": 0.2}
    dcn = {"hidden_units": deep, "batch_norm": True, "cross_layers": cross_layers}
    return {"per_model_args": {
        "dnn": {"hidden_units": mlp, "batch_norm": True},
        "hamur_official": {"hidden_units": mlp, "k": k_mlp, "hyper_dims": hyper_mlp,
                           "adapter_positions": adapter_positions},
        "wdl": wdl, "hamur_wdl": {**wdl, "k": k_wdl, "hyper_dims": hyper_deep, "norm_mode": "batch"},
        "dcn": dcn, "hamur_dcn": {**dcn, "k": k_dcn, "hyper_dims": hyper_deep, "norm_mode": "batch"}}}
# MLoRA's official configs (models.md §4.3, from config/{Amazon_6,Movielens,Taobao_10}/*.json):
# MLP 256-128-64, dropout 0.5 on the shared branch (baselines: the same dropout), embeddings
# 8 (Taobao 128), lora_reduce α per backbone; the MLP's MLoRA is two-stage on Amazon_6 and
# Taobao_10 (mlora_freeze) and single-stage on MovieLens; the DeepCTR backbones with LoRA
# train in one stage.
_MLORA_MODELS = ("dnn", "mlora_2stage", "wdl", "mlora_wdl", "dcn", "mlora_dcn", "deepfm", "mlora_deepfm")
_MLORA_MODELS_ML = ("dnn", "mlora", "wdl", "mlora_wdl", "dcn", "mlora_dcn", "deepfm", "mlora_deepfm")


# The official DeepCTR variants (model_zoo/DeepCTR/{wdl,dcn,deepfm,mlora}.py, models.md §4.1):
# every kernel (deep layers, LoRA A, cross vectors, head) glorot_normal, and DeepCTR's
# l2_reg_embedding = 1e-5, a Keras l2(1e-5) = 1e-5·ΣE² on the embedding tables, which is
# embedding_l2 = 2e-5 in the package's 0.5·wd·ΣE² convention. The DeepCTR baselines (wdl,
# dcn, deepfm) are the same DeepCTR models without LoRA, so they get the same defaults.
DEEPCTR_DEFAULTS = {"kernel_initializer": "glorot_normal", "embedding_l2": 2e-5}
_DEEPCTR_MODELS = ("wdl", "dcn", "deepfm", "mlora_wdl", "mlora_dcn", "mlora_deepfm")


def _mlora_setup(embedding_dim: int, alphas: dict[str, float], dropout: float = 0.5) -> dict[str, Any]:
    """``model_kwargs`` and ``per_model_args`` of an MLoRA config: ``alphas`` maps each LoRA
    model to its ``lora_reduce``; the dropout sits on the shared branch inside the MLoRA
    blocks (so the backbone's own dropout is off for them). The DeepCTR backbones (with and
    without LoRA) get ``DEEPCTR_DEFAULTS`` and LoRA ``A`` glorot_normal."""
    per_model: dict[str, dict[str, Any]] = {m: dict(DEEPCTR_DEFAULTS) for m in _DEEPCTR_MODELS}
    for m, a in alphas.items():
        block = {"alpha": float(a), "dropout": dropout}
        if m in _DEEPCTR_MODELS:
            block["lora_initializer"] = "glorot_normal"
        per_model[m] = {**per_model.get(m, {}), "dropout": 0.0, "block_config": block}
    return {"model_kwargs": {"hidden_units": [256, 128, 64], "embedding_dim": embedding_dim, "dropout": dropout},
            "per_model_args": per_model}
_HIERREC_MODELS = ("dnn", "shared_bottom", "mmoe", "ple", "star", "adasparse", "hierrec")
_MLORA_TRAIN = dict(batch_size=1024, learning_rate=1e-3, monitor="mean_auc", patience=3, mode="single_domain")

CONFIGS: dict[str, PaperConfig] = {
    "midpg_table1_amazon": PaperConfig(
        "MI-DPG Table 1, Amazon (Electronics, 10 categories as scenarios)", "amazon_midpg10", _MIDPG_MODELS,
        train=PAPER_SETUP, model_kwargs={"hidden_units": [128, 64, 32]},
        paper={"source": "MI-DPG Table 1", "note": "mean of 10 trials; embedding size unknown (we use 16).",
               "metric_columns": ["AUC", "LogLoss"], "rows": _midpg_rows(0)}),
    "midpg_table1_iaac": PaperConfig(
        "MI-DPG Table 1, IAAC (IJCAI-18 CVR; scenarios = user_gender_id, unconfirmed)", "iaac", _MIDPG_MODELS,
        train=PAPER_SETUP, model_kwargs={"hidden_units": [128, 64, 32]},
        paper={"source": "MI-DPG Table 1", "note": "scenario definition unconfirmed (MMLRec's user_gender_id).",
               "metric_columns": ["AUC", "LogLoss"], "rows": _midpg_rows(2)}),
    "hamur_ml1m": PaperConfig(
        "HAMUR, MovieLens-1M (3 age domains, rating > 3)", "ml1m", _HAMUR_MODELS,
        train=PAPER_SETUP,
        **_hamur_setup(mlp=[256, 128], deep=[256, 128], k_mlp=35, k_wdl=45, k_dcn=30, hyper_mlp=[64],
                       hyper_deep=[128], cross_layers=2, adapter_positions=[-1]),
        paper={"source": "HAMUR Tables 2-4",
               "note": "not found in the texts we hold (the abstract only); transcribe from arXiv 2309.06217v2. "
               "Training here: Adam 1e-3, batch 512, "
               "patience 2; the official script: weight decay 1e-5, batch 40960, patience 10.",
               "metric_columns": ["AUC", "LogLoss"],
               "rows": _not_found(_HAMUR_MODELS)}),
    "hamur_aliccp": PaperConfig(
        "HAMUR, Ali-CCP (3 domains by field 301, CTR)", "aliccp", _HAMUR_MODELS, train=PAPER_SETUP,
        **_hamur_setup(mlp=[1024, 512, 512, 256, 256, 64, 64], deep=[512, 512, 256, 256, 64, 64], k_mlp=65,
                       k_wdl=25, k_dcn=25, hyper_mlp=[64], hyper_deep=[64], cross_layers=7,
                       adapter_positions=[-2, -1]),
        paper={"source": "HAMUR Tables 2-4", "note": "not found in the texts we hold. Training here: Adam "
               "1e-3, batch 512, patience 2; the official script: weight decay 1e-5, batch 100, patience 5.",
               "metric_columns": ["AUC", "LogLoss"], "rows": _not_found(_HAMUR_MODELS)}),
    "mlora_amazon6": PaperConfig(
        "MLoRA, Amazon_6 (WAUC)", "amazon_mlora6", _MLORA_MODELS, train=_MLORA_TRAIN,
        **_mlora_setup(8, {"mlora_2stage": 16, "mlora_wdl": 16, "mlora_dcn": 128, "mlora_deepfm": 16}),
        paper={"source": "MLoRA tables", "note": "not found in the texts we hold (WAUC is the headline). "
               "Official patience for wdl is 5 (3 here for every model).",
               "metric_columns": ["AUC", "LogLoss"], "rows": _not_found(_MLORA_MODELS)}),
    "mlora_ml1m_gender": PaperConfig(
        "MLoRA, MovieLens-1M by gender (rating == 5)", "ml1m_mlora_gender", _MLORA_MODELS_ML, train=_MLORA_TRAIN,
        **_mlora_setup(8, {"mlora": 16, "mlora_wdl": 16, "mlora_dcn": 16, "mlora_deepfm": 32}),
        paper={"source": "MLoRA tables", "note": "not found in the texts we hold.",
               "metric_columns": ["AUC", "LogLoss"], "rows": _not_found(_MLORA_MODELS_ML)}),
    "mlora_taobao10": PaperConfig(
        "MLoRA, Taobao_10 (10 themes)", "taobao_mlora10", _MLORA_MODELS, train=_MLORA_TRAIN,
        **_mlora_setup(128, {"mlora_2stage": 256, "mlora_wdl": 16, "mlora_dcn": 16, "mlora_deepfm": 256}),
        paper={"source": "MLoRA tables", "note": "not found in the texts we hold. Official: the dataset's "
               "128-d user/item vectors as frozen embeddings (not loaded here: the tables are learned).",
               "metric_columns": ["AUC", "LogLoss"], "rows": _not_found(_MLORA_MODELS)}),
    "hierrec_aliccp": PaperConfig(
        "HierRec Table 2, Ali-CCP (overall AUC / LogLoss, RelaImpr)", "aliccp", _HIERREC_MODELS,
        train=PAPER_SETUP,
        paper={"source": "HierRec Table 2 [3P: third-party paper notes, unconfirmed]",
               "note": "baseline rows not retrieved.", "metric_columns": ["AUC", "LogLoss"],
               "rows": {**_not_found(_HIERREC_MODELS), "hierrec": {"AUC": 0.6237, "LogLoss": 0.1614}}}),
    "hierrec_kuairand": PaperConfig(
        "HierRec Table 2, KuaiRand-1K", "kuairand_hierrec", _HIERREC_MODELS, train=PAPER_SETUP,
        paper={"source": "HierRec Table 2 [3P: third-party paper notes, unconfirmed]",
               "note": "baseline rows not retrieved.", "metric_columns": ["AUC", "LogLoss"],
               "rows": {**_not_found(_HIERREC_MODELS), "hierrec": {"AUC": 0.7847, "LogLoss": 0.5376}}}),
}
