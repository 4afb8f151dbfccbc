"""MI-DPG figures: Fig. 2 low-rank sweep, t-SNE of the weighting matrices, scenario similarity.

Cheng et al., CIKM 2023, §3.5 (Figure 2). Three PNGs (matplotlib, Agg) in ``--output_dir``:

- ``fig2_lowrank.png`` (Fig. 2 a/c/e): test AUC (mean ± std over trials) against the
  low-rank size (a, b, k) for the four DPG variants (DWM non / rc / r / c, λ1 = 0, as
  in the paper's analysis) and APG whose rank is chosen, at every size, so that its
  trainable parameter count is the closest to the DPG variant ``--apg_match``'s. The
  right panel shows the parameter counts. DWM-non generates the full n×m matrix, so it
  does not depend on (a, b, k): it is trained once per trial and drawn as a flat band.
- ``tsne_dwm.png`` (Fig. 2 b/d): t-SNE of the generated matrices ``σ(PQ)`` (the small
  a×b matrix; for "non" the n×m one) of one DWM layer for a per-scenario sample of test
  instances, MI-DPG (λ1 > 0) beside DPG (λ1 = 0), with silhouette scores.
- ``similarity_heatmap.png`` (Fig. 2 f): cosine similarity and Pearson correlation
  between the scenarios' mean matrices, with and without MIR.

Every sweep trial is appended to ``sweep.jsonl`` (``sweep-shard-i-of-n.jsonl`` with
``--shard=i/n``), keyed by its resolved settings; a rerun skips finished trials and
ignores a line cut by a kill. The matrices of the two t-SNE models are cached in
``matrices-*.npz``, so a rerun only redraws. ``--aggregate_only`` trains nothing.

Examples:
  python -m experiments.midpg_figures                       # ML-100k (age3), 2 trials
  python -m experiments.midpg_figures --epochs=3 --sizes=4x4x2,8x8x4,16x16x8
  python -m experiments.midpg_figures --shard=0/2 &  python -m experiments.midpg_figures --shard=1/2
  python -m experiments.midpg_figures --aggregate_only      # redraw from the logs
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from data_prep.common import run_cli  # noqa: E402
from experiments.common import (TrialLog, atomic_write, parse_options, parse_shard,  # noqa: E402
                                prepare_dataset, trial_key)
from experiments.run import define_data_flags, define_training_flags, train_kwargs_from_flags  # noqa: E402
from experiments.tsne import (  # noqa: E402,F401  (conditional_probabilities, exact_tsne: re-exported)
    between_within, conditional_probabilities, embed_2d, exact_tsne, silhouette)
from mdr_base.atomic import atomic_path, savez_atomic  # noqa: E402

DWM_VARIANTS = ("non", "rc", "r", "c")
DEFAULT_SIZES = ("2x2x1", "4x4x2", "8x8x4", "16x16x8")
Size = tuple[int, int, int]


def define_flags() -> None:
    define_data_flags()
    define_training_flags(epochs=3)
    flags.adopt_module_key_flags(sys.modules[define_data_flags.__module__])  # list them in this script's --help
    flags.DEFINE_string("output_dir", "results/midpg_figures", "Results folder.")
    flags.DEFINE_list("parts", ["sweep", "tsne"], "What to run: sweep (Fig. 2 a/c/e), tsne (t-SNE + heatmap).")
    # sweep
    flags.DEFINE_list("variants", list(DWM_VARIANTS), "DWM variants of the sweep (non, rc, r, c).")
    flags.DEFINE_list("sizes", list(DEFAULT_SIZES), "Low-rank sizes a x b x k (a | n, b | m; else tiles are cropped).")
    flags.DEFINE_boolean("apg", True, "Add APG at matched parameter counts.")
    flags.DEFINE_enum("apg_match", "r", ["rc", "r", "c"], "DPG variant whose parameter count APG matches.")
    flags.DEFINE_float("sweep_mir_weight", 0.0, "λ1 of the sweep models (paper: DPG, i.e. 0).")
    flags.DEFINE_integer("trials", 2, "Trials per sweep point (the paper: 10).", lower_bound=1)
    flags.DEFINE_integer("seed_base", 0, "Trial t uses seed seed_base + t.")
    flags.DEFINE_enum("metric", "auc", ["auc", "mean_auc", "wauc"], "Test metric plotted in Fig. 2.")
    flags.DEFINE_string("shard", "0/1", "i/n: run only sweep points p with p % n == i (t-SNE runs on shard 0).")
    flags.DEFINE_boolean("aggregate_only", False, "Train nothing; redraw from sweep*.jsonl and matrices-*.npz.")
    # training
    flags.DEFINE_list("hidden_units", ["128", "64", "32"], "Backbone widths (paper: 128,64,32).")
    # t-SNE / heatmap
    flags.DEFINE_enum("tsne_variant", "r", ["non", "rc", "r", "c"], "DWM variant of the t-SNE models.")
    flags.DEFINE_string("tsne_size", "8x8x4", "a x b x k of the t-SNE models.")
    flags.DEFINE_float("mir_weight", 0.1, "λ1 of the 'with MIR' model (ours; the paper's value was lost).")
    flags.DEFINE_integer("tsne_layer", 0, "DWM layer whose matrices are shown (0 = first).")
    flags.DEFINE_integer("tsne_per_scenario", 300, "Test instances sampled per scenario.")
    flags.DEFINE_float("perplexity", 30.0, "t-SNE perplexity.")
    flags.DEFINE_integer("tsne_iters", 1000, "t-SNE gradient steps.")
    flags.DEFINE_integer("tsne_seed", 0, "Seed of the training (trial seed), the sample and t-SNE.")


# ------------------------------------------------------------------- sweep points
@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One point of Fig. 2: a DPG variant (or "apg") at a low-rank size (None for "non")."""

    variant: str
    size: Size | None

    @property
    def label(self) -> str:
        return self.variant if self.size is None else f"{self.variant}@{size_text(self.size)}"


