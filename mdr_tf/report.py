"""Aggregating trial rows into paper-style tables (mean ± std over trials)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Callable, Sequence

import numpy as np

from mdr_tf.metrics import mean_std, relaimpr


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


def add_significance(summary: list[dict[str, Any]], rows: Sequence[dict[str, Any]], base_model: str,
                     metric: str = "test_auc", alpha: float = 0.05,
                     family_of: Callable[[str], str | None] | None = None) -> None:
    """Adds ``relaimpr`` (vs ``base_model``) and a Welch's t-test against the best other model.

    For every model, the comparison model is the best (highest mean ``metric``) of the
    *other* models whose registry family is not "seed" (the baselines the papers compare
    against); a ``*`` marks a higher mean with two-sided Welch p < ``alpha``.
    ``family_of(name)`` gives a model's family (default: ``mdr_tf.registry``; the top-N
    models pass ``mdr_tf.topn``'s).
    """
    from scipy import stats

    from mdr_tf import registry

    if family_of is None:
        def family_of(name: str) -> str | None:
            spec = registry.REGISTRY.get(name)
            return spec.family if spec is not None else None
    values = {s["model"]: [float(r[metric]) for r in rows if r["model"] == s["model"]] for s in summary}
    means = {m: float(np.mean(v)) for m, v in values.items() if v}
    base_mean = means.get(base_model)
    for s in summary:
        m = s["model"]
        s["relaimpr"] = relaimpr(means[m], base_mean) if base_mean is not None else float("nan")
        others = [o for o in means if o != m and family_of(o) != "seed"]
        s["compared_to"], s["p_value"], s["significant"] = None, float("nan"), False
        if not others:
            continue
        best = max(others, key=lambda o: means[o])
        s["compared_to"] = best
        a, b = values[m], values[best]
        if len(a) >= 2 and len(b) >= 2:
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
            s["p_value"] = p
            s["significant"] = bool(means[m] > means[best] and p < alpha)


def paper_comparison(summary: Sequence[dict[str, Any]], paper: dict[str, Any]) -> str:
    """Our mean AUC / LogLoss beside the paper's numbers (``paper["rows"][model][column]``)."""
    cols = paper.get("metric_columns", ["AUC", "LogLoss"])
    ours = {s["model"]: s for s in summary}
    lines = [f"Paper ({paper.get('source', 'paper')}): " + paper.get("note", ""), "",
             "| model | " + " | ".join(f"paper {c}" for c in cols) + " | ours AUC | ours LogLoss |",
             "|" + "---|" * (len(cols) + 3)]
    for model, vals in paper["rows"].items():
        s = ours.get(model)
        mine = [f"{s['test_auc'][0]:.4f}", f"{s['test_logloss'][0]:.4f}"] if s else ["not run", "not run"]
        lines.append(f"| {model} | " + " | ".join("not found" if vals.get(c) is None else f"{vals[c]:.4f}"
                                                  for c in cols) + " | " + " | ".join(mine) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(summary: Sequence[dict[str, Any]], num_domains: int,
                   domain_names: Sequence[str] | None = None) -> str:
    names = list(domain_names or [str(k) for k in range(num_domains)])
    head = (["model", "trials", "AUC", "LogLoss", "WAUC", "RelaImpr %", "p (vs)"]
            + [f"AUC d{k} ({names[k]})" for k in range(num_domains)]
            + [f"LogLoss d{k}" for k in range(num_domains)] + ["params", "per-domain params", "s/trial"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        star = "*" if s.get("significant") else ""
        p = s.get("p_value", float("nan"))
        cells = [s["model"], str(s["trials"]), _fmt(*s["test_auc"]) + star, _fmt(*s["test_logloss"]),
                 _fmt(*s["test_wauc"]), f"{s.get('relaimpr', float('nan')):+.2f}",
                 "–" if math.isnan(p) else f"{p:.3f} ({s.get('compared_to')})"]
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
               + ["relaimpr", "p_value", "compared_to", "significant"]
               + ["params_total", "params_per_domain", "params_generated_per_sample", "train_seconds_mean"])
    for s in summary:
        w.writerow([s["model"], s["trials"]] + [f"{v:.6f}" for c in cols for v in s[c]]
                   + [f"{s.get('relaimpr', float('nan')):.4f}", f"{s.get('p_value', float('nan')):.6f}",
                      s.get("compared_to") or "", int(bool(s.get("significant")))]
                   + [s["params_total"], s["params_per_domain"], s["params_generated_per_sample"],
                      f"{s['train_seconds'][0]:.2f}"])
    return buf.getvalue()
