"""Margins over the DNN on conflicting domains, with and without each model's mechanism.

Every model is trained on the synthetic conflicting-domains datasets of
``data_prep.synthetic.generate_conflict`` ("conflict": 5 domains, the two smallest with
the item taste of the largest reversed; "many_small": 20 small domains with random taste
signs) twice per seed: as registered, and with its multi-domain mechanism neutralised
from the outside (weights set to their neutral value and frozen, or per-domain slices
tied together; ``NEUTRALISERS``). Every model is built with ``embed_domain=False``: the
domain reaches a model only through its mechanism, so a neutralised model is a
domain-agnostic model and provably cannot rank the reversed domains (see
``generate_conflict``). ``--embed_domain`` runs the registry setting instead (domain id
as one more input field of every model).

Writes ``<output_dir>/<scenario>/trials.jsonl`` (resumable), ``table.md`` / ``table.csv``
(mean-of-domain test AUC, margin over the DNN, per-domain AUCs, mean ± std over seeds,
Welch's t-test against the DNN) and ``run_meta.json``.

Example (docs/conflicting_domains.md):
  python -m experiments.conflicting_domains --trials=3
  python -m experiments.conflicting_domains --models=mlora --backbone=dcn   # every model that takes it on DCN
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

from absl import flags

# ----------------------------------------------------------------------------- neutralisers
# Each neutraliser gets a built model and (a) sets weights to the value that switches the
# mechanism off and freezes them, or (b) ties per-domain slices (all slices start equal and
# a constraint re-averages them after every optimizer step, so all domains share one copy).
# They look weights up by path suffix and fail loudly when a layout changes.


def _weights(model, suffix: str, required: bool = True) -> list:
    found = [v for v in model.weights if v.path.endswith(suffix)]
    if required and not found:
        raise KeyError(f"{model.name}: no weight whose path ends with {suffix!r}; "
                       f"have {[v.path for v in model.weights]}")
    return found


def freeze(model, suffix: str, value: float = 0.0, required: bool = True) -> int:
    """Sets every weight whose path ends with ``suffix`` to ``value`` and freezes it."""
    import numpy as np

    vs = _weights(model, suffix, required)
    for v in vs:
        v.assign(np.full(v.shape, value, dtype=v.dtype))
        v.trainable = False
    return len(vs)


def _tie_fn(shape: Sequence[int], groups: int, axis: int) -> Callable:
    """Averages the ``groups`` slices of a weight and broadcasts the mean back.

    The slices are ``groups`` consecutive equal parts of ``axis`` (domain-major stacks
    ``[D·P, ...]`` or column blocks ``[n, D·w]``).
    """
    from keras import ops

    shape = tuple(int(s) for s in shape)
    size = shape[axis]
    if size % groups:
        raise ValueError(f"cannot tie {groups} slices of axis {axis} of a weight of shape {shape}")
    split = shape[:axis] + (groups, size // groups) + shape[axis + 1:]

    def tie(w):
        g = ops.reshape(w, split)
        m = ops.mean(g, axis=axis, keepdims=True)
        return ops.reshape(ops.broadcast_to(m, split), shape)

    return tie


def tie(model, suffix: str, groups: int, axis: int = 0, required: bool = True) -> int:
    """Ties the ``groups`` per-domain slices of every weight whose path ends with ``suffix``."""
    vs = _weights(model, suffix, required)
    for v in vs:
        fn = _tie_fn(v.shape, groups, axis)
        v.assign(fn(v))
        v.constraint = fn
    return len(vs)


def _tie_towers(model, prefix: str) -> None:
    d = model.num_domains
    for v in model.weights:
        if f"/{prefix}/" in v.path and v.trainable:
            tie(model, v.path, d, 0)


def _n_mlora(m) -> None:
    freeze(m, "lora_B")
    freeze(m, "lora_c")


def _n_star(m) -> None:
    freeze(m, "kernel_d", 1.0)
    freeze(m, "bias_d", 0.0)
    freeze(m, "aux_out/kernel", 0.0)
    for s in ("pn/gamma_d", "pn/beta_d"):
        freeze(m, s, 1.0 if "gamma" in s else 0.0, required=False)


def _n_dwm(m) -> None:
    # P = f(z) ≡ 0, so M = scale·σ(0 · Q) is one constant for every sample (a plain layer).
    freeze(m, "aux_out/kernel")
    freeze(m, "aux_out/bias")


def _n_hamur_adapter(m) -> None:
    # h + DN(o) with DN's γ = β = 0: the adapter adds nothing.
    freeze(m, "domain_norm/gamma")
    freeze(m, "domain_norm/beta")


def _n_hamur(m) -> None:
    _n_hamur_adapter(m)
    d = m.num_domains
    for v in list(m.weights):
        if not v.trainable:
            continue
        if "/tower_bn_" in v.path:  # [D·u] domain-major
            tie(m, v.path, d, 0)
        elif "/tower_" in v.path:  # kernels [D, n, u], biases [D, u]
            tie(m, v.path, d, 0)


def _n_hierrec(m) -> None:
    # Explicit SOM: SC = FC(e_s) with a zero kernel is one condition for every scenario;
    # the field attention softmax(FC(e_s)) likewise. Per-instance implicit conditions
    # (from the user / item fields) stay: they carry no domain.
    freeze(m, "sc_explicit/kernel")
    freeze(m, "field_attention/kernel")


def _n_towers(m) -> None:
    _tie_towers(m, "towers")


def _n_mmoe(m) -> None:
    _tie_towers(m, "towers")
    _tie_towers(m, "gates")


def _n_ple(m) -> None:
    d = m.num_domains
    _tie_towers(m, "towers")
    for v in list(m.weights):
        if v.trainable and ("/specific_experts/" in v.path or "/domain_gates/" in v.path):
            tie(m, v.path, d, 0)  # specific experts are domain-major [D·P, ...]


def _n_m2m(m) -> None:
    # s = LeakyReLU(e_s W + b) with W ≡ 0: one scenario vector for all, every meta unit
    # shared; likewise the task vector t when it is read from the scenario embedding.
    freeze(m, "scenario/kernel")
    freeze(m, "task/kernel", required=False)


def _n_gates(m) -> None:
    # GateNU γ·σ(W2 ReLU(·) + b2) with W2 = b2 = 0: every gate is γ·σ(0) = 1.
    freeze(m, "gate/w2")
    freeze(m, "gate/b2")


def _n_adasparse(m) -> None:
    # π = β σ(α v), v = [e_d ; h] W ≡ 0: π = 2σ(0) = 1 for every unit (fusion form).
    n = 0
    for v in m.weights:
        if "/adasparse_" in v.path and v.path.endswith("/kernel"):
            v.assign(v * 0)
            v.trainable = False
            n += 1
    if not n:
        raise KeyError(f"{m.name}: no AdaSparse pruner kernel")


def _n_apg(m) -> None:
    # Last generator layer's kernel ≡ 0: S = I + b with b shared (a plain low-rank layer).
    n = 0
    for v in m.weights:
        if "/apg_" in v.path and "gen_kernel_" in v.path:
            last = max(int(w.path.rsplit("_", 1)[1]) for w in m.weights
                       if w.path.startswith(v.path.rsplit("/", 1)[0] + "/gen_kernel_"))
            if int(v.path.rsplit("_", 1)[1]) == last:
                v.assign(v * 0)
                v.trainable = False
                n += 1
    if not n:
        raise KeyError(f"{m.name}: no APG generator kernel")


def _n_sarnet(m) -> None:
    d = m.num_domains
    freeze(m, "transform/scale", 1.0)
    freeze(m, "transform/shift", 0.0)
    for s in ("specific_kernel", "specific_bias", "gate_kernel", "gate_bias"):
        for v in _weights(m, s):
            tie(m, v.path, d, len(v.shape) - 1)  # column blocks [n, D·w]


# name → (extra constructor arguments, weight neutraliser, what it switches off)
NEUTRALISERS: dict[str, tuple[dict, Callable, str]] = {
    "mlora": ({}, _n_mlora, "LoRA B_d ≡ 0 and c_d ≡ 0, frozen"),
    "hamur": ({}, _n_hamur, "adapter off (domain norm γ = β ≡ 0 frozen), towers tied"),
    "hamur_adapter_off": ({}, _n_hamur_adapter, "adapter off only (towers stay per domain)"),
    "midpg": ({}, _n_dwm, "DWM generator output ≡ 0 frozen: M constant"),
    "dpg": ({}, _n_dwm, "DWM generator output ≡ 0 frozen: M constant"),
    "hierrec": ({}, _n_hierrec, "explicit condition and field attention blind to the scenario"),
    "shared_bottom": ({}, _n_towers, "towers tied"),
    "mmoe": ({}, _n_mmoe, "gates and towers tied"),
    "ple": ({}, _n_ple, "specific experts, gates and towers tied"),
    "star": ({"partitioned_norm": False}, _n_star, "W_d ≡ 1, b_d ≡ 0 frozen, no PN, aux output ≡ 0"),
    "m2m": ({}, _n_m2m, "scenario (and task) vector constant: meta units shared"),
    "pepnet": ({}, _n_gates, "every gate ≡ 1 (output layer zero, frozen)"),
    "ppnet": ({}, _n_gates, "every gate ≡ 1"),
    "epnet": ({}, _n_gates, "gate ≡ 1"),
    "adasparse": ({}, _n_adasparse, "pruner kernels ≡ 0 frozen: π ≡ 1"),
    "apg": ({}, _n_apg, "generator output ≡ 0: one shared core"),
    "sarnet": ({}, _n_sarnet, "transform ≡ identity, specific experts and gates tied"),
}

# Suite variants that only change constructor arguments: name → (registry model, arguments).
ARG_VARIANTS: dict[str, tuple[str, dict]] = {
    # APG before the fix: the scenario condition under stop-gradient (MMLRec).
    "apg_detached": ("apg", {"block_config": {"condition": "group", "stop_gradient_condition": True}}),
}

# Registry names of the table (suite variants such as "hamur_adapter_off" build the base model).
MODELS = ["mlora", "hamur", "midpg", "dpg", "hierrec", "shared_bottom", "mmoe", "ple", "star", "m2m",
          "pepnet", "ppnet", "epnet", "adasparse", "apg", "sarnet"]
SCENARIOS = ("conflict", "many_small")
NEUTRAL_SUFFIX = "~neutral"


def base_name(variant: str) -> str:
    """Registry name of a suite variant (``"mlora~neutral"`` → ``"mlora"``)."""
    name = variant.split("~", 1)[0]
    if name in ARG_VARIANTS:
        return ARG_VARIANTS[name][0]
    return "hamur" if name == "hamur_adapter_off" else name


def build_variant(variant: str, schema, model_kwargs: dict | None = None):
    """Builds a registry model, neutralised when ``variant`` ends with ``~neutral``."""
    from mdr_tf import registry

    name, _, mode = variant.partition("~")
    kwargs = dict(model_kwargs or {})
    if name in ARG_VARIANTS:
        kwargs.update(ARG_VARIANTS[name][1])
    fn = None
    if mode == "neutral" or name == "hamur_adapter_off":
        if name not in NEUTRALISERS:
            raise ValueError(f"no neutraliser for {name!r}; have {sorted(NEUTRALISERS)}")
        extra, fn, _ = NEUTRALISERS[name]
        kwargs.update(extra)
    elif mode:
        raise ValueError(f"unknown variant {variant!r}")
    model = registry.get(base_name(variant)).build(schema, **kwargs)
    model.build()
    if fn is not None:
        fn(model)
    return model


def train_variant(variant: str, schema, cfg, model_kwargs: dict | None = None) -> dict[str, Any]:
    """``mdr_tf.training.run_trial`` for a (possibly neutralised) variant; returns its row."""
    import keras

    from mdr_tf import registry
    from mdr_tf.training import evaluate_split

    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    model = build_variant(variant, schema, model_kwargs)
    t0 = time.time()
    stopper = registry.get(base_name(variant)).train(model, schema, cfg)
    row: dict[str, Any] = {"model": variant, "seed": cfg.seed, "best_epoch": stopper.best_epoch,
                           "epochs_run": len(stopper.history), "train_seconds": round(time.time() - t0, 2)}
    row.update({f"test_{k}": v for k, v in evaluate_split(model, schema, "test", cfg.eval_batch_size).items()})
    row.update({f"valid_{k}": v for k, v in evaluate_split(model, schema, "valid", cfg.eval_batch_size).items()})
    return row


# ----------------------------------------------------------------------------- in-memory protocol
# The protocol of tests/test_conflicting_domains.py (and of the table in
# docs/conflicting_domains.md): arrays in memory, fixed epochs, no early stopping.
ARRAYS_PROTOCOL = {"num_rows": 3000, "train_rows": 2048, "epochs": 6, "batch_size": 128, "learning_rate": 5e-3}


def arrays_data(scenario: str = "conflict", num_rows: int = 3000, train_rows: int = 2048, seed: int = 0):
    """``(schema, (x_train, y_train), (x_test, y_test))`` of ``conflict_arrays``, split at random."""
    import numpy as np

    from data_prep.synthetic import conflict_arrays
    from mdr_tf.schema import Schema

    a = conflict_arrays(num_rows=num_rows, scenario=scenario, seed=seed)
    d = len(a["flips"])
    perm = np.random.default_rng(seed).permutation(num_rows)
    tr, te = perm[:train_rows], perm[train_rows:]
    schema = Schema.from_config({
        "num_domains": d, "domain_names": [f"d{k}" for k in range(d)], "label_keys": ["label"],
        "domain_key": "domain_id",
        "features": [{"name": "user_id", "kind": "categorical", "vocab_size": int(a["user"].max()) + 1,
                      "group": "user", "is_id": True},
                     {"name": "item_id", "kind": "categorical", "vocab_size": int(a["item"].max()) + 1,
                      "group": "item", "is_id": True}]})
    x = {"user_id": a["user"], "item_id": a["item"], "domain_id": a["domain"]}
    return schema, ({k: v[tr] for k, v in x.items()}, a["label"][tr]), ({k: v[te] for k, v in x.items()},
                                                                         a["label"][te])


def train_on_arrays(variant: str, schema, train, test, seed: int = 0, epochs: int = 6, batch_size: int = 128,
                    learning_rate: float = 5e-3, model_kwargs: dict | None = None):
    """Trains a variant on in-memory arrays; returns ``(per-domain test AUCs, model)``."""
    import keras
    import numpy as np

    from mdr_tf import metrics as M

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_variant(variant, schema.to_config(), {"embed_domain": False, **(model_kwargs or {})})
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy", jit_compile=False)
    model.fit(train[0], train[1], batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    x, y = test
    p = np.asarray(model(x, training=False)).reshape(-1)
    dom = x[schema.domain_key]
    return np.array([M.auc(y[dom == k], p[dom == k]) for k in range(schema.num_domains)]), model


def run_arrays(scenario: str, variants: Sequence[str], trials: int, output_dir: str,
               shard: tuple[int, int] = (0, 1), aggregate_only: bool = False,
               arch_args: dict[str, dict] | None = None, log=print) -> str:
    """The in-memory protocol over seeds 0..trials-1 (data seed 0, training seed t); resumable.

    ``shard=(i, n)`` runs only the seeds t with t % n == i (appending to its own file);
    a run with the default shard then finds every trial done and writes the table.
    ``arch_args``: ``{registry model: arguments}`` of ``--backbone`` / ``--block`` / ``--hook``
    (``experiments.run.apply_variant``), added to every variant of that model (and to its trial key).
    """
    from data_prep.common import fingerprint

    from experiments.common import TrialLog, atomic_write, git_commit, versions

    out = os.path.join(output_dir, f"{scenario}-arrays")
    os.makedirs(out, exist_ok=True)
    trial_log = TrialLog(os.path.join(out, "trials.jsonl" if shard[1] == 1 else
                                      f"trials-shard-{shard[0]}-of-{shard[1]}.jsonl"))
    schema, train, test = arrays_data(scenario, ARRAYS_PROTOCOL["num_rows"], ARRAYS_PROTOCOL["train_rows"])
    proto = {k: v for k, v in ARRAYS_PROTOCOL.items() if k not in ("num_rows", "train_rows")}
    commit, t_start, done_now, keys = git_commit(), time.time(), 0, set()
    total = len(variants) * trials
    for t in range(trials):
        for i, v in enumerate(variants):
            spec = {"variant": v, "protocol": ARRAYS_PROTOCOL, "scenario": scenario, "seed": t,
                    "neutraliser": NEUTRALISERS.get(v.split("~")[0], ({}, None, ""))[2]
                    if "~" in v or v == "hamur_adapter_off" else ""}
            if v in ARG_VARIANTS:
                spec["args"] = ARG_VARIANTS[v][1]
            arch = (arch_args or {}).get(base_name(v), {})
            if arch:  # (absent without the flags: the keys of earlier runs stay valid)
                spec["arch_args"] = arch
            key = fingerprint(spec)
            keys.add(key)
            idx = t * len(variants) + i + 1
            if aggregate_only or trial_log.done(key) or t % shard[1] != shard[0]:
                continue
            t0 = time.time()
            aucs, _ = train_on_arrays(v, schema, train, test, seed=t, model_kwargs=arch, **proto)
            row = {"key": key, "model": v, "seed": t, "train_seconds": round(time.time() - t0, 2),
                   **{f"test_auc_d{k}": float(a) for k, a in enumerate(aucs)}}
            trial_log.append(row)
            done_now += 1
            eta = (time.time() - t_start) / done_now * (total - idx)
            log(f"[{idx}/{total}] {scenario} (arrays) {v} seed {t}: mean-domain AUC {aucs.mean():.4f} "
                f"({time.time() - t0:.1f}s; ETA {eta / 60:.1f} min)")
    rows = [r for r in trial_log.rows if r.get("key") in keys]
    d = schema.num_domains
    summary = summarise(rows, variants, d)
    md = (f"# {scenario}, in-memory protocol: mean-of-domain test AUC over {trials} seeds\n\n"
          f"{ARRAYS_PROTOCOL}; every model with embed_domain=False. Margin = mean over seeds of "
          f"(model − DNN of the same seed); Welch p against the DNN.{_arch_note(arch_args)}\n\n"
          + markdown(summary, d, list(range(d)) if d <= 6 else []))
    atomic_write(os.path.join(out, "table.md"), md)
    atomic_write(os.path.join(out, "run_meta.json"), json.dumps(
        {"git_commit": commit, "versions": versions(), "scenario": scenario, "protocol": ARRAYS_PROTOCOL,
         "variants": list(variants), "trials": trials, "wall_seconds": round(time.time() - t_start, 1),
         "arch_args": arch_args or {}, "argv": sys.argv}, indent=2) + "\n")
    log("\n" + md)
    return md


def _arch_note(arch_args: dict[str, dict] | None) -> str:
    """The table's note on the ``--backbone`` / ``--block`` / ``--hook`` arguments (empty without them)."""
    if not arch_args:
        return ""
    return " Variant flags: " + "; ".join(f"{m}: {json.dumps(a, sort_keys=True)}" for m, a in arch_args.items()) + "."


