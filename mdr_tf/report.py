"""Aggregating trial rows into paper-style tables (mean ± std over trials)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

from mdr_tf.metrics import mean_std


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def aggregate(rows: Sequence[dict[str, Any]], models: Sequence[str], num_domains: int,
              domain_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One summary dict per model (in ``models`` order) with mean/std of every metric."""
    out = []
    keys = ["test_auc", "test_logloss", "test_wauc", "test_mean_auc", "train_seconds", "best_epoch"]
    for k in range(num_domains):
        keys += [f"test_auc_d{k}", f"test_logloss_d{k}"]
    for m in models:
        mrows = [r for r in rows if r["model"] == m]
        if not mrows:
            continue
        s: dict[str, Any] = {"model": m, "trials": len(mrows)}
        for key in keys:
            s[key] = mean_std([float(r.get(key, float("nan"))) for r in mrows])
        for key in ("params_total", "params_per_domain", "params_generated_per_sample"):
            s[key] = mrows[0].get(key, 0)
        out.append(s)
    return out


def markdown_table(summary: Sequence[dict[str, Any]], num_domains: int,
                   domain_names: Sequence[str] | None = None) -> str:
    names = list(domain_names or [str(k) for k in range(num_domains)])
    head = (["model", "trials", "AUC", "LogLoss", "WAUC"] + [f"AUC d{k} ({names[k]})" for k in range(num_domains)]
            + [f"LogLoss d{k}" for k in range(num_domains)] + ["params", "per-domain params", "s/trial"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["model"], str(s["trials"]), _fmt(*s["test_auc"]), _fmt(*s["test_logloss"]), _fmt(*s["test_wauc"])]
        cells += [_fmt(*s[f"test_auc_d{k}"]) for k in range(num_domains)]
        cells += [_fmt(*s[f"test_logloss_d{k}"]) for k in range(num_domains)]
        cells += [f"{s['params_total']:,}", f"{s['params_per_domain']:,}", f"{s['train_seconds'][0]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(summary: Sequence[dict[str, Any]], num_domains: int) -> str:
    buf = io.StringIO()
    cols = ["test_auc", "test_logloss", "test_wauc", "test_mean_auc"]
    cols += [f"test_auc_d{k}" for k in range(num_domains)] + [f"test_logloss_d{k}" for k in range(num_domains)]
    w = csv.writer(buf)
    w.writerow(["model", "trials"] + [f"{c}_{x}" for c in cols for x in ("mean", "std")]
               + ["params_total", "params_per_domain", "params_generated_per_sample", "train_seconds_mean"])
    for s in summary:
        w.writerow([s["model"], s["trials"]] + [f"{v:.6f}" for c in cols for v in s[c]]
                   + [s["params_total"], s["params_per_domain"], s["params_generated_per_sample"],
                      f"{s['train_seconds'][0]:.2f}"])
    return buf.getvalue()
