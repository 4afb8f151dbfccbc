"""ALPT / LPT measurement: AUC, LogLoss, training speed and table bytes per embedding precision.

For every model and every configuration (fp32, and {LPT-DR, LPT-SR, ALPT} × bit widths)
runs ``experiments.run`` trials (one resumable trial log per configuration under
``<output_dir>/<config>/``), then writes one table (``table.md``, ``table.csv``): test AUC and
LogLoss mean ± std over trials, the AUC difference to fp32 with Welch's p, the stored table
bytes and the SavedModel size. ``--speed`` also measures training samples/s of every
configuration relative to fp32, interleaved in this process (fused XLA training path, one
epoch of each configuration per round, median over rounds).

  python -m experiments.alpt --models=dnn,mlora,star --trials=3 --epochs=2
  python -m experiments.alpt --aggregate_only      # rebuild the table from the trial logs
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Sequence

from absl import flags

from experiments.common import atomic_write as _atomic_write
from experiments.common import parse_options as _parse_options
from experiments.run import (define_data_flags, define_training_flags, define_variant_flags, embedding_kwargs, run,
                             train_kwargs_from_flags, variant_from_flags, variant_kwargs)


def configs(modes: Sequence[str], bits: Sequence[int]) -> list[tuple[str, int]]:
    """``("fp", 32)`` then every (mode, bits)."""
    return [("fp", 32)] + [(m, int(b)) for b in bits for m in modes]


def config_name(mode: str, bits: int) -> str:
    return "fp32" if mode == "fp" else f"{mode}-{bits}"


def _welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def saved_model_bytes(model, fold: bool | str = False) -> int:
    """Bytes of the exported SavedModel's variables (``mdr_tf.export``).

    ``fold=False`` (default here): the model's own variables. The export's default ("auto")
    also stores, for a float32 DNN or STAR, the first dense layer folded into the table for
    batch-1 serving (``mdr_tf.folding``; a quantised table is not folded), which would make
    the fp32 model look several times larger than its parameters.
    """
    from mdr_tf.export import export_saved_model

    with tempfile.TemporaryDirectory() as d:
        path = export_saved_model(model, d, version=1, fold=fold)
        var_dir = os.path.join(path, "variables")
        return sum(os.path.getsize(os.path.join(var_dir, f)) for f in os.listdir(var_dir))


def speed(schema, models: Sequence[str], cfgs: Sequence[tuple[str, int]], quant: dict, batch_size: int,
          steps_per_execution: int, rounds: int, log=print,
          variants: dict[str, tuple[str, int, dict]] | None = None,
          variant: dict[str, str | None] | None = None) -> dict[str, dict[str, float]]:
    """Training samples/s per (model, config), interleaved: one epoch of each per round, medians.

    ``variants`` adds named configurations ``{name: (mode, bits, quantization overrides)}``
    (e.g. ALPT with ``delta_grad="first_pass"``) to the same interleaved rounds.

    Records samples per wall second and per CPU second of this process (``relative_to_fp32``
    is the CPU figure: on a shared machine the wall clock mostly measures the scheduler).

    Uses the default fused training path (``mdr_tf.training.fit``: K steps in one XLA
    program gathering from in-memory columns). Also records the SavedModel size.
    """
    import keras

    from experiments.common import fused_epoch
    from mdr_tf import registry
    from mdr_tf.params import parameter_report
    from mdr_tf.training import TrainConfig, compile_model

    out: dict[str, dict[str, float]] = {}
    for name in models:
        epochs = {}
        runs = [(config_name(mode, bits), mode, bits, quant) for mode, bits in cfgs]
        runs += [(vname, mode, int(bits), {**quant, **over}) for vname, (mode, bits, over) in (variants or {}).items()]
        for key, mode, bits, run_quant in runs:
            keras.utils.set_random_seed(0)
            model = registry.get(name).build(schema, **embedding_kwargs(mode, bits, run_quant),
                                             **variant_kwargs(name, variant or {}))
            model.build()
            compile_model(model, TrainConfig(batch_size=batch_size, steps_per_execution=1))

            epoch = fused_epoch(model, schema, batch_size, steps_per_execution)
            out[f"{name}/{key}"] = {"table_bytes": parameter_report(model)["table_bytes"]}

            epoch()  # compile + warm-up
            epochs[key] = epoch
        rates: dict[str, list[float]] = {k: [] for k in epochs}
        cpu_rates: dict[str, list[float]] = {k: [] for k in epochs}
        for r in range(rounds):
            for key, fn in epochs.items():
                t, c = time.perf_counter(), time.process_time()
                n = fn()
                rates[key].append(n / (time.perf_counter() - t))
                cpu_rates[key].append(n / (time.process_time() - c))
            log(f"speed {name}: round {r + 1}/{rounds} done")
        fp, fp_cpu = statistics.median(rates["fp32"]), statistics.median(cpu_rates["fp32"])
        for key, rs in rates.items():
            med, med_cpu = statistics.median(rs), statistics.median(cpu_rates[key])
            # On a shared machine the wall clock mostly measures the scheduler; samples per
            # CPU-second of this process (all its threads) is the steadier figure.
            out[f"{name}/{key}"].update(samples_per_s=med, relative_to_fp32_wall=med / fp,
                                        samples_per_cpu_s=med_cpu, relative_to_fp32=med_cpu / fp_cpu)
            log(f"speed {name:>8} {key:>10}: {med:,.0f} samples/s wall ({med / fp:.2f}× fp32), "
                f"{med_cpu:,.0f} samples/CPU-s ({med_cpu / fp_cpu:.2f}× fp32)")
        keras.backend.clear_session()
    return out


def reround_cost(rows: int, dim: int = 16, bits: int = 8, batch_rows: int = 4096, reps: int = 5,
                 log=print) -> dict[str, float]:
    """CPU-ms per step of the O(table) pieces on an ``rows × dim`` table (XLA, median of ``reps``).

    ``adam_dense``: Keras' Adam applying a batch's gradient (``batch_rows`` ids) to the float
    rows, which it densifies (what fp32 training pays too); ``reround_all``: ``rerounded="all"``'s
    synchronisation and re-rounding of every changed value; ``reround_touched``: re-rounding
    the ``batch_rows`` rows read.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from mdr_tf.layers.quantized_embedding import QuantizedEmbedding

    q = QuantizedEmbedding(rows, dim, "lpt_sr", bits=bits, seed=0)
    q.build(None)
    opt = keras.optimizers.Adam(1e-3)
    opt.build([q.work])
    ids = tf.constant(np.random.default_rng(0).integers(0, rows, batch_rows), tf.int32)
    g = tf.IndexedSlices(tf.random.normal([batch_rows, dim], seed=0), ids, tf.constant([rows, dim]))

    @tf.function(jit_compile=True)
    def adam_dense():
        opt.apply([tf.convert_to_tensor(g)], [q.work])

    @tf.function(jit_compile=True)
    def reround_all():
        q.sync_work()
        q.requantize_changed()

    @tf.function(jit_compile=True)
    def reround_touched():
        q.requantize(ids)

    out = {}
    for name, fn in (("adam_dense", adam_dense), ("reround_all", reround_all), ("reround_touched", reround_touched)):
        fn()
        ts = []
        for _ in range(reps):
            c = time.process_time()
            fn()
            ts.append(time.process_time() - c)
        out[name] = 1e3 * statistics.median(ts)
        log(f"reround cost: {rows:,} rows × {dim}: {name:>16} {out[name]:8.1f} CPU-ms/step")
    return out