def mean_domain_auc(row: dict, num_domains: int) -> float:
    return float(sum(row[f"test_auc_d{k}"] for k in range(num_domains)) / num_domains)


# ----------------------------------------------------------------------------- the sweep
SCENARIO_ROWS = {"conflict": 8_000, "many_small": 12_000}


def summarise(rows: list[dict], variants: Sequence[str], num_domains: int) -> list[dict]:
    """Per variant: mean-of-domain AUC (mean ± std), margin over the DNN, Welch p, per-domain AUCs."""
    import numpy as np
    from scipy import stats

    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["model"], []).append(r)
    base = {r["seed"]: mean_domain_auc(r, num_domains) for r in by.get("dnn", [])}
    out = []
    for v in variants:
        rs = sorted(by.get(v, []), key=lambda r: r["seed"])
        if not rs:
            continue
        m = np.array([mean_domain_auc(r, num_domains) for r in rs])
        margins = np.array([mean_domain_auc(r, num_domains) - base[r["seed"]] for r in rs if r["seed"] in base])
        p = float("nan")
        if v != "dnn" and len(base) >= 2 and len(m) >= 2:
            p = float(stats.ttest_ind(m, list(base.values()), equal_var=False).pvalue)
        out.append({"model": v, "n": len(rs), "mean_auc": float(m.mean()), "mean_auc_std": float(m.std(ddof=1))
                    if len(m) > 1 else 0.0, "margin": float(margins.mean()) if len(margins) else float("nan"),
                    "margin_min": float(margins.min()) if len(margins) else float("nan"), "p": p,
                    "domain_auc": [float(np.mean([r[f"test_auc_d{k}"] for r in rs])) for k in range(num_domains)],
                    "seconds": float(np.mean([r["train_seconds"] for r in rs]))})
    return out


