"""Streaming (prequential) comparison of embedding assignment policies on MovieLens-100k.

ML-100k ordered by (timestamp, user, item) is cut into ``--num_chunks`` equal-count
chunks; for each chunk the model is tested on it, then trained on it (one pass). Policies
(``mdr_tf.layers.assignment``): ``full`` (one row per id, random init), ``threshold``,
``hash`` and ``autoassign`` (AutoAssign+, **reconstructed from its abstract**: see
docs/models/autoassign.md). Reported per policy, mean ± std over trials: AUC / LogLoss
over the stream (chunks after ``--skip_chunks``), on the cold slice (user or item with
fewer than ``--cold_threshold`` prior events), per domain, and the embedding rows held.

Every finished trial is appended to ``<output_dir>/trials.jsonl`` at once; a rerun skips
finished trials. Tables (md + csv), ``run_meta.json`` and a PNG (AUC and rows per chunk)
are written atomically at the end.

Example:
  python -m experiments.stream --policies=full,threshold,hash,autoassign --trials=3
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import numpy as np
from absl import flags

from experiments.common import TrialLog, git_commit as _git_commit, versions as _versions
from experiments.common import atomic_write as _atomic_write
from experiments.run import parse_model_args

POLICY_NAMES = ("full", "threshold", "hash", "autoassign")


def define_flags() -> None:
    flags.DEFINE_list("policies", list(POLICY_NAMES), "Embedding assignment policies to compare.")
    flags.DEFINE_string("model", "dnn", "Registry model (any; the policy replaces its embedding lookup).")
    flags.DEFINE_integer("trials", 3, "Trials (seeds) per policy.")
    flags.DEFINE_integer("seed_base", 0, "Trial t uses seed seed_base + t.")
    flags.DEFINE_integer("num_chunks", 30, "Equal-count time-ordered chunks.")
    flags.DEFINE_integer("skip_chunks", 1, "Chunks left out of the overall metrics (the untrained start).")
    flags.DEFINE_integer("cold_threshold", 5, "Cold slice: user or item with fewer prior events.")
    flags.DEFINE_integer("batch_size", 256, "Training batch size within a chunk.")
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate of the recommender.")
    flags.DEFINE_integer("epochs_per_chunk", 1, "Passes over each chunk.")
    flags.DEFINE_integer("embedding_dim", 16, "Embedding size.")
    flags.DEFINE_list("hidden_units", None, "Override the model's hidden widths.")
    flags.DEFINE_list("fields", None, "Managed fields (default user_id,item_id,zip).")
    flags.DEFINE_string("policy_args", "{}", 'JSON {"policy": {arg: value}}: EmbeddingAssignment arguments.')
    flags.DEFINE_string("agent_args", "{}", "JSON: AutoAssignAgent arguments (memory_weight, epsilon, ...).")
    flags.DEFINE_string("raw_path", None, "GroupLens ml-100k zip/folder (default: the recbole wheel copy).")
    flags.DEFINE_string("cache_dir", None, "Download cache (default ~/.cache/mdr_tf).")
    flags.DEFINE_string("domain_scheme", "age3", "MovieLens domain scheme (data_prep.movielens).")
    flags.DEFINE_string("label_rule", "gt3", "gt3 (rating > 3) or eq5.")
    flags.DEFINE_string("output_dir", "results/stream_ml100k", "Results folder.")
    flags.DEFINE_string("plot", None, "PNG of AUC and rows per chunk (default <output_dir>/stream.png).")
    flags.DEFINE_boolean("aggregate_only", False, "Rebuild tables and plot from trials.jsonl without training.")


def load_ml100k_stream(raw_path: str | None = None, cache_dir: str | None = None, domain_scheme: str = "age3",
                       label_rule: str = "gt3") -> dict[str, Any]:
    """ML-100k in time order: {"schema" (config), "features", "labels", "fingerprint"}.

    Same features and encodings as ``data_prep.movielens.prepare`` (ids 1..V by frequency,
    0 = OOV; age min-max scaled); events sorted by (timestamp, user, item). The
    vocabularies cover the whole stream (a pre-allocated table; the policies' memory
    accounting counts only rows they hold).
    """
    from data_prep import movielens as ml
    from data_prep.common import encode_categorical, fingerprint
    from data_prep.sources import DEFAULT_CACHE, RawSource, fetch_recbole_wheel

    if raw_path is None:
        src = RawSource(fetch_recbole_wheel(cache_dir or DEFAULT_CACHE),
                        prefix_in_zip="recbole/dataset_example/ml-100k/")
    else:
        src = RawSource(raw_path)
    frame, meta = ml.read_ml100k(src)
    ml.verify_counts(frame, "100k", src.path)
    frame = frame.sort_values(["ts", "user", "item"], kind="mergesort").reset_index(drop=True)
    domain, domain_names = ml.domain_column(frame, domain_scheme)
    labels = ml.label_column(frame["rating"].to_numpy(), label_rule)
    raw_cols = {"user_id": frame["user"], "item_id": frame["item"], "gender": frame["gender"],
                "occupation": frame["occupation"], "zip": frame["zip"], "genre": frame["genre"]}
    groups = {"user_id": "user", "item_id": "item", "gender": "user", "age": "user", "occupation": "user",
              "zip": "user", "genre": "item"}
    feats, defs = {}, []
    for name in ml.ALL_FEATURES:
        group = "domain" if ml.SCHEME_COLUMN[domain_scheme] == name else groups[name]
        if name == "age":
            age = frame["age"].to_numpy(dtype=np.float32)
            feats[name] = (age - age.min()) / max(float(age.max() - age.min()), 1e-12)
            defs.append({"name": name, "kind": "dense", "vocab_size": 0, "group": group, "is_id": False})
            continue
        ids, vocab = encode_categorical(raw_cols[name], name)
        feats[name] = ids
        defs.append({"name": name, "kind": "categorical", "vocab_size": len(vocab), "group": group,
                     "is_id": name in ("user_id", "item_id")})
    feats["domain_id"] = domain.astype(np.int64)
    schema = {"features": defs, "num_domains": len(domain_names), "domain_names": list(domain_names),
              "label_keys": ["label"], "domain_key": "domain_id"}
    fp = fingerprint({"checksums": meta["checksums"], "domain_scheme": domain_scheme, "label_rule": label_rule,
                      "order": "ts,user,item"})
    return {"schema": schema, "features": feats, "labels": labels, "fingerprint": fp, "ts": frame["ts"].to_numpy()}


def run_policy_trial(policy: str, data: dict[str, Any], *, seed: int, model: str = "dnn", num_chunks: int = 30,
                     skip_chunks: int = 1, cold_threshold: int = 5, batch_size: int = 256,
                     learning_rate: float = 1e-3, epochs_per_chunk: int = 1, embedding_dim: int = 16,
                     hidden_units: Sequence[int] | None = None, fields: Sequence[str] | None = None,
                     policy_args: dict[str, Any] | None = None, agent_args: dict[str, Any] | None = None,
                     log=None) -> dict[str, Any]:
    """One trial of one policy on a stream; returns a flat row (overall, cold, domain, memory, per chunk)."""
    import keras

    from mdr_tf import metrics as M
    from mdr_tf import registry
    from mdr_tf.streaming import chunk_index, run_stream

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    assignment = None
    if policy != "full":
        assignment = {"policy": policy, **({"fields": list(fields)} if fields else {}),
                      **dict((policy_args or {}).get(policy, {}))}
    kwargs: dict[str, Any] = {"embedding_dim": embedding_dim, "embedding_assignment": assignment}
    if hidden_units:
        kwargs["hidden_units"] = [int(u) for u in hidden_units]
    m = registry.get(model).build(data["schema"], **kwargs)
    m.build()
    n = len(data["labels"])
    chunks = chunk_index(n, num_chunks)
    t0 = time.time()
    res = run_stream(m, data["features"], data["labels"], chunks, learning_rate=learning_rate,
                     batch_size=batch_size, epochs_per_chunk=epochs_per_chunk, seed=seed,
                     agent_kwargs=agent_args, cold_threshold=cold_threshold, log=log)
    keep = res["chunk"] >= skip_chunks
    y, p, d, cold = res["label"][keep], res["prob"][keep], res["domain"][keep], res["cold"][keep]
    nd = m.schema.num_domains
    ev = M.evaluate(y, p, d, nd)
    ch = [c for c in res["chunks"] if c["chunk"] >= skip_chunks]
    rows = np.array([c["rows"] for c in res["chunks"]], float)
    rows_full = np.array([c["rows_full"] for c in res["chunks"]], float)
    row = {"policy": policy, "model": model, "seed": seed, "auc": ev["auc"], "logloss": ev["logloss"],
           "cold_auc": M.auc(y[cold], p[cold]), "cold_logloss": M.logloss(y[cold], p[cold]),
           "cold_fraction": float(cold.mean()), "mean_chunk_auc": float(np.nanmean([c["auc"] for c in ch])),
           **{f"auc_d{k}": ev[f"auc_d{k}"] for k in range(nd)},
           "rows_final": int(rows[-1]), "rows_full_final": int(rows_full[-1]),
           "rows_ratio_final": float(rows[-1] / rows_full[-1]),
           "rows_ratio_mean": float(np.mean(rows / np.maximum(rows_full, 1))),
           "seconds": round(time.time() - t0, 1),
           "per_chunk": {k: [c.get(k) for c in res["chunks"]] for k in
                         ("auc", "cold_auc", "logloss", "rows", "rows_full", "cold_n", "admitted", "evicted")}}
    return row


STAT_KEYS = ("auc", "logloss", "cold_auc", "cold_logloss", "rows_final", "rows_ratio_final", "rows_ratio_mean",
             "seconds")


def summarize(rows: Sequence[dict[str, Any]], policies: Sequence[str], num_domains: int,
              base: str = "full") -> list[dict[str, Any]]:
    """Mean ± std per policy, and Welch's t-test of AUC and cold AUC against ``base``."""
    from scipy import stats

    from mdr_tf.metrics import mean_std

    out = []
    for pol in policies:
        pr = [r for r in rows if r["policy"] == pol]
        if not pr:
            continue
        s: dict[str, Any] = {"policy": pol, "trials": len(pr)}
        for k in list(STAT_KEYS) + [f"auc_d{j}" for j in range(num_domains)]:
            s[k] = mean_std([float(r[k]) for r in pr])
        for metric in ("auc", "cold_auc"):
            a = [r[metric] for r in pr]
            b = [r[metric] for r in rows if r["policy"] == base]
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue) if pol != base and len(a) > 1 and len(b) > 1 \
                else float("nan")
            s[f"p_{metric}"] = p
        out.append(s)
    return out