def sizes(schema, models: Sequence[str], bits: Sequence[int], quant: dict, log=print,
          variant: dict[str, str | None] | None = None) -> dict[str, dict[str, int]]:
    """SavedModel variable bytes and stored table bytes per model: fp32 and ALPT at each bit width.

    The storage does not depend on the training mode (LPT and ALPT store the same codes + Δ).
    """
    import keras

    from mdr_tf import registry
    from mdr_tf.params import parameter_report

    out: dict[str, dict[str, int]] = {}
    for name in models:
        for mode, b in [("fp", 32)] + [("alpt", int(b)) for b in bits]:
            keras.utils.set_random_seed(0)
            model = registry.get(name).build(schema, **embedding_kwargs(mode, b, quant),
                                             **variant_kwargs(name, variant or {}))
            model.build()
            key = "fp32" if mode == "fp" else f"{b}bit"
            q = model.embedding.quantized
            out[f"{name}/{key}"] = {"saved_model_bytes": saved_model_bytes(model),
                                    "table_bytes": parameter_report(model)["table_bytes"],
                                    "table_bytes_packed": q.table_bytes(packed=True) if q is not None
                                    else parameter_report(model)["table_bytes"]}
            log(f"size {name:>8} {key:>6}: {out[f'{name}/{key}']}")
        keras.backend.clear_session()
    return out


