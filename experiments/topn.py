"""Top-N job: multi-behaviour leave-one-out ranking (CIGF, LightGCN, MF-BPR, trivial scorers).

Same conventions as ``experiments.run``: absl flags, every finished trial appended to
``<output_dir>/trials.jsonl`` (a rerun skips finished trials), mean ± std tables
(Markdown + CSV) with Welch marks, ``run_meta.json``, progress with an ETA.

Metrics: HR@10 and NDCG@10 of each test user's held-out target item among 99 sampled
negatives, overall and per user domain (age group). See docs/models/cigf.md.

Model selection uses the validation pairs only (each user's second-latest target item):

1. learning rate, per model: one trial (seed ``seed_base``) for every value of ``--lr_grid``;
   the value with the best validation NDCG@10 (at its best epoch) is kept
   (``lr_selection.md``); with an empty grid, ``--learning_rate`` for every model;
2. epochs, per trial: validation every ``--eval_every`` epochs, the best-validation weights
   are kept, training stops after ``--patience`` evaluations without improvement, and the
   test metrics are those of the best-validation weights.

The selection trial of the chosen rate is trial 0 of the measurement (same key: reused).

Examples:
  python -m experiments.topn                                   # every top-N model, 5 trials
  python -m experiments.topn --models=cigf,lightgcn --trials=2 --epochs=40
  python -m experiments.topn --lr_grid= --learning_rate=5e-3     # no learning-rate search
  python -m experiments.topn --models=cigf --export_dir=exports/topn
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Sequence

from absl import flags

from experiments.common import (TrialLog, atomic_write, git_commit, parse_options, parse_shard, prepare_dataset,
                                versions)
from experiments.run import define_data_flags, parse_model_args

DEFAULT_MODELS = ("cigf", "cigf_no_mesi", "cigf_no_mixing", "cigf_target_only", "lightgcn", "mf_bpr",
                  "popularity", "random")
METRICS = (("test_hr10", "HR@10"), ("test_ndcg10", "NDCG@10"))
DEFAULT_LR_GRID = ("1e-3", "5e-3", "1e-2")


def define_flags() -> None:
    define_data_flags()
    flags.FLAGS.set_default("dataset", "ml100k_multibehavior")
    flags.DEFINE_list("models", list(DEFAULT_MODELS), "Top-N models (mdr_tf.topn.TOPN_REGISTRY).")
    flags.DEFINE_integer("trials", 5, "Trials per model.")
    flags.DEFINE_integer("seed_base", 0, "Trial t uses seed seed_base + t.")
    flags.DEFINE_integer("epochs", 120, "Maximum training epochs (an epoch = every user once, CIGF's sampler).")
    flags.DEFINE_integer("batch_users", 256, "Users per step (CIGF: 256).")
    flags.DEFINE_integer("samples_per_user", 40, "Positive samples per user and behaviour (CIGF: 40).")
    flags.DEFINE_integer("users_per_epoch", 10000, "Users drawn per epoch, at most all (CIGF: 10000).")
    flags.DEFINE_list("lr_grid", list(DEFAULT_LR_GRID), "Learning rates tried per model (one trial each, seed "
                      "seed_base); the best validation NDCG@10 is kept. Empty: --learning_rate for every model.")
    flags.DEFINE_float("learning_rate", 5e-3, "Adam learning rate of every model when --lr_grid is empty "
                       "(CIGF's code: 1e-3 for 100 epochs of 40 steps; docs/models/cigf.md).")
    flags.DEFINE_integer("eval_every", 5, "Validation every N epochs; the best-validation weights are kept "
                         "(0: no validation, test after the last epoch).")
    flags.DEFINE_integer("patience", 4, "Early stopping: evaluations without a better validation NDCG@10 "
                         "(0: train all --epochs).")
    flags.DEFINE_float("lr_decay", 0.96, "Staircase decay factor (CIGF: 0.96).")
    flags.DEFINE_integer("decay_steps", 0, "Steps per decay (0: users_per_epoch // batch_users, CIGF's rule).")
    flags.DEFINE_integer("embedding_dim", 16, "Embedding size d (CIGF: latdim/2 = 16).")
    flags.DEFINE_string("model_args", "{}", 'JSON: {"model": {"arg": value}} extra constructor arguments.')
    flags.DEFINE_string("output_dir", None, "Results folder (default: results/<dataset>).")
    flags.DEFINE_string("export_dir", None, "If set, export each trained model's first trial here "
                        "(embeddings.npz + a SavedModel scoring (user, item)).")
    flags.DEFINE_string("trial_shard", "0/1", "i/n: run only trials t with t % n == i.")
    flags.DEFINE_boolean("aggregate_only", False, "Rebuild tables from trials*.jsonl without training.")


def _trial_key(name: str, cfg, kwargs: dict[str, Any], data_fp: str) -> str:
    import dataclasses

    from data_prep.common import fingerprint

    from mdr_tf import topn

    spec = topn.get(name)
    return fingerprint({"task": "topn", "model": name, "train": dataclasses.asdict(cfg),
                        "model_kwargs": {**spec.defaults, **kwargs}, "builder": spec.builder, "data": data_fp})


def aggregate(rows: Sequence[dict[str, Any]], models: Sequence[str], num_domains: int) -> list[dict[str, Any]]:
    """Mean/std per model of the metrics, per-domain metrics and timings."""
    from mdr_tf.metrics import mean_std

    keys = [k for k, _ in METRICS] + ["epoch_seconds", "train_seconds", "valid_ndcg10", "best_epoch",
                                      "learning_rate"]
    keys += [f"{k}_d{d}" for d in range(num_domains) for k, _ in METRICS]
    out = []
    for m in models:
        mrows = [r for r in rows if r["model"] == m]
        if not mrows:
            continue
        s: dict[str, Any] = {"model": m, "trials": len(mrows), "params_total": mrows[0].get("params_total", 0)}
        for key in keys:
            s[key] = mean_std([float(r.get(key, float("nan"))) for r in mrows])
        out.append(s)
    return out


def add_marks(summary: list[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> None:
    """Welch's t-test of each metric against the best other non-seed model (report.add_significance)."""
    from mdr_tf import report, topn

    def family_of(name: str) -> str | None:
        spec = topn.TOPN_REGISTRY.get(name)
        return spec.family if spec else None

    import warnings

    for key, _ in METRICS:
        with warnings.catch_warnings():  # deterministic scorers (popularity) have zero variance
            warnings.simplefilter("ignore", RuntimeWarning)
            report.add_significance(summary, rows, base_model=summary[0]["model"], metric=key,
                                    family_of=family_of)
        for s in summary:
            s[f"{key}_p"], s[f"{key}_vs"], s[f"{key}_sig"] = s["p_value"], s["compared_to"], s["significant"]
    for s in summary:
        for k in ("relaimpr", "p_value", "compared_to", "significant"):
            s.pop(k, None)


