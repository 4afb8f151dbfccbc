"""Figures (matplotlib, PNG): per-domain AUC bars with error bars for any results table."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mdr_base.atomic import atomic_path  # noqa: E402


def per_domain_bars(summary: Sequence[dict[str, Any]], domain_names: Sequence[str], path: str,
                    title: str = "") -> str:
    """Grouped bars: per domain, one bar per model (mean test AUC, error bar = std over trials)."""
    models = [s["model"] for s in summary]
    nd = len(domain_names)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * nd * max(1, len(models)) * 0.35 + 3), 4))
    x = np.arange(nd)
    lo = 1.0
    for i, s in enumerate(summary):
        means = [s[f"test_auc_d{k}"][0] for k in range(nd)]
        stds = [s[f"test_auc_d{k}"][1] for k in range(nd)]
        lo = min(lo, np.nanmin(np.array(means) - np.array(stds)))
        ax.bar(x + (i - (len(models) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=s["model"])
    ax.set_xticks(x, [f"d{k}: {n}" for k, n in enumerate(domain_names)])
    ax.set_ylabel("test AUC (mean ± std over trials)")
    ax.set_ylim(max(0.0, lo - 0.02), None)
    ax.set_title(title)
    ax.legend(ncol=min(4, len(models)), fontsize=7)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png", makedirs=True) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path
