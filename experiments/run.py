"""Main job: prepare a dataset, train models for N trials, print and save a paper-style table.

Every finished trial is appended to ``<output_dir>/trials.jsonl`` at once; a rerun with
the same settings skips finished trials, so an interrupted run resumes where it stopped.
The table (Markdown + CSV) and the run metadata (git commit, package versions, flags,
dataset fingerprint) are written atomically at the end.

Examples:
  python -m experiments.run                                   # ML-100k, default models
  python -m experiments.run --trials=10                       # the papers' 10 trials
  python -m experiments.run --models=dnn,mlora --epochs=20 --output_dir=results/x
  python -m experiments.run --models=dnn --backbone=dcn --block=mlora   # MLoRA on DCN
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Sequence

from absl import app, flags

from experiments.common import (TrialLog, TrialsFailed, atomic_write, git_commit, parse_options,  # noqa: F401
                                parse_shard, prepare_dataset, trial_key, versions)



def define_data_flags() -> None:
    """``--dataset``, ``--raw_path``, ``--data_dir``, ``--dataset_options`` (shared by the scripts)."""
    from data_prep import registry as data_registry

    flags.DEFINE_string("dataset", "ml100k", "Dataset name: " + ", ".join(sorted(data_registry.DATASETS)) + ".")
    flags.DEFINE_string("raw_path", None, "Raw data (zip or folder); ML-100k defaults to the recbole wheel copy.")
    flags.DEFINE_string("data_dir", "data", "Root folder of prepared datasets.")
    flags.DEFINE_list("dataset_options", [], "Extra prepare options as key=value (e.g. domain_scheme=gender).")


def define_training_flags(epochs: int) -> None:
    """The training flags the scripts share; ``train_kwargs_from_flags`` reads them."""
    flags.DEFINE_integer("epochs", epochs, "Maximum epochs per training (early stopping decides).", lower_bound=1)
    flags.DEFINE_integer("patience", 2, "Early-stopping patience (epochs).", lower_bound=0)
    flags.DEFINE_integer("batch_size", 512, "Training batch size (papers: 512).", lower_bound=1)
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (papers: 1e-3); finite, > 0.")
    flags.register_validator("learning_rate", lambda v: v is not None and math.isfinite(v) and v > 0,
                             "--learning_rate must be a finite number > 0")
    flags.DEFINE_integer("embedding_dim", 16, "Embedding size.", lower_bound=1)
    flags.DEFINE_integer("steps_per_execution", 16, "Train steps per compiled call.", lower_bound=1)
    flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA-compile the train step.")
    flags.DEFINE_integer("verbose", 0, "Keras fit verbosity (0 = one line per epoch from mdr_tf).")
    flags.DEFINE_enum("optimizer", "adam", ["adam", "lazy_adam"], "adam: Keras' dense Adam (the papers'); lazy_adam: "
                      "only the embedding rows a batch reads are updated (mdr_tf.optimizers.LazyAdam).")


def validate_model_list(flag_name: str = "models") -> None:
    """Rejects an empty ``--models=`` (it would silently mean "all") and a name listed twice."""

    def check(value) -> bool:
        if value is None:
            return True
        if not value or any(not v.strip() for v in value):
            raise flags.ValidationError(f"--{flag_name} is empty or has an empty entry; omit the flag for the "
                                        "default list")
        twice = sorted({v for v in value if value.count(v) > 1})
        if twice:
            raise flags.ValidationError(f"--{flag_name}: {', '.join(twice)} listed twice")
        return True

    flags.register_validator(flag_name, check)


def train_kwargs_from_flags(f: flags.FlagValues, **extra: Any) -> dict[str, Any]:
    """``TrainConfig`` arguments from the flags of ``define_training_flags`` (plus ``extra``)."""
    jit = {"auto": "auto", "true": True, "false": False}[f.jit_compile]
    return dict(epochs=f.epochs, batch_size=f.batch_size, learning_rate=f.learning_rate, patience=f.patience,
                steps_per_execution=f.steps_per_execution, jit_compile=jit, verbose=f.verbose,
                optimizer=f.optimizer, **extra)


def parse_model_args(text: str) -> dict[str, Any]:
    """``--model_args`` JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise app.UsageError(f"--model_args is not valid JSON: {e}")