def markdown_table(summary: Sequence[dict[str, Any]], domain_names: Sequence[str]) -> str:
    from mdr_tf.report import _fmt

    head = ["model", "trials"] + [n for _, n in METRICS] + [f"p {n} (vs)" for _, n in METRICS]
    head += [f"{n} d{d} ({name})" for d, name in enumerate(domain_names) for _, n in METRICS]
    head += ["lr", "val NDCG@10", "best epoch", "params", "s/epoch", "s/trial"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["model"], str(s["trials"])]
        cells += [_fmt(*s[k]) + ("*" if s.get(f"{k}_sig") else "") for k, _ in METRICS]
        for k, _ in METRICS:
            p = s.get(f"{k}_p", float("nan"))
            cells.append("–" if math.isnan(p) else f"{p:.3f} ({s.get(f'{k}_vs')})")
        cells += [_fmt(*s[f"{k}_d{d}"]) for d in range(len(domain_names)) for k, _ in METRICS]
        lr, val, ep = s["learning_rate"][0], s["valid_ndcg10"][0], s["best_epoch"][0]
        cells += ["–" if math.isnan(lr) else f"{lr:g}", "–" if math.isnan(val) else f"{val:.4f}",
                  "–" if math.isnan(ep) else f"{ep:.0f}"]
        cells += [f"{s['params_total']:,}", f"{s['epoch_seconds'][0]:.3f}", f"{s['train_seconds'][0]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(summary: Sequence[dict[str, Any]], num_domains: int) -> str:
    import csv
    import io

    cols = [k for k, _ in METRICS] + [f"{k}_d{d}" for d in range(num_domains) for k, _ in METRICS]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "trials"] + [f"{c}_{x}" for c in cols for x in ("mean", "std")]
               + [f"{k}_{x}" for k, _ in METRICS for x in ("p", "vs", "significant")]
               + ["params_total", "epoch_seconds_mean", "train_seconds_mean"])
    for s in summary:
        w.writerow([s["model"], s["trials"]] + [f"{v:.6f}" for c in cols for v in s[c]]
                   + [x for k, _ in METRICS for x in (f"{s.get(f'{k}_p', float('nan')):.6f}", s.get(f"{k}_vs") or "",
                                                     int(bool(s.get(f"{k}_sig"))))]
                   + [s["params_total"], f"{s['epoch_seconds'][0]:.4f}", f"{s['train_seconds'][0]:.2f}"])
    return buf.getvalue()