def table(rows_by_cfg: dict[str, list[dict]], models: Sequence[str], cfgs: Sequence[tuple[str, int]],
          speeds: dict[str, dict[str, float]]) -> tuple[str, str]:
    """Markdown and CSV: per model × config AUC / LogLoss mean ± std, ΔAUC vs fp32 (Welch p), bytes, speed."""
    import numpy as np

    md = ["| model | config | AUC | LogLoss | ΔAUC vs fp32 | p (Welch) | table bytes | SavedModel bytes | "
          "train speed vs fp32 | trials |", "|" + "---|" * 10]
    csv = ["model,config,auc_mean,auc_std,logloss_mean,logloss_std,dauc,p_welch,table_bytes,saved_model_bytes,"
           "speed_rel,trials"]
    for name in models:
        fp = [r for r in rows_by_cfg.get("fp32", []) if r["model"] == name]
        fp_auc = [r["test_auc"] for r in fp]
        for mode, bits in cfgs:
            key = config_name(mode, bits)
            rs = [r for r in rows_by_cfg.get(key, []) if r["model"] == name]
            if not rs:
                continue
            auc = [r["test_auc"] for r in rs]
            ll = [r["test_logloss"] for r in rs]
            sp = dict(speeds.get(f"{name}/{key}", {}))
            sp.update(speeds.get(f"{name}/{'fp32' if key == 'fp32' else f'{bits}bit'}", {}))
            if key != "fp32" and f"{name}/{mode}-{bits}" not in speeds:  # speed measured at one bit width
                other = [k for k in speeds if k.startswith(f"{name}/{mode}-") and "relative_to_fp32" in speeds[k]]
                if other:
                    sp["relative_to_fp32"] = speeds[other[0]]["relative_to_fp32"]
            dauc = float(np.mean(auc) - np.mean(fp_auc)) if fp_auc else float("nan")
            p = _welch_p(auc, fp_auc) if key != "fp32" else float("nan")
            tb = rs[0].get("params_table_bytes", sp.get("table_bytes", 0))
            smb = sp.get("saved_model_bytes")
            rel = sp.get("relative_to_fp32")
            md.append(f"| {name} | {key} | {np.mean(auc):.4f} ± {np.std(auc, ddof=1) if len(auc) > 1 else 0:.4f} | "
                      f"{np.mean(ll):.4f} ± {np.std(ll, ddof=1) if len(ll) > 1 else 0:.4f} | "
                      f"{'' if key == 'fp32' else f'{dauc:+.4f}'} | {'' if key == 'fp32' else f'{p:.3f}'} | "
                      f"{tb:,} | {'' if smb is None else f'{smb:,}'} | {'' if rel is None else f'{rel:.2f}×'} | "
                      f"{len(rs)} |")
            csv.append(",".join(str(v) for v in [
                name, key, np.mean(auc), np.std(auc, ddof=1) if len(auc) > 1 else 0, np.mean(ll),
                np.std(ll, ddof=1) if len(ll) > 1 else 0, dauc, p, tb, "" if smb is None else smb,
                "" if rel is None else rel, len(rs)]))
    return "\n".join(md) + "\n", "\n".join(csv) + "\n"


def define_flags() -> None:
    define_data_flags()
    define_training_flags(epochs=2)
    define_variant_flags()
    flags.DEFINE_list("models", ["dnn", "mlora", "star"], "Models.")
    flags.DEFINE_list("modes", ["lpt_dr", "lpt_sr", "alpt"], "Low-precision modes.")
    flags.DEFINE_list("bits", ["16", "8", "4", "2"], "Bit widths.")
    flags.DEFINE_integer("trials", 3, "Trials per model and configuration.")
    flags.DEFINE_integer("seed_base", 0, "Trial t uses seed seed_base + t.")
    flags.DEFINE_string("embedding_quantization", "{}", "JSON: QuantizedEmbedding arguments for every config.")
    flags.DEFINE_string("output_dir", "results/alpt", "Results folder (one trial log per config below it).")
    flags.DEFINE_boolean("speed", True, "Measure training samples/s relative to fp32 (interleaved) and sizes.")
    flags.DEFINE_integer("speed_rounds", 3, "Interleaved rounds (one epoch of every config each).")
    flags.DEFINE_string("speed_variants", "{}", "JSON {name: [mode, bits, {QuantizedEmbedding overrides}]}: "
                        "further configurations in the interleaved speed rounds, e.g. "
                        '\'{"alpt-8-first_pass": ["alpt", 8, {"delta_grad": "first_pass"}]}\'.')
    flags.DEFINE_integer("speed_bits", 8, "Bit width of the speed runs (speed does not depend on it; the "
                         "table shows this figure for every bit width).")
    flags.DEFINE_boolean("accuracy", True, "Run the trials (off: speed only).")
    flags.DEFINE_boolean("include_fp", True, "Run the fp32 trials too (off: split a sweep over processes "
                         "by bit width, the fp32 trials run by one of them).")
    flags.DEFINE_list("reround_cost_rows", [], "Table sizes (rows) at which to time the per-step O(table) "
                      "pieces (dense Adam, rerounded='all', 'touched'); results in reround_cost.json.")
    flags.DEFINE_boolean("aggregate_only", False, "Rebuild the table from the trial logs without training.")