def markdown(summary: list[dict], num_domains: int, show_domains: Sequence[int]) -> str:
    head = ["model", "seeds", "mean-domain AUC", "margin vs DNN (min over seeds)", "Welch p"] + \
        [f"d{k}" for k in show_domains] + ["s/train"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        p = "" if math.isnan(s["p"]) else f"{s['p']:.3f}"
        mg = "" if s["model"] == "dnn" else f"{s['margin']:+.4f} ({s['margin_min']:+.4f})"
        cells = [s["model"], str(s["n"]), f"{s['mean_auc']:.4f} ± {s['mean_auc_std']:.4f}", mg, p] + \
            [f"{s['domain_auc'][k]:.3f}" for k in show_domains] + [f"{s['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_scenario(scenario: str, variants: Sequence[str], trials: int, output_dir: str, data_dir: str,
                 train_kwargs: dict, model_kwargs: dict, num_rows: int | None = None,
                 arch_args: dict[str, dict] | None = None, log=print) -> str:
    """The fit protocol (TFRecords, ``mdr_tf.training``); resumable. ``arch_args`` as in ``run_arrays``."""
    from data_prep.common import fingerprint
    from data_prep.synthetic import generate_conflict

    from experiments.common import TrialLog, atomic_write, git_commit, versions
    from mdr_tf.schema import Schema
    from mdr_tf.training import TrainConfig

    n = num_rows or SCENARIO_ROWS[scenario]
    data_path = os.path.join(data_dir, f"conflict-{scenario}-{n}")
    generate_conflict(data_path, num_rows=n, scenario=scenario)
    schema = Schema.load(data_path)
    out = os.path.join(output_dir, scenario)
    os.makedirs(out, exist_ok=True)
    trial_log = TrialLog(os.path.join(out, "trials.jsonl"))
    commit = git_commit()
    t_start = time.time()
    total = len(variants) * trials
    done_now = 0
    keys = set()
    log(f"{scenario}: {n} rows, {schema.num_domains} domains, train counts {schema.counts('train')}")
    for t in range(trials):  # seed-major: an interrupted sweep has every variant's first seeds
        for i, v in enumerate(variants):
            cfg = TrainConfig(seed=t, **train_kwargs)
            train = {k: val for k, val in vars(cfg).items()
                     if k not in ("verbose", "tensorboard_dir", "checkpoint_dir")}
            spec = {"variant": v, "train": train, "model_kwargs": model_kwargs,
                    "neutraliser": NEUTRALISERS.get(v.split("~")[0], ({}, None, ""))[2]
                    if "~" in v or v == "hamur_adapter_off" else "", "data": schema.raw["fingerprint"]}
            if v in ARG_VARIANTS:
                spec["args"] = ARG_VARIANTS[v][1]
            arch = (arch_args or {}).get(base_name(v), {})
            if arch:
                spec["arch_args"] = arch
            key = fingerprint(spec)
            keys.add(key)
            idx = t * len(variants) + i + 1
            if trial_log.done(key):
                continue
            t0 = time.time()
            row = train_variant(v, schema, cfg, {**model_kwargs, **arch})
            row.update({"key": key, "trial": t, "scenario": scenario})
            trial_log.append(row)
            done_now += 1
            eta = (time.time() - t_start) / done_now * (total - idx)
            log(f"[{idx}/{total}] {scenario} {v} seed {t}: mean-domain AUC "
                f"{mean_domain_auc(row, schema.num_domains):.4f} ({time.time() - t0:.1f}s; ETA {eta / 60:.1f} min)")
    rows = [r for r in trial_log.rows if r.get("key") in keys]
    summary = summarise(rows, variants, schema.num_domains)
    d = schema.num_domains
    show = list(range(d)) if d <= 6 else []
    md = (f"# {scenario}: mean-of-domain test AUC over {trials} seeds\n\n"
          f"{n} rows, {d} domains, train rows per domain {schema.counts('train')}. "
          f"Margin = mean over seeds of (model − DNN of the same seed); Welch p against the DNN."
          f"{_arch_note(arch_args)}\n\n" + markdown(summary, d, show))
    atomic_write(os.path.join(out, "table.md"), md)
    csv = ["model,n,mean_auc,mean_auc_std,margin,margin_min,p," + ",".join(f"auc_d{k}" for k in range(d))]
    csv += [",".join([s["model"], str(s["n"])] + [f"{s[k]:.6f}" for k in
                                                  ("mean_auc", "mean_auc_std", "margin", "margin_min", "p")]
                     + [f"{a:.6f}" for a in s["domain_auc"]]) for s in summary]
    atomic_write(os.path.join(out, "table.csv"), "\n".join(csv) + "\n")
    meta = {"git_commit": commit, "versions": versions(), "scenario": scenario, "num_rows": n,
            "data_fingerprint": schema.raw["fingerprint"], "variants": list(variants), "trials": trials,
            "train": train_kwargs, "model_kwargs": model_kwargs, "wall_seconds": round(time.time() - t_start, 1),
            "arch_args": arch_args or {}, "argv": sys.argv}
    atomic_write(os.path.join(out, "run_meta.json"), json.dumps(meta, indent=2) + "\n")
    log("\n" + md)
    return md


def define_flags() -> None:
    from experiments.run import define_training_flags, define_variant_flags

    define_training_flags(epochs=10)
    define_variant_flags()
    flags.DEFINE_list("scenarios", list(SCENARIOS), "Scenarios of data_prep.synthetic.CONFLICT_PRESETS.")
    flags.DEFINE_list("models", MODELS, "Registry models (each also runs neutralised).")
    flags.DEFINE_list("extra_variants", ["hamur_adapter_off"], "Extra variants (e.g. hamur_adapter_off).")
    flags.DEFINE_boolean("neutral", True, "Also run every model with its mechanism neutralised.")
    flags.DEFINE_boolean("aggregate_only", False, "Train nothing; write the table from the trial files.")
    flags.DEFINE_string("trial_shard", "0/1", "i/n: run only seeds t with t % n == i (--protocol=arrays).")
    flags.DEFINE_integer("trials", 3, "Seeds per variant (0..trials-1).")
    flags.DEFINE_integer("num_rows", None, "Rows (default per scenario: SCENARIO_ROWS).")
    flags.DEFINE_boolean("embed_domain", False, "Give every model the domain id as an input field "
                         "(the registry setting); default False: the domain enters only through the mechanism.")
    flags.DEFINE_enum("protocol", "arrays", ["arrays", "fit"], "arrays: the tests' in-memory protocol "
                      "(ARRAYS_PROTOCOL, seconds per model); fit: TFRecords + mdr_tf.training.fit with exact "
                      "early stopping on mean domain AUC and the training flags.")
    flags.DEFINE_string("data_dir", "data", "Where the generated datasets go.")
    flags.DEFINE_string("output_dir", "results/conflicting_domains", "Results folder.")


def _main(f) -> None:
    from experiments.run import apply_variant, train_kwargs_from_flags, variant_from_flags

    variants = ["dnn"]
    for m in f.models:
        variants += [m, m + NEUTRAL_SUFFIX] if f.neutral else [m]
    variants += list(f.extra_variants)
    # --backbone / --block / --hook: the arguments each registry model's builder takes (as experiments.run).
    arch_args = {m: a for m, a in apply_variant(sorted({base_name(v) for v in variants}),
                                                variant_from_flags(f)).items() if a}
    train_kwargs = train_kwargs_from_flags(f, monitor="mean_auc")
    model_kwargs = {"embedding_dim": f.embedding_dim, "embed_domain": bool(f.embed_domain)}
    out = f.output_dir + ("-embed_domain" if f.embed_domain else "")
    for s in f.scenarios:
        if f.protocol == "arrays":
            if f.embed_domain:
                raise ValueError("--protocol=arrays runs embed_domain=False only (the tests' setting)")
            from experiments.common import parse_shard

            run_arrays(s, variants, f.trials, out, shard=parse_shard(f.trial_shard), aggregate_only=f.aggregate_only,
                       arch_args=arch_args)
            continue
        run_scenario(s, variants, f.trials, out, f.data_dir, train_kwargs, model_kwargs, f.num_rows,
                     arch_args=arch_args)


if __name__ == "__main__":
    from data_prep.common import run_cli

    run_cli(define_flags, _main, errors=(ValueError, KeyError))
