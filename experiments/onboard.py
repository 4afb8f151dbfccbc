"""New-domain onboarding vs retraining from scratch, with one domain held out (docs/onboarding.md).

Per trial (seed ``seed_base + t``), on a copy of the dataset whose held-out domain is the
last domain id:

1. base: the model with the other D - 1 domains, trained on their data only;
2. onboarded: ``add_domain`` (the held-out domain, ``--init_from``) and
   ``onboard_domain`` on the held-out domain's data — only its private parameters train;
   optionally (``--unseen_ids``) a second onboarding that also trains the embedding rows
   of ids only the held-out domain has (ML-100k's age domains partition the users);
3. retrained: the same model trained from scratch on all D domains.

Prints per-domain test AUC, wall seconds, trainable parameters, and whether the old
domains' test predictions are bit-identical to the base model's after ``add_domain`` and
after onboarding. ``--output`` writes every trial and the summary as JSON (atomically).

Examples:
  python -m experiments.onboard                                 # MLoRA, ML-100k, hold out the smallest domain
  python -m experiments.onboard --model=star --epochs=3 --output=results/onboard/star.json
  python -m experiments.onboard --model=hamur --holdout=2 --trials=1
  python -m experiments.onboard --model=dnn --backbone=dcn --block=mlora   # MLoRA on DCN (experiments.run's flags)
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import numpy as np
from absl import flags

from mdr_base.atomic import write_text_atomic


def define_flags() -> None:
    from experiments import run as runner

    runner.define_data_flags()
    runner.define_training_flags(epochs=4)
    runner.define_variant_flags()
    flags.adopt_module_key_flags(runner)  # list them in this script's --help
    flags.DEFINE_string("model", "mlora", "Registered model (standard training procedure), e.g. mlora, dnn, star, "
                        "hamur.")
    flags.DEFINE_integer("holdout", None, "Domain id to hold out (default: the domain with the fewest training "
                         "examples).")
    flags.DEFINE_string("init_from", "mean", "New domain's slices: 'mean', 'init' or an existing domain id.")
    flags.DEFINE_boolean("unseen_ids", True, "Also onboard with the embedding rows of ids only the held-out domain "
                         "has trainable.")
    flags.DEFINE_integer("trials", 2, "Trials (seeds).", lower_bound=1)
    flags.DEFINE_integer("seed_base", 0, "Trial t uses seed seed_base + t.")
    flags.DEFINE_integer("onboard_epochs", None, "Maximum epochs of onboarding (default: --epochs).")
    flags.DEFINE_string("model_args", "{}", "JSON: extra constructor arguments of the model.")
    flags.DEFINE_string("output", None, "If set, write trials and summary as JSON here (atomically).")


def holdout_dataset(schema, holdout: int, output_dir: str):
    """A copy of the dataset whose domain ids put ``holdout`` last (others keep their order).

    Rewrites the TFRecords (domain ids change); reused when it already exists. Returns
    ``(schema, order)`` with ``order[new_id] = original id``.
    """
    from data_prep.common import FeatureDef, existing_output, fingerprint, write_dataset

    from mdr_tf.data import load_arrays
    from mdr_tf.schema import Schema

    d = schema.num_domains
    if not 0 <= holdout < d:
        raise ValueError(f"--holdout={holdout}: expected a domain id in 0..{d - 1}")
    order = [k for k in range(d) if k != holdout] + [holdout]
    if holdout == d - 1:
        return schema, order
    fp = fingerprint({"holdout_of": schema.raw["fingerprint"], "order": order})
    if existing_output(output_dir, fp) is None:
        feats, labels, split = {}, {k: [] for k in schema.label_keys}, []
        for s, name in enumerate(("train", "valid", "test")):
            x, y = load_arrays(schema, name, label_key=schema.label_keys[0])
            for k, v in x.items():
                feats.setdefault(k, []).append(v)
            labels[schema.label_keys[0]].append(y)
            for key in schema.label_keys[1:]:
                labels[key].append(load_arrays(schema, name, label_key=key)[1])
            split.append(np.full(len(y), s, np.int8))
        feats = {k: np.concatenate(v) for k, v in feats.items()}
        new_id = np.argsort(order)  # original id → new id
        vocabs = {}
        for f in schema.categorical:
            path = os.path.join(schema.directory, "vocab", f"{f.name}.txt")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as fh:
                    vocabs[f.name] = [line.rstrip("\n") for line in fh]
        write_dataset(
            output_dir, dataset=schema.raw.get("dataset", "dataset"),
            features=[FeatureDef(f.name, f.kind, f.vocab_size, f.group, f.is_id) for f in schema.features],
            columns={f.name: feats[f.name] for f in schema.features},
            domain=new_id[feats[schema.domain_key]].astype(np.int64),
            domain_names=[schema.domain_names[k] for k in order],
            labels={k: np.concatenate(v) for k, v in labels.items()}, split=np.concatenate(split), vocabs=vocabs,
            fp=fp, num_shards=schema.raw.get("num_shards", 1),
            metadata={"holdout_of": os.path.abspath(schema.directory), "domain_order": order},
            progress=lambda m: None)
    return Schema.load(output_dir), order


def _model_kwargs(embedding_dim: int, extra: dict[str, Any], variant: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The model's arguments: embedding size, the variant flags' (``experiments.run.apply_variant``), then
    ``--model_args``."""
    return {"embedding_dim": embedding_dim, **(variant or {}), **extra}