def run(
    *,
    dataset: str = "ml100k_multibehavior",
    raw_path: str | None = None,
    data_dir: str = "data",
    dataset_options: dict[str, Any] | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    trials: int = 5,
    seed_base: int = 0,
    train_kwargs: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    per_model_args: dict[str, dict[str, Any]] | None = None,
    output_dir: str | None = None,
    export_dir: str | None = None,
    flags_record: dict[str, Any] | None = None,
    trial_shard: tuple[int, int] = (0, 1),
    aggregate_only: bool = False,
    lr_grid: Sequence[float] = (),
    log=print,
) -> dict[str, Any]:
    """Runs the trials and writes the tables; returns {"summary", "table_md", "output_dir", "rows"}.

    Args:
      train_kwargs: ``TopNConfig`` fields for every model (they override the registry's
        per-model ``train`` values; ``seed`` is set per trial).
      model_kwargs: constructor arguments for every trainable model (e.g. embedding_dim).
      per_model_args: {model: {arg: value}} constructor arguments.
      lr_grid: learning rates tried per trainable model on the validation split (one trial,
        seed ``seed_base``, each); the best validation NDCG@10 sets the model's rate for its
        trials. Empty: ``train_kwargs["learning_rate"]`` (or the default) for every model.
    """
    import mdr_tf  # noqa: F401  (sets the Keras backend)
    from data_prep import multibehavior
    from mdr_tf import topn

    models = list(models)
    for m in models:
        topn.get(m)  # fail fast on unknown names
    data_path = prepare_dataset(dataset, data_dir, raw_path, dict(dataset_options or {}))
    data = multibehavior.load(data_path)
    output_dir = output_dir or os.path.join("results", dataset)
    os.makedirs(output_dir, exist_ok=True)
    shard_i, shard_n = trial_shard
    if not 0 <= shard_i < shard_n:
        raise ValueError(f"trial shard {shard_i}/{shard_n}: expected 0 <= i < n")
    trial_log = TrialLog(os.path.join(output_dir, "trials.jsonl" if shard_n == 1 else
                                      f"trials-shard-{shard_i}-of-{shard_n}.jsonl"))
    train_kwargs = dict(train_kwargs or {})
    model_kwargs = dict(model_kwargs or {})
    per_model_args = dict(per_model_args or {})
    lr_grid = [float(x) for x in lr_grid]
    trainable = [m for m in models if topn.get(m).builder is not None]
    total = len(models) * trials + len(trainable) * max(len(lr_grid) - 1, 0)
    t_start, finished_now, done_count = time.time(), 0, 0
    commit = git_commit()
    fp = data.meta["fingerprint"]
    log(f"dataset {dataset}: {data.num_users} users, {data.num_items} items, behaviours "
        f"{dict(zip(data.behaviors, (len(u) for u in data.train_users)))}, {len(data.test_users)} test users, "
        f"{len(data.valid_users)} validation users, domains {list(data.domain_names)} (data in {data_path})")
    log(f"{len(models)} models × {trials} trials" + (f", learning rate chosen on validation from {lr_grid}"
                                                      if lr_grid else "")
        + f"; results → {os.path.abspath(output_dir)}")

    def one_trial(name: str, cfg, kwargs: dict[str, Any], t: int, what: str) -> dict[str, Any] | None:
        """Runs (or finds in the log) one trial; None when it belongs to another shard / aggregate_only."""
        nonlocal finished_now, done_count
        key = _trial_key(name, cfg, kwargs, fp)
        done_count += 1
        prev = trial_log.done(key)
        if prev is not None:
            log(f"[{done_count}/{total}] {name} {what} (seed {cfg.seed}): already done, skipped")
            return prev
        if aggregate_only or t % shard_n != shard_i:
            return None
        log(f"[{done_count}/{total}] {name} {what} (seed {cfg.seed}) ...")
        t0 = time.time()
        row, model = topn.run_trial(name, data, cfg, kwargs, log=log, return_model=True)
        row.update({"key": key, "trial": t, "dataset": dataset, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if topn.get(name).builder is not None:
            row["learning_rate"] = cfg.learning_rate
        if export_dir and t == 0 and what.startswith("trial") and model is not None:
            row["export_path"] = topn.export_topn(model, os.path.join(export_dir, name))
        trial_log.append(row)
        finished_now += 1
        eta = (time.time() - t_start) / finished_now * (total - done_count)
        val = f"valid NDCG@10 {row['valid_ndcg10']:.4f} (epoch {row.get('best_epoch', '–')}), " \
            if "valid_ndcg10" in row else ""
        log(f"[{done_count}/{total}] {name} {what}: {val}test HR@10 {row['test_hr10']:.4f} "
            f"NDCG@10 {row['test_ndcg10']:.4f} ({row['epoch_seconds']:.3f} s/epoch, {time.time() - t0:.1f}s; "
            f"ETA {eta / 60:.1f} min)")
        del model
        return row

    keys: dict[str, str] = {}
    selection: dict[str, dict[str, Any]] = {}
    for name in models:
        spec = topn.get(name)
        kwargs = {} if spec.builder is None else {**model_kwargs, **per_model_args.get(name, {})}
        base = {**spec.train, **train_kwargs}
        if lr_grid and spec.builder is not None:
            # Step 1: the learning rate, on the validation split only (seed_base).
            found = {}
            for lr in lr_grid:
                cfg = topn.TopNConfig(**{**base, "learning_rate": lr, "seed": seed_base})
                if not cfg.eval_every:
                    raise ValueError("lr_grid needs validation: set eval_every > 0")
                row = one_trial(name, cfg, kwargs, 0, f"lr {lr:g} selection")
                if row is not None:
                    found[lr] = row
            if len(found) < len(lr_grid):
                log(f"{name}: learning-rate selection incomplete ({len(found)}/{len(lr_grid)} done); "
                    "its trials wait for it")
                continue
            chosen = max(lr_grid, key=lambda lr: (found[lr]["valid_ndcg10"], -lr_grid.index(lr)))
            selection[name] = {"chosen": chosen, "valid_ndcg10": {lr: found[lr]["valid_ndcg10"] for lr in lr_grid},
                               "valid_hr10": {lr: found[lr]["valid_hr10"] for lr in lr_grid},
                               "best_epoch": {lr: found[lr].get("best_epoch") for lr in lr_grid}}
            base["learning_rate"] = chosen
            log(f"{name}: learning rate {chosen:g} (validation NDCG@10 "
                + ", ".join(f"{lr:g}: {found[lr]['valid_ndcg10']:.4f}" for lr in lr_grid) + ")")
            done_count -= 1  # trial 0 below is the chosen selection trial
        # Step 2: the trials (trial 0 at the chosen rate is the selection trial, reused).
        for t in range(trials):
            cfg = topn.TopNConfig(**{**base, "seed": seed_base + t})
            keys[_trial_key(name, cfg, kwargs, fp)] = name
            one_trial(name, cfg, kwargs, t, f"trial {t}")
    rows = [r for r in trial_log.rows if r.get("key") in keys]
    summary = aggregate(rows, models, data.num_domains)
    if not summary:
        raise ValueError(f"no finished trials for {models} in {output_dir}")
    add_marks(summary, rows)
    md = markdown_table(summary, data.domain_names)
    if selection:
        sel = ["| model | " + " | ".join(f"lr {lr:g}: val HR@10 / NDCG@10 (best epoch)" for lr in lr_grid)
               + " | chosen |", "|" + "---|" * (len(lr_grid) + 2)]
        for m, v in selection.items():
            sel.append(f"| {m} | " + " | ".join(f"{v['valid_hr10'][lr]:.4f} / {v['valid_ndcg10'][lr]:.4f} "
                                                f"({v['best_epoch'][lr]})" for lr in lr_grid)
                       + f" | {v['chosen']:g} |")
        sel_md = (f"# {dataset}: learning rate per model, chosen on validation NDCG@10 (seed {seed_base})\n\n"
                  + "\n".join(sel) + "\n")
        atomic_write(os.path.join(output_dir, "lr_selection.md"), sel_md)
        log("\n" + sel_md)
    title = (f"# {dataset}: leave-one-out top-N, mean ± std over trials\n\n"
             f"Target behaviour `{data.behaviors[-1]}`; each of {len(data.test_users)} test users' held-out item "
             f"ranked among {data.negatives.shape[1]} sampled negatives. Domains (user age): "
             f"{', '.join(f'd{k} = {n}' for k, n in enumerate(data.domain_names))}. "
             "* = better than the best other non-CIGF model (Welch's t-test over trials, p < 0.05). "
             "Test metrics at each trial's best validation epoch; lr = the rate chosen on validation.\n\n")
    atomic_write(os.path.join(output_dir, "table.md"), title + md)
    atomic_write(os.path.join(output_dir, "table.csv"), csv_table(summary, data.num_domains))
    meta = {"git_commit": commit, "versions": versions(), "flags": flags_record or {}, "dataset": dataset,
            "data_dir": os.path.abspath(data_path), "data_fingerprint": fp,
            "data_checksums": data.meta.get("checksums"),
            "models": models, "trials": trials, "seed_base": seed_base, "train": train_kwargs,
            "per_model_train": {m: topn.get(m).train for m in models}, "model_kwargs": model_kwargs,
            "per_model_args": per_model_args, "lr_grid": lr_grid,
            "lr_selection": {m: {**v, "valid_ndcg10": {str(k): x for k, x in v["valid_ndcg10"].items()},
                                 "valid_hr10": {str(k): x for k, x in v["valid_hr10"].items()},
                                 "best_epoch": {str(k): x for k, x in v["best_epoch"].items()}}
                             for m, v in selection.items()},
            "wall_seconds": round(time.time() - t_start, 1)}
    atomic_write(os.path.join(output_dir, "run_meta.json"), json.dumps(meta, indent=2) + "\n")
    log("\n" + title + md)
    log(f"results: {os.path.abspath(output_dir)}/table.md, table.csv, trials.jsonl, run_meta.json "
        f"({time.time() - t_start:.0f}s)")
    return {"summary": summary, "table_md": md, "output_dir": output_dir, "rows": rows, "data_dir": data_path}


def _main(f: flags.FlagValues) -> None:
    train_kwargs: dict[str, Any] = dict(epochs=f.epochs, batch_users=f.batch_users,
                                        samples_per_user=f.samples_per_user, users_per_epoch=f.users_per_epoch,
                                        learning_rate=f.learning_rate, lr_decay=f.lr_decay,
                                        decay_steps=f.decay_steps or None, eval_every=f.eval_every,
                                        patience=f.patience)
    flags_record = {flag.name: flag.value for flag in f.get_flags_for_module(sys.modules[__name__])}
    flags_record.update({n: getattr(f, n) for n in ("dataset", "raw_path", "data_dir", "dataset_options")})
    run(dataset=f.dataset, raw_path=f.raw_path, data_dir=f.data_dir,
        dataset_options=parse_options(f.dataset_options), models=f.models, trials=f.trials,
        seed_base=f.seed_base, train_kwargs=train_kwargs, model_kwargs={"embedding_dim": f.embedding_dim},
        per_model_args=parse_model_args(f.model_args), output_dir=f.output_dir, export_dir=f.export_dir,
        flags_record=flags_record, trial_shard=parse_shard(f.trial_shard), aggregate_only=f.aggregate_only,
        lr_grid=[float(x) for x in f.lr_grid])


def cli() -> None:
    from data_prep.common import run_cli

    run_cli(define_flags, _main, errors=(ValueError,))


if __name__ == "__main__":
    cli()