def embedding_kwargs(precision: str, bits: int, quantization: str | dict = "{}") -> dict[str, Any]:
    """Model arguments of a low-precision embedding table (none for "fp", so fp trial keys are unchanged)."""
    if precision == "fp":
        return {}
    if not 2 <= bits <= 16:
        raise app.UsageError(f"--embedding_bits={bits}: expected 2..16")
    q = quantization
    if isinstance(q, str):
        try:
            q = json.loads(q)
        except json.JSONDecodeError as e:
            raise app.UsageError(f"--embedding_quantization is not valid JSON: {e}")
    if not isinstance(q, dict):
        raise app.UsageError(f"--embedding_quantization: expected a JSON object, got {q!r}")
    return {"embedding_precision": precision, "embedding_bits": int(bits), "embedding_quantization": q}


def define_flags() -> None:
    define_data_flags()
    define_training_flags(epochs=4)  # the main job's default keeps it under 15 min
    from mdr_tf import registry

    flags.DEFINE_list("models", None, "Models to run (default: the registry's main table: "
                      + ",".join(registry.names(main_table_only=True)) + "). All: " + ", ".join(registry.names())
                      + ".")
    validate_model_list("models")
    flags.DEFINE_integer("trials", 2, "Trials per model (the papers use 10).", lower_bound=1)
    flags.DEFINE_integer("seed_base", 0, "Trial t uses seed seed_base + t.")
    flags.DEFINE_enum("monitor", "auc", ["auc", "mean_auc", "wauc"], "Validation metric for early stopping.")
    flags.DEFINE_list("hidden_units", None, "Override the models' hidden widths (default per model: 128,64,32).")
    flags.DEFINE_enum("mode", "mixed", ["mixed", "single_domain"], "Batch composition.")
    flags.DEFINE_string("model_args", "{}", 'JSON: {"model": {"arg": value}} extra constructor arguments.')
    flags.DEFINE_string("output_dir", None, "Results folder (default: results/<dataset>).")
    flags.DEFINE_string("export_dir", None, "If set, export each model's first trial as a SavedModel here.")
    flags.DEFINE_string("trial_shard", "0/1", "i/n: run only trials t with t % n == i (split sweeps).")
    flags.DEFINE_boolean("aggregate_only", False, "Rebuild tables from trials*.jsonl without training.")
    flags.DEFINE_boolean("tensorboard", False, "Log every trial to <output_dir>/tensorboard/.")
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker_mirrored"],
                      "tf.distribute strategy (--batch_size is the global batch).")
    flags.DEFINE_enum("embedding_precision", "fp", ["fp", "lpt_dr", "lpt_sr", "alpt"],
                      "Embedding table precision: float32, or low-precision training with deterministic / "
                      "stochastic rounding (LPT) or a learned step size (ALPT); docs/models/alpt.md.")
    flags.DEFINE_integer("embedding_bits", 8, "Bit width of a low-precision embedding table (2-16).")
    flags.DEFINE_string("embedding_quantization", "{}", 'JSON: further QuantizedEmbedding arguments, e.g. '
                        '{"step": "table", "delta_lr": 1e-5, "grad_scale": "mpe"}.')
    flags.DEFINE_boolean("checkpoint", True, "Checkpoint every epoch under <output_dir>/checkpoints so a "
                         "killed run resumes mid-trial.")
    define_variant_flags()