def _domain_aucs(res: dict[str, float], order: list[int]) -> dict[int, float]:
    """Per original domain id: test AUC (from metrics keyed by the permuted ids)."""
    return {order[k]: res.get(f"auc_d{k}", float("nan")) for k in range(len(order))}


def run_trial(name: str, schema, order: list[int], seed: int, kwargs: dict[str, Any], cfg_kwargs: dict[str, Any],
              onboard_epochs: int, init_from: int | str, unseen: bool, log=print) -> dict[str, Any]:
    """One seed: base on D - 1 domains, add + onboard the last domain, retrain on all."""
    import keras

    from mdr_tf import registry
    from mdr_tf.data import load_arrays
    from mdr_tf.onboarding import add_domain, onboard_domain, unseen_ids
    from mdr_tf.params import parameter_report
    from mdr_tf.training import TrainConfig, evaluate_split, fit, predict_arrays

    spec = registry.get(name)
    if spec.procedure != registry.STANDARD_PROCEDURE:
        raise ValueError(f"model {name!r} uses the {spec.procedure!r} procedure; onboarding runs standard ones")
    d = schema.num_domains
    new_id = d - 1
    old = list(range(d - 1))
    base_cfg = schema.to_config()
    base_cfg["num_domains"], base_cfg["domain_names"] = d - 1, list(schema.domain_names[:-1])
    cfg = TrainConfig(seed=seed, **cfg_kwargs)
    cfg_on = TrainConfig(seed=seed, **{**cfg_kwargs, "epochs": onboard_epochs})
    feats, _ = load_arrays(schema, "test")
    is_old = feats[schema.domain_key] < new_id
    old_rows = {k: v[is_old] for k, v in feats.items()}
    row: dict[str, Any] = {"model": name, "seed": seed, "holdout": order[-1],
                           "holdout_name": schema.domain_names[-1]}

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    base = spec.build(base_cfg, **kwargs)
    base.build()
    t0, c0 = time.time(), time.process_time()
    stop = fit(base, schema, cfg, log=log if cfg.verbose == 0 else None, domains=old)
    row["base_seconds"], row["base_cpu_seconds"] = round(time.time() - t0, 2), round(time.process_time() - c0, 2)
    row["base_best_epoch"] = stop.best_epoch
    row["base_trainable_params"] = parameter_report(base)["trainable"]
    p_base = predict_arrays(base, old_rows)
    row["base_auc"] = _domain_aucs(evaluate_split(base, schema, "test", domains=old), order)

    def onboarded(train_ids=None, tag=""):
        new = add_domain(base, name=schema.domain_names[-1], init_from=init_from, verify="warn")
        same_added = bool(np.array_equal(predict_arrays(new, old_rows), p_base))
        zero_shot = evaluate_split(new, schema, "test", domains=[new_id])["auc"]
        res = onboard_domain(new, schema, cfg_on, log=log if cfg.verbose == 0 else None, train_ids=train_ids)
        p_after = predict_arrays(new, old_rows)
        out = {"seconds": round(res.seconds, 2), "cpu_seconds": round(res.cpu_seconds, 2),
               "trainable_params": res.trainable_params,
               "best_epoch": res.stopper.best_epoch, "epochs_run": len(res.stopper.history),
               "identical_after_add": same_added, "identical_after_onboard": bool(np.array_equal(p_after, p_base)),
               "old_rows_changed": int(np.sum(p_after != p_base)), "zero_shot_auc": zero_shot}
        test = evaluate_split(new, schema, "test")
        out.update({"auc": _domain_aucs(test, order), "overall_auc": test["auc"]})
        log(f"  onboarded{tag}: held-out AUC {out['auc'][order[-1]]:.4f} (before training {zero_shot:.4f}), "
            f"{out['seconds']:.1f}s ({out['cpu_seconds']:.1f} CPU s), {out['trainable_params']:,} trainable params, "
            f"old domains bit-identical: "
            f"after add {same_added}, after onboarding {out['identical_after_onboard']}")
        return out

    row["onboard"] = onboarded()
    if unseen:
        ids = unseen_ids(schema, new_id)
        row["unseen_ids"] = {k: int(len(v)) for k, v in ids.items()}
        row["onboard_ids"] = onboarded({k: v for k, v in ids.items() if len(v)}, " (+ unseen-id embeddings)")
    base = None  # release the base model before the retraining below

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    full = spec.build(schema.to_config(), **kwargs)
    full.build()
    t0, c0 = time.time(), time.process_time()
    stop = fit(full, schema, cfg, log=log if cfg.verbose == 0 else None)
    row["retrain_seconds"] = round(time.time() - t0, 2)
    row["retrain_cpu_seconds"] = round(time.process_time() - c0, 2)
    row["retrain_best_epoch"] = stop.best_epoch
    row["retrain_trainable_params"] = parameter_report(full)["trainable"]
    res = evaluate_split(full, schema, "test")
    row["retrain_auc"] = _domain_aucs(res, order)
    row["retrain_overall_auc"] = res["auc"]
    log(f"  retrained: held-out AUC {row['retrain_auc'][order[-1]]:.4f}, {row['retrain_seconds']:.1f}s "
        f"({row['retrain_cpu_seconds']:.1f} CPU s)")
    return row


