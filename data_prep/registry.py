"""Dataset names accepted by ``experiments`` → their ``prepare`` function and presets.

Each entry: ``name -> (module:function, default keyword arguments)``. The function is
called as ``fn(output_dir, raw_path=..., **kwargs)`` and returns the written schema.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

DATASETS: dict[str, tuple[str, dict[str, Any]]] = {
    # --- MovieLens (the main job's ml100k, MLoRA's ML-1M splits) ---
    "ml100k": ("data_prep.movielens:prepare", {"version": "100k", "domain_scheme": "age3", "label_rule": "gt3"}),
    "ml1m": ("data_prep.movielens:prepare", {"version": "1m", "domain_scheme": "age3", "label_rule": "gt3"}),
    "ml1m_mlora_gender": ("data_prep.movielens:prepare", {
        "version": "1m", "domain_scheme": "gender", "label_rule": "eq5", "split_mode": "stratified",
        "split_ratios": (0.6, 0.2, 0.2), "seed": 123, "features": ("user_id", "item_id")}),
    "synthetic": ("data_prep.synthetic:generate", {}),
    # Ali-CCP field layout and (estimated) vocabularies, 85.3M rows by default; scale runs only (issue 18.4)
    "synthetic_aliccp": ("data_prep.synthetic_aliccp:generate", {}),
    # --- behaviour sequences: ML-100k with TEM4CTR click histories + unclick windows (docs/datasets/sequences.md) ---
    "ml100k_seq": ("data_prep.sequences:prepare_ml100k_seq", {"history_length": 30, "window": 5,
                                                              "split_mode": "temporal"}),
    "synthetic_conflict": ("data_prep.synthetic:generate_conflict", {"scenario": "conflict"}),
    "synthetic_many_small": ("data_prep.synthetic:generate_conflict", {"scenario": "many_small"}),
    # --- the papers' own datasets (docs/datasets/) ---
    "aliccp": ("data_prep.aliccp:prepare", {"task": "ctr"}),  # HAMUR / SWR (rechub recipe), domain = field 301
    "aliccp_cvr": ("data_prep.aliccp:prepare", {"task": "cvr"}),  # purchase on clicked rows (MI-DPG-style CVR)
    "aliccp_ctcvr": ("data_prep.aliccp:prepare", {"task": "ctcvr"}),  # purchase on all impressions (ESMM)
    "iaac": ("data_prep.ijcai18:prepare", {"round_id": "1", "domain_field": "user_gender_id"}),  # MMLRec scenarios
    "kuairand_hierrec": ("data_prep.kuairand:prepare", {"tabs": (0, 1, 2, 3, 6), "tab_ids": "raw"}),
    "kuairand_swr": ("data_prep.kuairand:prepare", {"tabs": (1, 0, 4, 2, 6), "tab_ids": "first_appearance"}),
    "ml1m_mlora_age7": ("data_prep.movielens:prepare", {
        "version": "1m", "domain_scheme": "age7", "label_rule": "eq5", "split_mode": "stratified",
        "split_ratios": (0.6, 0.2, 0.2), "seed": 123, "features": ("user_id", "item_id")}),
    "ml1m_mlora_occupation": ("data_prep.movielens:prepare", {
        "version": "1m", "domain_scheme": "occupation", "label_rule": "eq5", "split_mode": "stratified",
        "split_ratios": (0.6, 0.2, 0.2), "seed": 123, "features": ("user_id", "item_id")}),
    "amazon_mlora6": ("data_prep.amazon:prepare", {"recipe": "mlora6"}),
    "amazon_swr3": ("data_prep.amazon:prepare", {"recipe": "swr3"}),
    "amazon_midpg10": ("data_prep.amazon:prepare", {"recipe": "midpg10"}),
    "taobao_mlora10": ("data_prep.taobao:prepare", {"theme_num": 10}),
    # --- top-N multi-behaviour (experiments.topn, not experiments.run; docs/models/cigf.md) ---
    "ml100k_multibehavior": ("data_prep.multibehavior:prepare", {"version": "100k", "domain_scheme": "age3"}),
}


def get(name: str) -> tuple[Callable[..., dict], dict[str, Any]]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    ref, defaults = DATASETS[name]
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr), dict(defaults)