def define_variant_flags() -> None:
    """``--backbone``, ``--block``, ``--hook``: put a mechanism on a backbone without JSON.

    Each applies to every selected model whose builder takes the argument (see
    ``variant_kwargs``); e.g. MLoRA on DCN is ``--models=dnn --backbone=dcn --block=mlora``
    (or ``--models=mlora --backbone=dcn``). ``variant_from_flags`` reads them.
    """
    from mdr_tf.layers.blocks import BLOCKS, HOOKS
    from mdr_tf.models.backbones import BACKBONES

    flags.DEFINE_enum("backbone", None, list(BACKBONES), "Backbone of every model whose builder takes one "
                      "(dnn, wdl, dcn, deepfm, apg, mlora*, midpg*, dpg, hamur_wdl/dcn); the model is labelled "
                      "name[backbone=...] in the tables.")
    flags.DEFINE_enum("block", None, sorted(BLOCKS), "Dense block of every BackboneModel entry (dnn, wdl, dcn, "
                      "deepfm, apg): e.g. --models=dnn --backbone=dcn --block=mlora is MLoRA on DCN. The entry's "
                      "block_config is dropped when the block changes (set one with --model_args).")
    flags.DEFINE_enum("hook", None, sorted(HOOKS), "Domain hook between the layers of every BackboneModel entry "
                      "(e.g. hamur, ppnet); hook_config from --model_args.")


def variant_from_flags(f: flags.FlagValues) -> dict[str, str | None]:
    """``{"backbone", "block", "hook"}`` from the flags of ``define_variant_flags``."""
    return {"backbone": f.backbone, "block": f.block, "hook": f.hook}


def _model_kwargs(name: str, common: dict[str, Any], per_model: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Common overrides the model's constructor accepts, then the model's own arguments.

    A builder function that forwards ``**kwargs`` to a model class (``mlora_model``,
    ``build_hierrec``, ...) accepts what that class accepts: the class is its return
    annotation (``ModelSpec.accepted_args``).
    """
    from mdr_tf import registry

    accepted = registry.get(name).accepted_args()
    kept = {k: v for k, v in common.items() if k in accepted}
    return {**kept, **per_model.get(name, {})}


VARIANT_ARGS = ("backbone", "block", "hook")


def variant_kwargs(name: str, variant: dict[str, str], per_model: dict[str, dict[str, Any]] | None = None
                   ) -> dict[str, Any]:
    """The ``--backbone`` / ``--block`` / ``--hook`` arguments that apply to model ``name``.

    A flag applies to a model whose builder names the argument: the ``BackboneModel``
    entries (dnn, wdl, dcn, deepfm, apg) take all three; the builders of MLoRA, MI-DPG / DPG
    and HAMUR-on-a-backbone take ``backbone``. When ``block`` (``hook``) replaces the model's own
    block (hook), the entry's ``block_config`` (``hook_config``) is dropped too (it belongs
    to the replaced mechanism), unless ``per_model`` sets one. ``{}`` when none applies.
    """
    from mdr_tf import registry

    spec = registry.get(name)
    own = _named_builder_args(spec)
    out = {k: v for k, v in variant.items() if v is not None and k in own}
    resolved = {**spec.builder_defaults(), **spec.defaults}
    for arg, config in (("block", "block_config"), ("hook", "hook_config")):
        if arg in out and out[arg] != resolved.get(arg) and config not in (per_model or {}).get(name, {}):
            out[config] = {}
    return out


def apply_variant(models: Sequence[str], variant: dict[str, str | None] | None,
                  per_model: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``variant_kwargs`` of every model in ``models``: ``{model: arguments}``.

    The experiment scripts with ``define_variant_flags`` call this once: it refuses an
    unknown argument and a flag that applies to none of ``models`` (a clear ``ValueError``).
    """
    from mdr_tf import registry

    variant = {k: v for k, v in (variant or {}).items() if v is not None}
    if set(variant) - set(VARIANT_ARGS):
        raise ValueError(f"variant: unknown arguments {sorted(set(variant) - set(VARIANT_ARGS))}; "
                         f"expected {VARIANT_ARGS}")
    applied = {m: variant_kwargs(m, variant, per_model) for m in models}
    for arg, value in variant.items():
        if not any(arg in a for a in applied.values()):
            takers = [n for n in registry.names() if variant_kwargs(n, {arg: value})]
            raise ValueError(f"--{arg}={value} applies to none of the models {list(models)}; it applies to "
                             f"models whose builder takes {arg!r}: {', '.join(takers)}")
    return applied