def _f(ms: tuple[float, float], digits: int = 4) -> str:
    return "–" if math.isnan(ms[0]) else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _mark(s: dict[str, Any], base: dict[str, Any] | None, metric: str) -> str:
    p = s.get(f"p_{metric}", float("nan"))
    if base is None or math.isnan(p) or p >= 0.05:
        return ""
    return "▲" if s[metric][0] > base[metric][0] else "▼"


def markdown_table(summary: Sequence[dict[str, Any]], domain_names: Sequence[str]) -> str:
    base = next((s for s in summary if s["policy"] == "full"), None)
    head = (["policy", "trials", "AUC", "LogLoss", "cold AUC", "cold LogLoss"]
            + [f"AUC d{k} ({n})" for k, n in enumerate(domain_names)]
            + ["rows (end)", "rows / full (end)", "rows / full (mean over chunks)", "s/trial"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["policy"], str(s["trials"]), _f(s["auc"]) + _mark(s, base, "auc"), _f(s["logloss"]),
                 _f(s["cold_auc"]) + _mark(s, base, "cold_auc"), _f(s["cold_logloss"])]
        cells += [_f(s[f"auc_d{k}"]) for k in range(len(domain_names))]
        cells += [f"{s['rows_final'][0]:,.0f}", _f(s["rows_ratio_final"], 3), _f(s["rows_ratio_mean"], 3),
                  f"{s['seconds'][0]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(summary: Sequence[dict[str, Any]], num_domains: int) -> str:
    buf = io.StringIO()
    cols = list(STAT_KEYS) + [f"auc_d{k}" for k in range(num_domains)]
    w = csv.writer(buf)
    w.writerow(["policy", "trials"] + [f"{c}_{x}" for c in cols for x in ("mean", "std")] + ["p_auc", "p_cold_auc"])
    for s in summary:
        w.writerow([s["policy"], s["trials"]] + [f"{v:.6f}" for c in cols for v in s[c]]
                   + [f"{s['p_auc']:.6f}", f"{s['p_cold_auc']:.6f}"])
    return buf.getvalue()


def plot_stream(rows: Sequence[dict[str, Any]], policies: Sequence[str], path: str, title: str = "") -> str:
    """Three panels per chunk, mean over trials: AUC, cold AUC, rows held / full's rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for pol in policies:
        pr = [r for r in rows if r["policy"] == pol]
        if not pr:
            continue
        pc = [r["per_chunk"] for r in pr]
        x = np.arange(1, len(pc[0]["auc"]) + 1)
        auc = np.nanmean([np.array(c["auc"], float) for c in pc], axis=0)
        cold = np.nanmean([np.array([np.nan if v is None else v for v in c["cold_auc"]], float) for c in pc], axis=0)
        ratio = np.mean([np.array(c["rows"], float) / np.maximum(np.array(c["rows_full"], float), 1) for c in pc],
                        axis=0)
        axes[0].plot(x, auc, label=pol)
        axes[1].plot(x, cold, label=pol)
        axes[2].plot(x, ratio, label=pol)
    axes[0].set_ylabel("test AUC of the chunk (before training on it)")
    axes[1].set_ylabel("cold-slice AUC of the chunk")
    axes[2].set_ylabel("embedding rows held / full's rows (managed fields)")
    for ax in axes:
        ax.set_xlabel("chunk")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def run(*, policies: Sequence[str] = POLICY_NAMES, trials: int = 3, seed_base: int = 0,
        output_dir: str = "results/stream_ml100k", plot: str | None = None, aggregate_only: bool = False,
        data_options: dict[str, Any] | None = None, trial_options: dict[str, Any] | None = None,
        flags_record: dict[str, Any] | None = None, data: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
    """Runs ``trials`` × ``policies`` (resumable) and writes table.md/csv, run_meta.json and the plot."""
    import mdr_tf  # noqa: F401  (sets the Keras backend)
    from data_prep.common import fingerprint

    for p in policies:
        if p not in POLICY_NAMES:
            raise ValueError(f"--policies: unknown policy {p!r}; expected some of {list(POLICY_NAMES)}")
    trial_options = dict(trial_options or {})
    data = data or load_ml100k_stream(**(data_options or {}))
    schema = data["schema"]
    os.makedirs(output_dir, exist_ok=True)
    trial_log = TrialLog(os.path.join(output_dir, "trials.jsonl"))
    commit = _git_commit()
    t_start = time.time()
    total = len(policies) * trials
    done_now = 0
    keys = set()
    log(f"stream: {len(data['labels']):,} events in {trial_options.get('num_chunks', 30)} chunks; "
        f"{len(policies)} policies × {trials} trials → {os.path.abspath(output_dir)}")
    for t in range(trials):  # trials outer, policies inner: policies are interleaved in time
        for pi, pol in enumerate(policies):
            seed = seed_base + t
            key = fingerprint({"policy": pol, "seed": seed, "options": trial_options, "data": data["fingerprint"]})
            keys.add(key)
            idx = t * len(policies) + pi + 1
            if aggregate_only:
                continue
            if trial_log.done(key):
                log(f"[{idx}/{total}] {pol} trial {t}: already done, skipped")
                continue
            log(f"[{idx}/{total}] {pol} trial {t} (seed {seed}) ...")
            row = run_policy_trial(pol, data, seed=seed, log=None, **trial_options)
            row.update({"key": key, "trial": t, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            trial_log.append(row)
            done_now += 1
            eta = (time.time() - t_start) / done_now * (total - idx)
            log(f"[{idx}/{total}] {pol} trial {t}: AUC {row['auc']:.4f} cold AUC {row['cold_auc']:.4f} "
                f"rows {row['rows_final']:,}/{row['rows_full_final']:,} "
                f"({row['seconds']:.0f}s; ETA {eta / 60:.1f} min)")
    rows = [r for r in trial_log.rows if r.get("key") in keys]
    summary = summarize(rows, policies, schema["num_domains"])
    names = schema["domain_names"]
    md = markdown_table(summary, names)
    title = ("# Streaming ML-100k (prequential): embedding assignment policies, mean ± std over trials\n\n"
             f"Chunks after the first {trial_options.get('skip_chunks', 1)}; cold = user or item with < "
             f"{trial_options.get('cold_threshold', 5)} prior events; domains "
             f"{', '.join(f'd{k} = {n}' for k, n in enumerate(names))}. Rows = embedding rows held for the managed "
             "fields (full: one per id seen so far). ▲/▼ = AUC differs from full's (Welch's t-test, p < 0.05).\n\n")
    _atomic_write(os.path.join(output_dir, "table.md"), title + md)
    _atomic_write(os.path.join(output_dir, "table.csv"), csv_table(summary, schema["num_domains"]))
    png = plot_stream(rows, policies, plot or os.path.join(output_dir, "stream.png"),
                      title="ML-100k prequential stream (mean over trials)")
    meta = {"git_commit": commit, "versions": _versions(), "flags": flags_record or {}, "policies": list(policies),
            "trials": trials, "seed_base": seed_base, "trial_options": trial_options,
            "data_fingerprint": data["fingerprint"], "wall_seconds": round(time.time() - t_start, 1)}
    _atomic_write(os.path.join(output_dir, "run_meta.json"), json.dumps(meta, indent=2) + "\n")
    log("\n" + title + md)
    log(f"results: {os.path.abspath(output_dir)}/table.md, table.csv, trials.jsonl, run_meta.json, {png}")
    return {"summary": summary, "table_md": md, "rows": rows, "plot": png}


def _main(f: flags.FlagValues) -> None:
    trial_options = {"model": f.model, "num_chunks": f.num_chunks, "skip_chunks": f.skip_chunks,
                     "cold_threshold": f.cold_threshold, "batch_size": f.batch_size,
                     "learning_rate": f.learning_rate, "epochs_per_chunk": f.epochs_per_chunk,
                     "embedding_dim": f.embedding_dim,
                     "hidden_units": [int(u) for u in f.hidden_units] if f.hidden_units else None,
                     "fields": list(f.fields) if f.fields else None,
                     "policy_args": parse_model_args(f.policy_args), "agent_args": parse_model_args(f.agent_args)}
    flags_record = {flag.name: flag.value for flag in f.get_flags_for_module(sys.modules[__name__])}
    run(policies=f.policies, trials=f.trials, seed_base=f.seed_base, output_dir=f.output_dir, plot=f.plot,
        aggregate_only=f.aggregate_only, trial_options=trial_options, flags_record=flags_record,
        data_options={"raw_path": f.raw_path, "cache_dir": f.cache_dir, "domain_scheme": f.domain_scheme,
                      "label_rule": f.label_rule})


def cli() -> None:
    from data_prep.common import run_cli

    run_cli(define_flags, _main, errors=(ValueError,))


if __name__ == "__main__":
    cli()