def _main(f: flags.FlagValues) -> None:
    import mdr_tf  # noqa: F401
    from experiments.common import git_commit as _git_commit, prepare_dataset, versions as _versions
    from mdr_tf.schema import Schema

    quant = json.loads(f.embedding_quantization)
    cfgs = configs(f.modes, [int(b) for b in f.bits])
    os.makedirs(f.output_dir, exist_ok=True)
    commit = _git_commit()
    t0 = time.time()
    train_kwargs = train_kwargs_from_flags(f)
    rows_by_cfg: dict[str, list[dict]] = {}
    for i, (mode, bits) in enumerate(cfgs):
        key = config_name(mode, bits)
        if not f.accuracy and not f.aggregate_only:
            break
        if mode == "fp" and not f.include_fp and not f.aggregate_only:
            continue
        print(f"=== config {i + 1}/{len(cfgs)}: {key} ({time.time() - t0:.0f}s elapsed)", flush=True)
        res = run(dataset=f.dataset, raw_path=f.raw_path, data_dir=f.data_dir,
                  dataset_options=_parse_options(f.dataset_options), models=f.models, trials=f.trials,
                  seed_base=f.seed_base, train_kwargs=train_kwargs, model_kwargs=embedding_kwargs(mode, bits, quant),
                  output_dir=os.path.join(f.output_dir, key), aggregate_only=f.aggregate_only,
                  variant=variant_from_flags(f),
                  log=lambda s: print(s, flush=True) if not s.startswith("\n#") else None)
        rows_by_cfg[key] = res["rows"]
    speeds: dict[str, dict[str, float]] = {}
    speed_path = os.path.join(f.output_dir, "speed.json")
    if f.speed and not f.aggregate_only:
        schema = Schema.load(prepare_dataset(f.dataset, f.data_dir, f.raw_path, _parse_options(f.dataset_options)))
        variants = {k: (v[0], int(v[1]), dict(v[2] if len(v) > 2 else {}))
                    for k, v in json.loads(f.speed_variants).items()}
        speeds = speed(schema, f.models, configs(f.modes, [f.speed_bits]), quant, f.batch_size,
                       f.steps_per_execution, f.speed_rounds, variants=variants, variant=variant_from_flags(f))
        speeds.update(sizes(schema, f.models, [int(b) for b in f.bits], quant, variant=variant_from_flags(f)))
        _atomic_write(speed_path, json.dumps(speeds, indent=2) + "\n")
    elif os.path.exists(speed_path):
        with open(speed_path) as fh:
            speeds = json.load(fh)
    if f.reround_cost_rows and not f.aggregate_only:
        costs = {str(r): reround_cost(int(r), f.embedding_dim) for r in f.reround_cost_rows}
        _atomic_write(os.path.join(f.output_dir, "reround_cost.json"), json.dumps(costs, indent=2) + "\n")
    md, csv = table(rows_by_cfg, f.models, cfgs, speeds)
    title = (f"# ALPT / LPT on {f.dataset}: test metrics, mean ± std over {f.trials} trials, {f.epochs} epochs\n\n")
    _atomic_write(os.path.join(f.output_dir, "table.md"), title + md)
    _atomic_write(os.path.join(f.output_dir, "table.csv"), csv)
    meta = {"git_commit": commit, "versions": _versions(), "argv": sys.argv,
            "flags": {fl.name: fl.value for fl in f.get_flags_for_module(sys.modules[__name__])},
            "train": train_kwargs, "quantization": quant, "wall_seconds": round(time.time() - t0, 1)}
    _atomic_write(os.path.join(f.output_dir, "run_meta.json"), json.dumps(meta, indent=2) + "\n")
    print("\n" + title + md, flush=True)


def cli() -> None:
    from data_prep.common import run_cli

    run_cli(define_flags, _main, errors=(ValueError,))


if __name__ == "__main__":
    cli()