def _named_builder_args(spec) -> set[str]:
    """Arguments the builder itself names (a ``BackboneModel`` entry: the class's)."""
    import inspect

    from mdr_tf import registry

    builder = registry.load(spec.builder)
    fn = builder.__init__ if isinstance(builder, type) else builder
    return {p.name for p in inspect.signature(fn).parameters.values()
            if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}


def variant_label(name: str, applied: dict[str, Any]) -> str:
    """The table name of a model run with variant flags, e.g. ``dnn[backbone=dcn,block=mlora]``."""
    shown = [f"{k}={applied[k]}" for k in VARIANT_ARGS if k in applied]
    return f"{name}[{','.join(shown)}]" if shown else name


def _variant_family(name: str, applied: dict[str, Any]) -> str:
    """Registry family of a model; with ``--block`` / ``--hook`` applied, "seed" when the
    result has a domain mechanism (a block other than "plain", or a hook), else "backbone"."""
    from mdr_tf import registry

    spec = registry.get(name)
    if not {"block", "hook"} & set(applied):
        return spec.family
    resolved = {**spec.builder_defaults(), **spec.defaults, **applied}
    return "seed" if resolved.get("block", "plain") != "plain" or resolved.get("hook") else "backbone"


def run(
    *,
    dataset: str = "ml100k",
    raw_path: str | None = None,
    data_dir: str = "data",
    dataset_options: dict[str, Any] | None = None,
    models: Sequence[str] | None = None,
    trials: int = 2,
    seed_base: int = 0,
    train_kwargs: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    per_model_args: dict[str, dict[str, Any]] | None = None,
    output_dir: str | None = None,
    export_dir: str | None = None,
    flags_record: dict[str, Any] | None = None,
    trial_shard: tuple[int, int] = (0, 1),
    aggregate_only: bool = False,
    tensorboard: bool = False,
    checkpoint: bool = False,
    base_model: str | None = None,
    paper: dict[str, Any] | None = None,
    variant: dict[str, str | None] | None = None,
    log=print,
) -> dict[str, Any]:
    """Runs the trials and writes the tables; returns {"summary", "table_md", "output_dir", "rows"}.

    Args:
      trial_shard: ``(i, n)``: run only trials ``t`` with ``t % n == i`` (split a sweep over
        processes or machines; each shard appends to ``trials-shard-i-of-n.jsonl``; copy the
        files into one folder and run with ``aggregate_only`` to merge).
      aggregate_only: train nothing; rebuild the tables from the trial files.
      tensorboard: log each trial to ``<output_dir>/tensorboard/<model>/seed<k>``.
      checkpoint: save every epoch under ``<output_dir>/checkpoints/<trial key>`` so that a
        killed run resumes inside the interrupted trial (finished trials are deleted).
      base_model: reference for RelaImpr (default: "dnn" if run, else the first model).
      paper: {"metric_columns": [...], "rows": {model: {column: value}}} printed beside ours.
      variant: ``{"backbone": ..., "block": ..., "hook": ...}`` (None = unset) applied to
        every model whose builder names the argument (``variant_kwargs``); such a model
        is labelled ``name[backbone=...,block=...]`` in the tables and trial log.
    """
    import mdr_tf  # noqa: F401  (sets the Keras backend)
    from mdr_tf import registry, report
    from mdr_tf.schema import Schema
    from mdr_tf.training import NonFiniteLossError, TrainConfig
    from mdr_tf.trial import run_trial
    if dataset == "ml100k_multibehavior":  # top-N data (no CTR schema): its own runner
        raise ValueError("--dataset=ml100k_multibehavior is a top-N ranking dataset: run it with "
                         "`python -m experiments.topn` (docs/models/cigf.md)")
    if models is not None and not list(models):
        raise ValueError("models: empty list (pass None for the registry's main table)")
    models = list(models or registry.names(main_table_only=True))
    if len(set(models)) != len(models):
        raise ValueError(f"models: {sorted({m for m in models if models.count(m) > 1})} listed twice")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    for m in models:
        registry.get(m)  # fail fast on unknown names
    variant = {k: v for k, v in (variant or {}).items() if v is not None}
    applied = apply_variant(models, variant, per_model_args)
    labels = {m: variant_label(m, applied[m]) for m in models}
    data_path = prepare_dataset(dataset, data_dir, raw_path, dict(dataset_options or {}))
    schema = Schema.load(data_path)
    output_dir = output_dir or os.path.join("results", dataset)
    os.makedirs(output_dir, exist_ok=True)
    shard_i, shard_n = trial_shard
    if not 0 <= shard_i < shard_n:
        raise ValueError(f"trial shard {shard_i}/{shard_n}: expected 0 <= i < n")
    log_path = os.path.join(output_dir, "trials.jsonl" if shard_n == 1 else
                            f"trials-shard-{shard_i}-of-{shard_n}.jsonl")
    trial_log = TrialLog(log_path)
    train_kwargs = dict(train_kwargs or {})
    model_kwargs = dict(model_kwargs or {})
    per_model_args = dict(per_model_args or {})
    total = len(models) * trials
    t_start = time.time()
    commit = git_commit()  # the code this process imported (the checkout may move while it runs)
    finished_now = 0
    log(f"dataset {dataset}: {schema.raw['num_examples']:,} examples, {schema.num_domains} domains "
        f"{list(schema.domain_names)} (data in {data_path})")
    log(f"{len(models)} models × {trials} trials; results → {os.path.abspath(output_dir)}")
    keys = {}
    for mi, name in enumerate(models):
        kwargs = {**_model_kwargs(name, model_kwargs, {}), **applied[name], **per_model_args.get(name, {})}
        label = labels[name]
        for t in range(trials):
            seed = seed_base + t
            tb = os.path.join(output_dir, "tensorboard", label, f"seed{seed}") if tensorboard else None
            cfg = TrainConfig(seed=seed, tensorboard_dir=tb, **train_kwargs)
            if checkpoint:
                cfg.checkpoint_dir = os.path.join(output_dir, "checkpoints",
                                                  trial_key(name, cfg, kwargs, schema.raw["fingerprint"]))
            key = trial_key(name, cfg, kwargs, schema.raw["fingerprint"])
            keys[key] = label
            idx = mi * trials + t + 1
            if aggregate_only or t % shard_n != shard_i:
                continue
            if trial_log.done(key):
                log(f"[{idx}/{total}] {label} trial {t} (seed {seed}): already done, skipped")
                continue
            log(f"[{idx}/{total}] {label} trial {t} (seed {seed}) ...")
            t0 = time.time()
            try:
                row, model = run_trial(name, schema, cfg, kwargs, log=log if cfg.verbose == 0 else None,
                                       return_model=True)
            except NonFiniteLossError as e:
                trial_log.append({"model": label, "seed": seed, "key": key, "trial": t, "dataset": dataset,
                                  "status": "failed", "error": str(e),
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
                log(f"[{idx}/{total}] {label} trial {t}: FAILED: {e}")
                continue
            row.update({"model": label, "key": key, "trial": t, "dataset": dataset,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            if export_dir and t == 0:
                from mdr_tf.export import export_saved_model

                row["export_path"] = export_saved_model(model, os.path.join(export_dir, label), version=1)
            trial_log.append(row)
            if cfg.checkpoint_dir:
                import shutil

                shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)
            finished_now += 1
            elapsed = time.time() - t_start
            eta = elapsed / finished_now * (total - idx)
            log(f"[{idx}/{total}] {label} trial {t}: test AUC {row['test_auc']:.4f} LogLoss {row['test_logloss']:.4f} "
                f"(best epoch {row['best_epoch']}, {time.time() - t0:.1f}s; ETA {eta / 60:.1f} min)")
            del model
    rows = [r for r in trial_log.rows if r.get("key") in keys]
    failed = {r["key"]: r for r in trial_log.failed if r.get("key") in keys and not trial_log.done(r["key"])}
    table_models = [labels[m] for m in models]
    summary = report.aggregate(rows, table_models, schema.num_domains)
    base = base_model or ("dnn" if "dnn" in table_models else table_models[0])
    families = {labels[m]: _variant_family(m, applied[m]) for m in models}
    report.add_significance(summary, rows, base_model=base, family_of=families.get)
    md = report.markdown_table(summary, schema.num_domains, schema.domain_names)
    if paper:
        md += "\n" + report.paper_comparison(summary, paper)
    title = (f"# {dataset}: test metrics, mean ± std over trials\n\n"
             f"Domains: {', '.join(f'd{k} = {n}' for k, n in enumerate(schema.domain_names))}. "
             f"Exact AUC; WAUC = test-size-weighted mean of domain AUCs. RelaImpr vs {base}. "
             f"* = AUC better than the best other non-seed model (Welch's t-test over trials, p < 0.05).\n\n")
    if failed:
        title += (f"**{len(failed)} trial(s) failed and are not in the table:** "
                  + "; ".join(f"{r['model']} trial {r['trial']} ({r['error'].split(':')[0]})" for r in failed.values())
                  + f" (details in {os.path.basename(log_path)}).\n\n")
    atomic_write(os.path.join(output_dir, "table.md"), title + md)
    atomic_write(os.path.join(output_dir, "table.csv"), report.csv_table(summary, schema.num_domains))
    meta = {"git_commit": commit, "versions": versions(), "flags": flags_record or {},
            "dataset": dataset, "data_dir": os.path.abspath(data_path),
            "data_fingerprint": schema.raw["fingerprint"], "data_checksums": schema.raw.get("checksums"),
            "models": models, "variant": variant, "trials": trials, "seed_base": seed_base, "train": train_kwargs,
            "model_kwargs": model_kwargs, "per_model_args": per_model_args,
            "wall_seconds": round(time.time() - t_start, 1)}
    atomic_write(os.path.join(output_dir, "run_meta.json"), json.dumps(meta, indent=2) + "\n")
    log("\n" + title + md)
    log(f"results: {os.path.abspath(output_dir)}/table.md, table.csv, trials.jsonl, run_meta.json "
        f"({time.time() - t_start:.0f}s)")
    if failed:
        raise TrialsFailed(f"{len(failed)} of {len(keys)} trials failed: "
                           + "; ".join(f"{r['model']} trial {r['trial']}: {r['error']}" for r in failed.values()))
    return {"summary": summary, "table_md": md, "output_dir": output_dir, "rows": rows, "data_dir": data_path}


def _main(f: flags.FlagValues) -> None:
    model_kwargs: dict[str, Any] = {"embedding_dim": f.embedding_dim}
    if f.hidden_units:
        model_kwargs["hidden_units"] = [int(u) for u in f.hidden_units]
    model_kwargs.update(embedding_kwargs(f.embedding_precision, f.embedding_bits, f.embedding_quantization))
    train_kwargs = train_kwargs_from_flags(f, monitor=f.monitor, mode=f.mode, strategy=f.strategy)
    flags_record = {flag.name: flag.value for flag in f.get_flags_for_module(sys.modules[__name__])}
    run(dataset=f.dataset, raw_path=f.raw_path, data_dir=f.data_dir,
        dataset_options=parse_options(f.dataset_options), models=f.models, trials=f.trials,
        seed_base=f.seed_base, train_kwargs=train_kwargs, model_kwargs=model_kwargs,
        per_model_args=parse_model_args(f.model_args), output_dir=f.output_dir, export_dir=f.export_dir,
        flags_record=flags_record, trial_shard=parse_shard(f.trial_shard),
        aggregate_only=f.aggregate_only, tensorboard=f.tensorboard, checkpoint=f.checkpoint,
        variant=variant_from_flags(f))


def cli() -> None:
    from data_prep.common import run_cli

    run_cli(define_flags, _main, errors=(ValueError,))  # DataError, unknown model/dataset names, bad options


if __name__ == "__main__":
    cli()
