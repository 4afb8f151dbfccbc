"""Exact evaluation metrics: overall and per-domain AUC / LogLoss, mean AUC, WAUC, RelaImpr.

Final numbers use the exact rank-based AUC (Mann-Whitney U with average ranks for
ties), not Keras' 200-threshold approximation.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def check_finite_scores(scores: np.ndarray, what: str = "scores") -> np.ndarray:
    """``scores`` as float64 [N]; raises ``ValueError`` if any is NaN or infinite.

    A model that diverged predicts NaN; ranking NaN would give an AUC near 0.5 that looks
    like a real result, so metrics refuse such scores.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(s)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} of {len(s)} non-finite values (first at index "
                         f"{int(np.flatnonzero(bad)[0])}); the model diverged or its input holds NaN/inf")
    return s


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC-AUC; ties in ``scores`` count one half. NaN when only one class is present.

    Raises:
      ValueError: a score is NaN or infinite.
    """
    y = np.asarray(labels).reshape(-1) > 0.5
    s = check_finite_scores(scores)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Average ranks (1-based) over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(s_sorted)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps] (sklearn's rule)."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(check_finite_scores(probs, "probabilities"), eps, 1 - eps)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def relaimpr(auc_model: float, auc_base: float) -> float:
    """HierRec's RelaImpr in percent: ((AUC_model − 0.5) / (AUC_base − 0.5) − 1) × 100."""
    return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0


def evaluate(labels: np.ndarray, probs: np.ndarray, domains: np.ndarray, num_domains: int) -> dict[str, float]:
    """All metrics of one prediction set.

    Returns keys ``auc``, ``logloss``, ``n``, ``mean_auc`` (unweighted mean of domain AUCs,
    MLoRA's early-stopping monitor), ``wauc`` (test-size-weighted mean of domain AUCs,
    MLoRA's headline) and per domain ``auc_d{k}``, ``logloss_d{k}``, ``n_d{k}``.
    """
    y = np.asarray(labels).reshape(-1)
    p = check_finite_scores(probs, "probabilities")
    d = np.asarray(domains).reshape(-1)
    out: dict[str, float] = {"auc": auc(y, p), "logloss": logloss(y, p), "n": int(len(y))}
    aucs, ns = [], []
    for k in range(num_domains):
        m = d == k
        a = auc(y[m], p[m]) if m.any() else float("nan")
        out[f"auc_d{k}"] = a
        out[f"logloss_d{k}"] = logloss(y[m], p[m]) if m.any() else float("nan")
        out[f"n_d{k}"] = int(m.sum())
        if not math.isnan(a):
            aucs.append(a)
            ns.append(int(m.sum()))
    out["mean_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    out["wauc"] = float(np.average(aucs, weights=ns)) if aucs else float("nan")
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), ignoring NaN."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