def _ms(values: Sequence[float], digits: int = 4) -> str:
    from mdr_tf.metrics import mean_std

    m, s = mean_std([float(v) for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def summary_table(rows: list[dict[str, Any]], domain_names: Sequence[str]) -> str:
    """Markdown table (mean ± std over trials) of the trials' rows."""
    h = rows[0]["holdout"]
    doms = [h] + [k for k in range(len(domain_names)) if k != h]
    head = ["method"] + [f"AUC {domain_names[k]}" + (" (held out)" if k == h else "") for k in doms] + [
        "overall AUC", "wall s", "CPU s", "trainable params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def line(label, aucs, overall, seconds, cpu, params):
        cells = [label] + [_ms([a[k] for a in aucs]) if aucs and not np.isnan(aucs[0].get(k, np.nan)) else "–"
                           for k in doms]
        cells += [_ms(overall) if overall else "–", _ms(seconds, 1) if seconds else "–",
                  _ms(cpu, 1) if cpu else "–", f"{int(np.mean(params)):,}" if params else "–"]
        lines.append("| " + " | ".join(cells) + " |")

    n = len(rows)
    line("base (other domains only)", [{int(k): v for k, v in r["base_auc"].items()} for r in rows], None,
         [r["base_seconds"] for r in rows], [r["base_cpu_seconds"] for r in rows],
         [r["base_trainable_params"] for r in rows])
    zs = [{**{k: float("nan") for k in doms}, h: r["onboard"]["zero_shot_auc"]} for r in rows]
    line("added, not trained (init)", zs, None, None, None, None)
    for key, label in (("onboard", "onboarded: private params"), ("onboard_ids", "onboarded: + unseen-id rows")):
        if key in rows[0]:
            line(label, [{int(k): v for k, v in r[key]["auc"].items()} for r in rows],
                 [r[key]["overall_auc"] for r in rows], [r[key]["seconds"] for r in rows],
                 [r[key]["cpu_seconds"] for r in rows], [r[key]["trainable_params"] for r in rows])
    line("retrained from scratch", [{int(k): v for k, v in r["retrain_auc"].items()} for r in rows],
         [r["retrain_overall_auc"] for r in rows], [r["retrain_seconds"] for r in rows],
         [r["retrain_cpu_seconds"] for r in rows], [r["retrain_trainable_params"] for r in rows])
    out = "\n".join(lines) + "\n\n"
    for key, label in (("onboard", "private params"), ("onboard_ids", "+ unseen-id rows")):
        if key in rows[0]:
            a = sum(r[key]["identical_after_add"] for r in rows)
            b = sum(r[key]["identical_after_onboard"] for r in rows)
            changed = max(r[key]["old_rows_changed"] for r in rows)
            out += (f"Old domains' test predictions bit-identical to the base model ({label}): after add_domain "
                    f"{a}/{n} trials, after onboarding {b}/{n} trials (at most {changed} rows changed).\n")
    return out


def run(*, dataset: str = "ml100k", raw_path: str | None = None, data_dir: str = "data",
        dataset_options: dict[str, Any] | None = None, model: str = "mlora", holdout: int | None = None,
        init_from: int | str = "mean", unseen: bool = True, trials: int = 2,
        seed_base: int = 0, train_kwargs: dict[str, Any] | None = None, onboard_epochs: int | None = None,
        embedding_dim: int = 16, model_args: dict[str, Any] | None = None, output: str | None = None,
        variant: dict[str, str | None] | None = None, log=print) -> dict[str, Any]:
    """Runs the trials; returns ``{"rows", "table_md", "summary"}`` (see module doc).

    ``variant``: ``{"backbone", "block", "hook"}`` (``--backbone`` / ``--block`` / ``--hook``), applied
    as ``experiments.run`` does (``apply_variant``; a flag the model's builder does not take is an error).
    """
    import mdr_tf  # noqa: F401  (sets the Keras backend)
    from experiments.common import prepare_dataset
    from experiments.run import apply_variant, variant_label
    from mdr_tf import registry
    from mdr_tf.schema import Schema

    registry.get(model)
    applied = apply_variant([model], variant, {model: dict(model_args or {})})[model]
    label = variant_label(model, applied)
    data_path = prepare_dataset(dataset, data_dir, raw_path, dict(dataset_options or {}))
    schema = Schema.load(data_path)
    if holdout is None:
        holdout = int(np.argmin(schema.counts("train")))
    t0 = time.time()
    perm, order = holdout_dataset(schema, holdout, f"{data_path}-holdout{holdout}")
    log(f"{dataset}: {schema.num_domains} domains {list(schema.domain_names)}; held out: {holdout} "
        f"({schema.domain_names[holdout]}); data {perm.directory} ({time.time() - t0:.1f}s)")
    train_kwargs = dict(train_kwargs or {})
    kwargs = _model_kwargs(embedding_dim, dict(model_args or {}), applied)
    rows = []
    for t in range(trials):
        seed = seed_base + t
        log(f"[{t + 1}/{trials}] {model} seed {seed} ...")
        rows.append(run_trial(model, perm, order, seed, kwargs, train_kwargs,
                              onboard_epochs or train_kwargs.get("epochs", 4), init_from, unseen, log))
    table = summary_table(rows, schema.domain_names)
    title = (f"{label} on {dataset}, held-out domain {schema.domain_names[holdout]} (id {holdout}), "
             f"init_from={init_from}, {trials} trial(s), mean ± std; model kwargs {json.dumps(kwargs)}\n\n")
    log("\n" + title + table)
    result = {"rows": rows, "table_md": title + table, "model": label, "dataset": dataset, "holdout": holdout,
              "model_kwargs": kwargs, "train": train_kwargs, "wall_seconds": round(time.time() - t0, 1)}
    if output:
        write_text_atomic(output, json.dumps(result, indent=2, default=float) + "\n", makedirs=True)
        log(f"wrote {output}")
    return result


def _main(f: flags.FlagValues) -> None:
    from experiments.common import parse_options
    from experiments.run import parse_model_args, train_kwargs_from_flags, variant_from_flags

    init_from: int | str = int(f.init_from) if f.init_from.lstrip("-").isdigit() else f.init_from
    run(dataset=f.dataset, raw_path=f.raw_path, data_dir=f.data_dir,
        dataset_options=parse_options(f.dataset_options), model=f.model, holdout=f.holdout,
        init_from=init_from, unseen=f.unseen_ids, trials=f.trials, seed_base=f.seed_base,
        train_kwargs=train_kwargs_from_flags(f), onboard_epochs=f.onboard_epochs, embedding_dim=f.embedding_dim,
        model_args=parse_model_args(f.model_args), output=f.output, variant=variant_from_flags(f))


def cli() -> None:
    from data_prep.common import run_cli

    run_cli(define_flags, _main, errors=(ValueError,))


if __name__ == "__main__":
    cli()