def size_text(size: Size) -> str:
    return "x".join(str(v) for v in size)


def parse_sizes(items: Sequence[str]) -> list[Size]:
    """``["4x4x2", "8,8,4"]`` → ``[(4, 4, 2), (8, 8, 4)]``."""
    out = []
    for item in items:
        parts = str(item).replace(",", "x").lower().split("x")
        if len(parts) != 3 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f"low-rank size {item!r}: expected a x b x k with positive integers, e.g. 8x8x4")
        out.append(tuple(int(p) for p in parts))
    return out


def sweep_points(variants: Sequence[str], sizes: Sequence[Size], apg: bool = True) -> list[SweepPoint]:
    """The sweep's points: "non" once (size-independent), rc/r/c and APG at every size."""
    bad = [v for v in variants if v not in DWM_VARIANTS]
    if bad:
        raise ValueError(f"unknown DWM variants {bad}; expected {DWM_VARIANTS}")
    points = [SweepPoint("non", None)] if "non" in variants else []
    for size in sizes:
        points += [SweepPoint(v, tuple(size)) for v in variants if v != "non"]
        if apg:
            points.append(SweepPoint("apg", tuple(size)))
    return points


# ------------------------------------------------------------- parameter matching
_COUNT_CACHE: dict[str, int] = {}


def count_parameters(model_name: str, schema, kwargs: dict[str, Any]) -> int:
    """Trainable parameters of a registered model built with ``kwargs`` (memoised)."""
    import keras

    from mdr_tf import registry
    from mdr_tf.params import parameter_report

    key = json.dumps([model_name, schema.raw.get("fingerprint") if schema.raw else None,
                      schema.to_config(), kwargs], sort_keys=True, default=str)
    if key not in _COUNT_CACHE:
        keras.backend.clear_session()
        model = registry.get(model_name).build(schema, **kwargs)
        model.build()
        _COUNT_CACHE[key] = parameter_report(model)["trainable"]
        del model
    return _COUNT_CACHE[key]


def apg_kwargs(rank: int, common: dict[str, Any]) -> dict[str, Any]:
    """APG arguments: the registry's block config with ``rank`` set, plus ``common``."""
    from mdr_tf import registry

    block = {**registry.get("apg").defaults.get("block_config", {}), "rank": int(rank)}
    return {**common, "block_config": block}


def match_apg_rank(schema, target: int, common: dict[str, Any], max_rank: int = 1024) -> tuple[int, int]:
    """The APG rank (one k for all layers) whose trainable parameter count is closest to ``target``.

    APG's count grows strictly with the rank (``U``, ``V`` and the k² core), so a binary
    search finds the first rank at or above ``target``; that rank or the one below wins.

    Returns:
      ``(rank, count)``.
    """
    def count(r: int) -> int:
        return count_parameters("apg", schema, apg_kwargs(r, common))

    lo, hi = 1, max_rank
    if count(hi) < target:
        return hi, count(hi)
    while lo < hi:  # first r with count(r) >= target
        mid = (lo + hi) // 2
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = lo
    if lo > 1 and abs(count(lo - 1) - target) <= abs(count(lo) - target):
        best = lo - 1
    return best, count(best)


