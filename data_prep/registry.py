"""Dataset names accepted by ``experiments`` → their ``prepare`` function and presets.

Each entry: ``name -> (module:function, default keyword arguments)``. The function is
called as ``fn(output_dir, raw_path=..., **kwargs)`` and returns the written schema.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

DATASETS: dict[str, tuple[str, dict[str, Any]]] = {
    # --- MovieLens (issue 2) ---
    "ml100k": ("data_prep.movielens:prepare", {"version": "100k", "domain_scheme": "age3", "label_rule": "gt3"}),
    "ml1m": ("data_prep.movielens:prepare", {"version": "1m", "domain_scheme": "age3", "label_rule": "gt3"}),
    "ml1m_mlora_gender": ("data_prep.movielens:prepare", {
        "version": "1m", "domain_scheme": "gender", "label_rule": "eq5", "split_mode": "stratified",
        "split_ratios": (0.6, 0.2, 0.2), "seed": 123, "features": ("user_id", "item_id")}),
    "synthetic": ("data_prep.synthetic:generate", {}),
    # --- paper datasets (issue 5) ---
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
}


def get(name: str) -> tuple[Callable[..., dict], dict[str, Any]]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    ref, defaults = DATASETS[name]
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr), dict(defaults)