def point_model(point: SweepPoint, schema, common: dict[str, Any], mir_weight: float,
                apg_match: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Registry name, model kwargs and extra record fields of a sweep point."""
    if point.variant == "non":
        return "dpg", {**common, "variant": "non", "mir_weight": mir_weight}, {}
    a, b, k = point.size
    if point.variant != "apg":
        return "dpg", {**common, "variant": point.variant, "a": a, "b": b, "k": k, "mir_weight": mir_weight}, {}
    ref = {**common, "variant": apg_match, "a": a, "b": b, "k": k, "mir_weight": mir_weight}
    target = count_parameters("dpg", schema, ref)
    rank, got = match_apg_rank(schema, target, common)
    extra = {"apg_rank": rank, "apg_matched_to": f"dpg-{apg_match}@{size_text(point.size)}",
             "apg_target_params": target, "apg_params": got,
             "apg_param_rel_diff": (got - target) / target}
    return "apg", apg_kwargs(rank, common), extra


class SweepLog(TrialLog):
    """``TrialLog`` over ``sweep*.jsonl`` (one file per shard; every shard's file is read)."""

    def __init__(self, path: str):  # noqa: D107
        super().__init__(path, pattern="sweep*.jsonl")


def run_sweep(schema, data_fp: str, points: Sequence[SweepPoint], *, trials: int, seed_base: int,
              train_kwargs: dict[str, Any], common: dict[str, Any], mir_weight: float, apg_match: str,
              output_dir: str, shard: tuple[int, int] = (0, 1), aggregate_only: bool = False,
              dataset: str = "", log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Trains the sweep (skipping logged trials); returns this sweep's rows from all shard files."""
    from data_prep.common import fingerprint

    from mdr_tf import training

    shard_i, shard_n = shard
    path = os.path.join(output_dir, "sweep.jsonl" if shard_n == 1 else f"sweep-shard-{shard_i}-of-{shard_n}.jsonl")
    sweep_log = SweepLog(path)
    plan = []
    for pi, point in enumerate(points):
        name, kwargs, extra = point_model(point, schema, common, mir_weight, apg_match)
        if point.variant == "apg":
            log(f"APG @ {size_text(point.size)}: rank {extra['apg_rank']} → {extra['apg_params']:,} params vs "
                f"{extra['apg_target_params']:,} of {extra['apg_matched_to']} "
                f"({100 * extra['apg_param_rel_diff']:+.2f}%)")
        for t in range(trials):
            cfg = training.TrainConfig(seed=seed_base + t, **train_kwargs)
            tkey = trial_key(name, cfg, kwargs, data_fp)
            # The point is part of the key: two points may resolve to the same settings
            # (APG matched to the same rank at two sizes) and both must appear.
            key = fingerprint({"trial": tkey, "point": point.label})
            plan.append(dict(index=pi, point=point, name=name, kwargs=kwargs, extra=extra, trial=t, cfg=cfg,
                             key=key, trial_key=tkey))
    keys = {p["key"] for p in plan}
    todo = [p for p in plan
            if not aggregate_only and p["index"] % shard_n == shard_i and not sweep_log.done(p["key"])]
    log(f"sweep: {len(points)} points × {trials} trials = {len(plan)} trainings; "
        f"{len(todo)} to run here (shard {shard_i}/{shard_n}), log → {path}")
    t_start = time.time()
    for i, p in enumerate(todo, 1):
        point, t, cfg = p["point"], p["trial"], p["cfg"]
        same = next((r for r in sweep_log.rows if r.get("trial_key") == p["trial_key"]), None)
        t0 = time.time()
        if same is not None:  # identical settings already trained for another point: reuse
            row = {k: v for k, v in same.items() if k.startswith(("test_", "valid_", "params_"))
                   or k in ("model", "seed", "best_epoch", "epochs_run", "train_seconds", "history")}
            row["reused_from"] = same["label"]
            log(f"[{i}/{len(todo)}] {point.label} trial {t}: same settings as {same['label']}, result reused")
        else:
            log(f"[{i}/{len(todo)}] {point.label} trial {t} (seed {cfg.seed}) ...")
            row = training.run_trial(p["name"], schema, cfg, p["kwargs"], log=log)
        row.update({"key": p["key"], "trial_key": p["trial_key"], "variant": point.variant,
                    "size": list(point.size) if point.size else None, "label": point.label, "trial": t,
                    "dataset": dataset, "model_kwargs": p["kwargs"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    **p["extra"]})
        sweep_log.append(row)
        eta = (time.time() - t_start) / i * (len(todo) - i)
        log(f"[{i}/{len(todo)}] {point.label} trial {t}: test AUC {row['test_auc']:.4f}, "
            f"{row['params_trainable']:,} params ({time.time() - t0:.1f}s; ETA {eta / 60:.1f} min)")
    return [r for r in sweep_log.rows if r.get("key") in keys]


def summarize_sweep(rows: Sequence[dict[str, Any]], metric: str = "auc") -> list[dict[str, Any]]:
    """Per point: trials, mean / std of ``test_<metric>``, parameter count (and APG's rank)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["variant"], tuple(r["size"]) if r["size"] else None), []).append(r)
    out = []
    for (variant, size), rs in groups.items():
        vals = np.array([r[f"test_{metric}"] for r in rs], dtype=float)
        item = {"variant": variant, "size": size, "trials": len(rs), "mean": float(vals.mean()),
                "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                "params": int(rs[0]["params_trainable"]),
                "generated_per_sample": int(rs[0].get("params_generated_per_sample", 0))}
        for k in ("apg_rank", "apg_target_params", "apg_param_rel_diff"):
            if k in rs[0]:
                item[k] = rs[0][k]
        out.append(item)
    order = {v: i for i, v in enumerate(DWM_VARIANTS + ("apg",))}
    out.sort(key=lambda s: (s["size"] or (0, 0, 0), order.get(s["variant"], 9)))
    return out


def sweep_markdown(summary: Sequence[dict[str, Any]], metric: str = "auc") -> str:
    """Markdown table of ``summarize_sweep``'s output."""
    lines = [f"| variant | (a, b, k) | trials | test {metric} (mean ± std) | trainable params | "
             "generated / sample | APG rank (params vs target) |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        apg = (f"{s['apg_rank']} ({s['params']:,} vs {s['apg_target_params']:,}, "
               f"{100 * s['apg_param_rel_diff']:+.2f}%)") if "apg_rank" in s else ""
        size = "(" + ", ".join(map(str, s["size"])) + ")" if s["size"] else "— (size-independent)"
        name = "APG" if s["variant"] == "apg" else f"DPG-{s['variant']}"
        lines.append(f"| {name} | {size} | {s['trials']} | {s['mean']:.4f} ± {s['std']:.4f} | {s['params']:,} | "
                     f"{s['generated_per_sample']:,} | {apg} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- figures
def _save(fig, path: str) -> str:
    try:
        with atomic_path(path, suffix=".png", makedirs=True) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path


_STYLE = {"non": ("DPG-non", "tab:gray", "s"), "rc": ("DPG-rc", "tab:blue", "o"), "r": ("DPG-r", "tab:red", "^"),
          "c": ("DPG-c", "tab:green", "v"), "apg": ("APG (matched params)", "black", "D")}


def plot_fig2(summary: Sequence[dict[str, Any]], path: str, metric: str = "auc", title: str = "") -> str:
    """Fig. 2 (a/c/e): AUC vs low-rank size per variant and APG; right panel: parameter counts."""
    sizes = sorted({s["size"] for s in summary if s["size"]})
    x = np.arange(len(sizes))
    pos = {sz: i for i, sz in enumerate(sizes)}
    fig, (ax, axp) = plt.subplots(1, 2, figsize=(12, 5.5), gridspec_kw={"width_ratios": [3, 2]},
                                  constrained_layout=True)
    offsets = {"rc": -0.09, "r": -0.03, "c": 0.03, "apg": 0.09}
    for variant in DWM_VARIANTS + ("apg",):
        pts = [s for s in summary if s["variant"] == variant]
        if not pts:
            continue
        name, color, marker = _STYLE[variant]
        if variant == "non":
            s = pts[0]
            span = [x[0] - 0.3, x[-1] + 0.3] if len(x) else [-0.3, 0.3]
            ax.plot(span, [s["mean"]] * 2, "--", color=color, label=f"{name} (size-independent)")
            ax.fill_between(span, s["mean"] - s["std"], s["mean"] + s["std"], color=color, alpha=0.15)
            axp.plot(span, [s["params"]] * 2, "--", color=color, label=name)
            continue
        pts.sort(key=lambda s: pos[s["size"]])
        xs = np.array([pos[s["size"]] for s in pts]) + offsets[variant]
        ax.errorbar(xs, [s["mean"] for s in pts], yerr=[s["std"] for s in pts], color=color, marker=marker,
                    capsize=3, label=name)
        axp.plot(xs - offsets[variant], [s["params"] for s in pts], color=color, marker=marker, label=name)
    ranks = {s["size"]: s.get("apg_rank") for s in summary if s["variant"] == "apg"}
    labels = [f"({a},{b},{k})" + (f"\nAPG k={ranks[(a, b, k)]}" if ranks.get((a, b, k)) else "")
              for a, b, k in sizes]
    for axis in (ax, axp):
        axis.set_xticks(x, labels)
        axis.set_xlabel("low-rank size (a, b, k)")
        axis.grid(alpha=0.3)
    ax.set_ylabel(f"test {metric.upper() if metric == 'auc' else metric} (mean ± std over trials)")
    ax.set_title(title or "AUC vs low-rank size")
    axp.set_ylabel("trainable parameters (log scale)")
    axp.set_yscale("log")
    axp.set_title("parameter counts")
    for axis in (ax, axp):
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    return _save(fig, path)


# ---------------------------------------------------------- weighting matrices
def _dwm_blocks(model) -> list:
    from mdr_tf.layers.mechanisms.dwm import DWMDense

    deep = getattr(model, "deep", None)
    blocks = list(getattr(deep, "blocks", []))
    if not blocks or not all(isinstance(b, DWMDense) for b in blocks):
        raise ValueError("weighting_matrices needs a BackboneModel whose deep blocks are all DWM layers "
                         "(built by mdr_tf.models.midpg.build_midpg)")
    return blocks


def deep_forward(model, x: dict[str, Any], upto: int | None = None):
    """Runs the model's own forward in inference mode and returns what its deep MLP saw.

    Uses ``DomainMLP.record_block_inputs`` (the model's ``call``, not a re-implementation).

    Returns:
      ``(ctx, h)``: the context views the deep blocks receive and the input of block
      ``upto`` (or, with ``upto=None``, the deep part's output).
    """
    with model.deep.record_block_inputs() as rec:
        model(x, training=False)
    last = rec[-1]  # the eager call (a first call may also trace the layer symbolically)
    return last["ctx"], (last["output"] if upto is None else last["block_inputs"][upto])


def weighting_matrices(model, x: dict[str, np.ndarray], layer: int = 0, full: bool = False,
                       batch_size: int = 4096) -> np.ndarray:
    """Generated weighting matrices of DWM layer ``layer`` for inputs ``x``.

    Args:
      model: an MI-DPG / DPG model (``build_midpg``).
      x: input features (numpy arrays with the schema's names and the domain key).
      layer: index of the DWM layer (0 = first).
      full: return the tiled n×m matrix ``M`` instead of the small one.
      batch_size: rows per forward pass.

    Returns:
      ``[N, a, b]`` = scale·σ(PQ) for rc/r/c (``[N, n, m]`` for "non" or with ``full``).
    """
    blocks = _dwm_blocks(model)
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"layer {layer}: the model has {len(blocks)} DWM layers")
    layer %= len(blocks)
    blk = blocks[layer]
    n = len(next(iter(x.values())))
    out = []
    for i in range(0, n, batch_size):
        xb = {k: v[i:i + batch_size] for k, v in x.items()}
        ctx, h = deep_forward(model, xb, upto=layer)
        s = blk.full_weighting_matrix(h, ctx) if full else blk.weighting_matrix(h, ctx)
        out.append(np.asarray(s))
    return np.concatenate(out, axis=0)


def sample_per_domain(domains: np.ndarray, per_domain: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to ``per_domain`` random rows of every domain."""
    rng = np.random.default_rng(seed)
    idx = []
    for d in np.unique(domains):
        rows = np.flatnonzero(domains == d)
        idx.append(rng.choice(rows, size=min(per_domain, len(rows)), replace=False))
    return np.sort(np.concatenate(idx)) if idx else np.zeros([0], np.int64)


# ----------------------------------------------------------- embedding and scores
def similarity_matrices(x: np.ndarray, labels: np.ndarray, num_domains: int) -> dict[str, np.ndarray]:
    """Cosine similarity and Pearson correlation between the per-scenario mean matrices.

    Returns:
      ``{"cosine": [D, D], "correlation": [D, D]}`` (NaN rows for absent scenarios).
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    mus = np.stack([x[labels == d].mean(0) if np.any(labels == d) else np.full(x.shape[1], np.nan)
                    for d in range(num_domains)])

    def cos(m: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(m, axis=1, keepdims=True)
        u = m / np.maximum(norm, 1e-300)
        return np.clip(u @ u.T, -1.0, 1.0)

    return {"cosine": cos(mus), "correlation": cos(mus - mus.mean(1, keepdims=True))}


def plot_tsne(panels: Sequence[dict[str, Any]], domain_names: Sequence[str], path: str, title: str = "") -> str:
    """Scatter per panel (``{"title", "y" [N, 2], "domains" [N]}``), coloured by scenario."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, p in zip(axes[0], panels):
        for d, name in enumerate(domain_names):
            sel = p["domains"] == d
            ax.scatter(p["y"][sel, 0], p["y"][sel, 1], s=6, alpha=0.7, color=cmap(d % 10), label=f"d{d}: {name}")
        ax.set_title(p["title"], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_heatmaps(sims: dict[str, dict[str, np.ndarray]], domain_names: Sequence[str], path: str) -> str:
    """Annotated heatmaps: rows = models (e.g. with / without MIR), columns = similarity kinds."""
    tags = list(sims)
    kinds = ["cosine", "correlation"]
    fig, axes = plt.subplots(len(tags), len(kinds), figsize=(5.0 * len(kinds), 4.0 * len(tags)), squeeze=False,
                             constrained_layout=True)
    ticks = [f"d{d}: {n}" for d, n in enumerate(domain_names)]
    for r, tag in enumerate(tags):
        for c, kind in enumerate(kinds):
            ax, m = axes[r][c], sims[tag][kind]
            lo = float(np.nanmin(m)) if np.isfinite(m).any() else 0.0
            im = ax.imshow(m, cmap="Blues", vmin=min(lo, 0.999), vmax=1.0)
            for i, j in itertools.product(range(m.shape[0]), range(m.shape[1])):
                ax.text(j, i, f"{m[i, j]:.4f}", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > (lo + 1.0) / 2 else "black")
            ax.set_xticks(range(len(ticks)), ticks, fontsize=7, rotation=30)
            ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
            ax.set_title(f"{tag}: {kind} of scenario means", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


# --------------------------------------------------------------------- t-SNE part
def tsne_matrices(schema, data_fp: str, *, tag: str, model_name: str, kwargs: dict[str, Any], cfg, layer: int,
                  per_scenario: int, sample_seed: int, output_dir: str, aggregate_only: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Trains one t-SNE model (or reads its cache) and returns its sampled test matrices.

    Returns:
      ``{"S" [N, ...], "domains" [N], "test_auc", "mir"}``, or None when ``aggregate_only``
      and nothing is cached.
    """
    from data_prep.common import fingerprint

    from mdr_tf import training
    from mdr_tf.data import load_arrays
    from mdr_tf.models.midpg import mir_estimates

    key = fingerprint({"trial": trial_key(model_name, cfg, kwargs, data_fp), "layer": layer,
                       "per_scenario": per_scenario, "sample_seed": sample_seed})
    path = os.path.join(output_dir, f"matrices-{tag}-{key[:16]}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            log(f"t-SNE {tag}: matrices read from {path}")
            return {"S": z["S"], "domains": z["domains"], "test_auc": float(z["test_auc"]),
                    "mir": z["mir"].tolist(), "path": path}
    if aggregate_only:
        log(f"t-SNE {tag}: no cached matrices ({path}); skipped")
        return None
    log(f"t-SNE {tag}: training {model_name} {kwargs} (seed {cfg.seed}) ...")
    t0 = time.time()
    row, model = training.run_trial(model_name, schema, cfg, kwargs, log=log, return_model=True)
    feats, _ = load_arrays(schema, "test")
    idx = sample_per_domain(np.asarray(feats[schema.domain_key]), per_scenario, sample_seed)
    x = {k: v[idx] for k, v in feats.items()}
    s = weighting_matrices(model, x, layer=layer)
    mir = mir_estimates(model)
    out = {"S": s, "domains": np.asarray(x[schema.domain_key]), "test_auc": float(row["test_auc"]),
           "mir": mir, "path": path}
    savez_atomic(path, S=s, domains=out["domains"], test_auc=np.float64(row["test_auc"]),
                  mir=np.asarray(mir, np.float64))
    log(f"t-SNE {tag}: test AUC {row['test_auc']:.4f}, matrices {s.shape} → {path} ({time.time() - t0:.1f}s)")
    return out


def run_tsne(schema, data_fp: str, *, variant: str, size: Size, mir_weight: float, layer: int, per_scenario: int,
             perplexity: float, seed: int, tsne_iters: int = 1000, train_kwargs: dict[str, Any],
             common: dict[str, Any], output_dir: str,
             aggregate_only: bool = False, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """t-SNE figure and similarity heatmaps for MI-DPG (λ1 = ``mir_weight``) and DPG (λ1 = 0)."""
    from mdr_tf import training

    if mir_weight <= 0:
        raise ValueError("the 'with MIR' model needs mir_weight > 0")
    a, b, k = size
    cfg = training.TrainConfig(seed=seed, **train_kwargs)
    mats = {}
    for tag, name, lam in (("with MIR", "midpg", mir_weight), ("without MIR", "dpg", 0.0)):
        kwargs = {**common, "variant": variant, "a": a, "b": b, "k": k, "mir_weight": lam}
        got = tsne_matrices(schema, data_fp, tag="mir" if lam else "nomir", model_name=name, kwargs=kwargs, cfg=cfg,
                            layer=layer, per_scenario=per_scenario, sample_seed=seed, output_dir=output_dir,
                            aggregate_only=aggregate_only, log=log)
        if got is None:
            return None
        mats[f"{tag} (λ1={lam:g})"] = got
    panels, stats, sims = [], {}, {}
    for tag, m in mats.items():
        flat = m["S"].reshape(len(m["S"]), -1)
        y, method = embed_2d(flat, perplexity, seed, max_iter=tsne_iters)
        st = {"silhouette_matrices": silhouette(flat, m["domains"]), "silhouette_2d": silhouette(y, m["domains"]),
              "between_within": between_within(flat, m["domains"]), "test_auc": m["test_auc"],
              "mir_estimates": m["mir"], "n": int(len(flat)), "dims": list(m["S"].shape[1:]), "method": method}
        stats[tag] = st
        sims[tag] = similarity_matrices(flat, m["domains"], schema.num_domains)
        panels.append({"y": y, "domains": m["domains"], "title":
                       f"{tag}: {method}\nsilhouette {st['silhouette_matrices']:.3f} (matrices), "
                       f"{st['silhouette_2d']:.3f} (2-D); between/within {st['between_within']:.3f}"})
    shape = "×".join(map(str, next(iter(mats.values()))["S"].shape[1:]))
    title = (f"DWM-{variant} ({a},{b},{k}), layer {layer}: generated {shape} matrices of "
             f"{per_scenario} test instances per scenario")
    plot_tsne(panels, schema.domain_names, os.path.join(output_dir, "tsne_dwm.png"), title)
    plot_heatmaps(sims, schema.domain_names, os.path.join(output_dir, "similarity_heatmap.png"))
    return {"stats": stats, "similarity": {t: {k2: v.tolist() for k2, v in s.items()} for t, s in sims.items()},
            "settings": {"variant": variant, "size": list(size), "mir_weight": mir_weight, "layer": layer,
                         "per_scenario": per_scenario, "perplexity": perplexity, "seed": seed}}


def tsne_markdown(res: dict[str, Any], domain_names: Sequence[str]) -> str:
    """Markdown: separability per panel and the similarity matrices."""
    lines = ["| model | test AUC | silhouette (matrices) | silhouette (2-D) | between/within | MIR estimate / layer |",
             "|---|---|---|---|---|---|"]
    for tag, st in res["stats"].items():
        mir = ", ".join(f"{v:.3f}" for v in st["mir_estimates"]) or "—"
        lines.append(f"| {tag} | {st['test_auc']:.4f} | {st['silhouette_matrices']:.3f} | {st['silhouette_2d']:.3f} "
                     f"| {st['between_within']:.3f} | {mir} |")
    names = [f"d{d} {n}" for d, n in enumerate(domain_names)]
    for tag, sims in res["similarity"].items():
        for kind, m in sims.items():
            lines += ["", f"{tag}, {kind} of scenario means:", "", "| | " + " | ".join(names) + " |",
                      "|---" * (len(names) + 1) + "|"]
            lines += [f"| {names[i]} | " + " | ".join(f"{v:.4f}" for v in row) + " |" for i, row in enumerate(m)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- run
def run(
    *,
    dataset: str = "ml100k",
    data_dir: str = "data",
    data_path: str | None = None,
    raw_path: str | None = None,
    dataset_options: dict[str, Any] | None = None,
    output_dir: str = "results/midpg_figures",
    parts: Sequence[str] = ("sweep", "tsne"),
    variants: Sequence[str] = DWM_VARIANTS,
    sizes: Sequence[Size] = tuple(parse_sizes(DEFAULT_SIZES)),
    apg: bool = True,
    apg_match: str = "r",
    sweep_mir_weight: float = 0.0,
    trials: int = 2,
    seed_base: int = 0,
    metric: str = "auc",
    shard: tuple[int, int] = (0, 1),
    aggregate_only: bool = False,
    train_kwargs: dict[str, Any] | None = None,
    common: dict[str, Any] | None = None,
    tsne_variant: str = "r",
    tsne_size: Size = (8, 8, 4),
    mir_weight: float = 0.1,
    tsne_layer: int = 0,
    tsne_per_scenario: int = 300,
    perplexity: float = 30.0,
    tsne_iters: int = 1000,
    tsne_seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the requested parts and writes figures and tables; returns what it wrote.

    Args:
      data_path: an already prepared dataset folder (skips ``prepare_dataset``).
      common: model arguments shared by every model (e.g. embedding_dim, hidden_units).
      Others: see the flags.
    """
    import mdr_tf  # noqa: F401  (sets the Keras backend)
    from mdr_tf.schema import Schema

    unknown = set(parts) - {"sweep", "tsne"}
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; expected sweep, tsne")
    shard_i, shard_n = shard
    if not 0 <= shard_i < shard_n:
        raise ValueError(f"shard {shard_i}/{shard_n}: expected 0 <= i < n")
    points = sweep_points(variants, sizes, apg) if "sweep" in parts else []
    data_path = data_path or prepare_dataset(dataset, data_dir, raw_path, dict(dataset_options or {}))
    schema = Schema.load(data_path)
    data_fp = schema.raw["fingerprint"]
    os.makedirs(output_dir, exist_ok=True)
    train_kwargs, common = dict(train_kwargs or {}), dict(common or {})
    t_start = time.time()
    log(f"dataset {dataset}: {schema.raw['num_examples']:,} examples, {schema.num_domains} scenarios "
        f"{list(schema.domain_names)}; results → {os.path.abspath(output_dir)}")
    result: dict[str, Any] = {"output_dir": output_dir, "files": []}
    text = [f"# MI-DPG figures on {dataset}\n"]
    if points:
        rows = run_sweep(schema, data_fp, points, trials=trials, seed_base=seed_base, train_kwargs=train_kwargs,
                         common=common, mir_weight=sweep_mir_weight, apg_match=apg_match, output_dir=output_dir,
                         shard=shard, aggregate_only=aggregate_only, dataset=dataset, log=log)
        summary = summarize_sweep(rows, metric)
        result["sweep"] = summary
        if summary:
            md = sweep_markdown(summary, metric)
            text += [f"## Fig. 2 (a/c/e): test {metric} vs low-rank size (λ1 = {sweep_mir_weight:g})\n", md]
            log("\n" + md)
            atomic_write(os.path.join(output_dir, "fig2_table.md"), md)
            atomic_write(os.path.join(output_dir, "fig2_summary.json"), json.dumps(summary, indent=2) + "\n")
            result["files"].append(plot_fig2(summary, os.path.join(output_dir, "fig2_lowrank.png"), metric,
                                             f"{dataset}: DPG variants vs APG at matched parameters"))
    if "tsne" in parts and shard_i == 0:
        res = run_tsne(schema, data_fp, variant=tsne_variant, size=tuple(tsne_size), mir_weight=mir_weight,
                       layer=tsne_layer, per_scenario=tsne_per_scenario, perplexity=perplexity, seed=tsne_seed,
                       tsne_iters=tsne_iters,
                       train_kwargs=train_kwargs, common=common, output_dir=output_dir,
                       aggregate_only=aggregate_only, log=log)
        if res is not None:
            result["tsne"] = res
            md = tsne_markdown(res, schema.domain_names)
            text += ["## t-SNE separability and scenario similarity (Fig. 2 b/d/f)\n", md]
            log("\n" + md)
            atomic_write(os.path.join(output_dir, "tsne_stats.json"), json.dumps(res, indent=2) + "\n")
            result["files"] += [os.path.join(output_dir, "tsne_dwm.png"),
                                os.path.join(output_dir, "similarity_heatmap.png")]
    wall = time.time() - t_start
    text.append(f"\nWall time of this run: {wall:.0f} s.\n")
    atomic_write(os.path.join(output_dir, "summary.md" if shard_n == 1 else f"summary-shard-{shard_i}.md"),
                  "\n".join(text))
    log(f"wrote {', '.join(os.path.basename(f) for f in result['files']) or 'no figures'} "
        f"in {os.path.abspath(output_dir)} ({wall:.0f}s)")
    result["wall_seconds"] = wall
    return result


def _main(f: flags.FlagValues) -> None:
    common = {"embedding_dim": f.embedding_dim, "hidden_units": [int(u) for u in f.hidden_units]}
    run(dataset=f.dataset, data_dir=f.data_dir, raw_path=f.raw_path,
        dataset_options=parse_options(f.dataset_options), output_dir=f.output_dir, parts=f.parts,
        variants=f.variants, sizes=parse_sizes(f.sizes), apg=f.apg, apg_match=f.apg_match,
        sweep_mir_weight=f.sweep_mir_weight, trials=f.trials, seed_base=f.seed_base,
        metric=f.metric, shard=parse_shard(f.shard), aggregate_only=f.aggregate_only,
        train_kwargs=train_kwargs_from_flags(f), common=common, tsne_variant=f.tsne_variant,
        tsne_size=parse_sizes([f.tsne_size])[0], mir_weight=f.mir_weight, tsne_layer=f.tsne_layer,
        tsne_per_scenario=f.tsne_per_scenario, perplexity=f.perplexity, tsne_iters=f.tsne_iters,
        tsne_seed=f.tsne_seed)


def cli() -> None:
    run_cli(define_flags, _main, errors=(ValueError,))


if __name__ == "__main__":
    cli()
