"""Speed benchmark: training samples/s (memory vs TFRecords), pipeline ex/s, SavedModel inference.

Prints medians over ``--repeats`` runs. Figures go in docs/benchmarks.md with the command.

  python -m experiments.benchmark                       # DNN on ML-100k
  python -m experiments.benchmark --models=dnn,mlora,hamur,star --repeats=5
  python -m experiments.benchmark --cost_ratio --models=hamur,hierrec --repeats=7   # cost per sample ÷ DNN
  python -m experiments.benchmark --models=dnn --backbone=dcn --block=mlora          # MLoRA on DCN
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from absl import app, flags

FLAGS = flags.FLAGS


def _median_rate(fn: Callable[[], int], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def bench_pipeline(schema, batch_size: int, repeats: int) -> dict[str, float]:
    """TFRecord read+parse examples/s of the streaming and in-memory pipelines (no model)."""
    from mdr_tf.data import make_dataset

    out = {}
    variants = [("stream", dict(in_memory=False)), ("in_memory", dict(in_memory=True))]
    if FLAGS.columnar:  # out of core from memory-mapped columnar shards (mdr_tf.outofcore)
        _ensure_columnar(schema)
        variants.append(("columnar", dict(in_memory=False, columnar=True)))
    for name, kw in variants:
        ds = make_dataset(schema, "train", batch_size, seed=0, **kw)

        def one_pass():
            n = 0
            for _, y in ds:
                n += int(y.shape[0])
            return n

        one_pass()  # warm-up (loads the in-memory cache)
        out[f"pipeline_{name}_ex_per_s"] = _median_rate(one_pass, repeats)
    return out


def _ensure_columnar(schema) -> None:
    """Derives the train split's columnar shards once (``mdr_tf.columnar.convert``, resumable)."""
    from mdr_tf import columnar

    if not columnar.available(schema, "train", check_source=True):
        t = time.perf_counter()
        columnar.convert(schema.directory, ["train"], progress=lambda m: None)
        print(f"columnar shards derived in {time.perf_counter() - t:.1f}s", flush=True)


def _build(model_name: str, schema, model_kwargs: dict | None = None):
    """The registry model with ``--backbone`` / ``--block`` / ``--hook`` applied as ``experiments.run``
    applies them (``variant_kwargs``; the DNN reference too), then ``model_kwargs``."""
    from experiments.run import variant_from_flags, variant_kwargs
    from mdr_tf import registry

    variant = variant_from_flags(FLAGS) if "backbone" in FLAGS and FLAGS.is_parsed() else {}
    own = dict(model_kwargs or {})
    return registry.get(model_name).build(schema, **{**variant_kwargs(model_name, variant, {model_name: own}), **own})


def _epoch_runner(model_name: str, schema, batch_size: int, source: str, steps_per_execution: int, jit: Any,
                  x=None, y=None, model_kwargs: dict | None = None, optimizer: str | None = None) -> Callable[[], int]:
    """Builds ``model_name`` (seed 0) for one training ``source`` and returns a function that
    trains one epoch and returns the number of samples (after one warm-up epoch).
    ``optimizer``: ``TrainConfig.optimizer`` (default: ``--optimizer``)."""
    import keras

    from mdr_tf.data import load_arrays, make_dataset
    from mdr_tf.training import TrainConfig, compile_model

    if x is None:
        x, y = load_arrays(schema, "train")
        y = y.reshape(-1, 1)
    n = len(y)
    keras.utils.set_random_seed(0)
    model = _build(model_name, schema, model_kwargs)
    model.build()
    fused = source in ("tfrecord_fused", "columnar_fused")
    compile_model(model, TrainConfig(batch_size=batch_size, steps_per_execution=1 if fused else steps_per_execution,
                                     jit_compile=jit, optimizer=optimizer or FLAGS.optimizer))
    if source == "columnar_fused":  # what fit does when the split does not fit in memory
        from mdr_tf.outofcore import FusedStream

        _ensure_columnar(schema)
        stream = FusedStream(schema, "train", batch_size, steps_per_execution, buffer_rows=FLAGS.ooc_buffer_rows,
                             chunk_rows=FLAGS.ooc_chunk_rows)
        stream.install(model, jit_compile=model.jit_compile)
        n_fit = (n // batch_size) * batch_size
        passes = iter(range(10**6))

        def epoch(model=model, stream=stream, n_fit=n_fit, passes=passes):
            model.fit(stream.dataset(next(passes)), epochs=1, verbose=0)
            return n_fit
    elif source == "columnar_stream":  # make_dataset's out-of-core batches, Keras' multi-step loop
        from mdr_tf.outofcore import stream_dataset

        _ensure_columnar(schema)

        def epoch(model=model):
            model.fit(stream_dataset(schema, "train", batch_size, buffer_rows=FLAGS.ooc_buffer_rows,
                                     chunk_rows=FLAGS.ooc_chunk_rows).prefetch(4), epochs=1, verbose=0)
            return n
    elif fused:  # what mdr_tf.training.fit does (TrainConfig.fused)
        from experiments.common import fused_epoch

        epoch = fused_epoch(model, schema, batch_size, steps_per_execution)
    elif source == "memory":
        def epoch(model=model):
            model.fit(x, y, batch_size=batch_size, shuffle=True, epochs=1, verbose=0)
            return n
    else:
        ds = make_dataset(schema, "train", batch_size, seed=0, in_memory=(source == "tfrecord_in_memory"))

        def epoch(model=model, ds=ds):
            model.fit(ds, epochs=1, verbose=0)
            return n
    epoch()  # compile + warm-up
    return epoch


def bench_train(model_name: str, schema, batch_size: int, repeats: int, steps_per_execution: int,
                jit: Any, sources: Sequence[str]) -> dict[str, float]:
    """Training samples/s for one model from memory (numpy, Keras shuffling) and from TFRecords.

    Sources: "memory" (Keras numpy fit), "tfrecord_in_memory" / "tfrecord_stream" (our
    pipeline, Keras' ``steps_per_execution``), "tfrecord_fused" (our pipeline, K =
    ``steps_per_execution`` steps in one XLA program, ``mdr_tf.fused`` — what
    ``mdr_tf.training.fit`` uses by default), "columnar_fused" (the same K-step program
    over buffers streamed from memory-mapped columnar shards, ``mdr_tf.outofcore`` —
    what ``fit`` uses when the split does not fit in memory), "columnar_stream"
    (``make_dataset``'s out-of-core batches, Keras' ``steps_per_execution``).
    """
    import keras

    from mdr_tf.data import load_arrays

    x, y = load_arrays(schema, "train")
    y = y.reshape(-1, 1)
    epochs: dict[str, Callable[[], int]] = {}
    keras.backend.clear_session()
    for source in sources:
        epochs[source] = _epoch_runner(model_name, schema, batch_size, source, steps_per_execution, jit, x, y)
    # Interleaved (one epoch of each source per round), so that a slow spell of a shared
    # machine affects every source alike; medians over the rounds.
    rates: dict[str, list[float]] = {s: [] for s in sources}
    for _ in range(repeats):
        for source, epoch in epochs.items():
            t = time.perf_counter()
            rates[source].append(epoch() / (time.perf_counter() - t))
    out = {f"train_{s}_samples_per_s": statistics.median(r) for s, r in rates.items()}
    first = sources[0]
    for s in sources[1:]:  # median of the per-round ratios (each round sees the same machine load)
        out[f"ratio_{s}_to_{first}"] = statistics.median(a / b for a, b in zip(rates[s], rates[first]))
    return out


def bench_cost_ratio(model_names: Sequence[str], schema, batch_size: int, rounds: int, steps_per_execution: int,
                     jit: Any, source: str = "tfrecord_fused",
                     model_args: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
    """Cost per training sample of each model relative to the DNN, measured in one process.

    The DNN and every model are built once, then trained one epoch each per round,
    alternating (DNN, model 1, ..., DNN, model 1, ...), so that a slow spell of the shared
    machine hits all alike (every other round runs in reverse order). ``model_args``:
    ``{model: {arg: value}}`` for the builders. For each model: the median wall seconds per sample and the
    median CPU seconds per sample (``time.process_time``, all threads) over the rounds, and
    their ratios to the DNN's medians (the figure issue 18 asks for).
    """
    import keras

    from mdr_tf.data import load_arrays

    x, y = load_arrays(schema, "train")
    y = y.reshape(-1, 1)
    names = ["dnn"] + [m for m in model_names if m != "dnn"]
    keras.backend.clear_session()
    epochs = {m: _epoch_runner(m, schema, batch_size, source, steps_per_execution, jit, x, y,
                               model_kwargs=(model_args or {}).get(m)) for m in names}
    wall: dict[str, list[float]] = {m: [] for m in names}
    cpu: dict[str, list[float]] = {m: [] for m in names}
    for r in range(rounds):
        for m in names if r % 2 == 0 else names[::-1]:
            t, c = time.perf_counter(), time.process_time()
            n = epochs[m]()
            wall[m].append((time.perf_counter() - t) / n)
            cpu[m].append((time.process_time() - c) / n)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{m} {1.0 / wall[m][-1]:,.0f}/s" for m in names), flush=True)
    out = {}
    for m in names:
        w, c = statistics.median(wall[m]), statistics.median(cpu[m])
        out[m] = {"wall_s_per_sample": w, "cpu_s_per_sample": c, "samples_per_s": 1.0 / w,
                  "wall_ratio_to_dnn": w / statistics.median(wall["dnn"]),
                  "cpu_ratio_to_dnn": c / statistics.median(cpu["dnn"])}
    return out


def bench_serving(model_name: str, schema, batch_sizes: Sequence[int], repeats: int) -> dict[str, float]:
    """Exported SavedModel (``serving_default``) per-call latency (p50, p99) and samples/s per batch size.

    Each call includes fetching the result to NumPy, as a serving client would.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from mdr_tf.data import load_arrays
    from mdr_tf.export import export_saved_model

    keras.utils.set_random_seed(0)
    model = _build(model_name, schema)
    model.build()
    x, _ = load_arrays(schema, "test")
    res = {}
    with tempfile.TemporaryDirectory() as d:
        fn = tf.saved_model.load(export_saved_model(model, d, version=1)).signatures["serving_default"]
        for bs in batch_sizes:
            reps = max(5, min(300, 20000 // bs))
            batch = {k: tf.constant(np.resize(v, bs)) for k, v in x.items()}
            for _ in range(3):
                fn(**batch)  # warm-up (first calls trace / allocate)
            times = []
            for _ in range(repeats):
                for _ in range(reps):
                    t = time.perf_counter()
                    fn(**batch)["probability"].numpy()
                    times.append(time.perf_counter() - t)
            times.sort()
            p50 = times[len(times) // 2]
            res[f"serve_batch{bs}_samples_per_s"] = bs / p50
            res[f"serve_batch{bs}_ms_per_call"] = p50 * 1000
            res[f"serve_batch{bs}_p99_ms"] = times[min(len(times) - 1, int(0.99 * len(times)))] * 1000
    return res


def bench_op_profile(model_name: str, schema, batch_size: int, steps: int, depth: int, dump_dir: str
                     ) -> dict[str, float]:
    """Where one XLA-compiled training step's time goes: ms per step by model part.

    Runs ``steps`` forward + backward steps (``GradientTape``, XLA) of ``model_name`` on
    one training batch under ``tf.profiler``, reads the per-HLO-op events of the trace and
    maps each op to the Keras layer path that emitted it (the ``op_name`` metadata of the
    optimised HLO in ``dump_dir``, written because ``main`` sets ``XLA_FLAGS`` first).
    Keys: "fwd|grad <layer path, ``depth`` levels>"; op time summed over the CPU threads.
    """
    import collections
    import glob
    import re

    import keras
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from mdr_tf.data import load_arrays

    x, y = load_arrays(schema, "train")
    xb = {k: tf.constant(v[:batch_size]) for k, v in x.items()}
    yb = tf.constant(y[:batch_size].reshape(-1, 1).astype("float32"))
    keras.utils.set_random_seed(0)
    model = _build(model_name, schema)
    model.build()

    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, model(x, training=True), from_logits=True))
        return tape.gradient(loss, model.trainable_variables)

    for _ in range(3):
        step(xb, yb)
    with tempfile.TemporaryDirectory() as trace_dir:
        tf.profiler.experimental.start(trace_dir)
        for _ in range(steps):
            out = step(xb, yb)
        tf.convert_to_tensor(out[-1]).numpy()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1], "rb") as f:
            space.ParseFromString(f.read())
    modules = [p for p in glob.glob(f"{dump_dir}/*after_optimizations.txt") if "step" in p]
    meta = {}
    with open(max(modules, key=os.path.getsize)) as f:
        for line in f:
            m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name="([^"]+)"', line)
            if m:
                meta[m.group(1)] = m.group(2)
    parts: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for ev in line.events:
                op = meta.get(plane.event_metadata[ev.metadata_id].name)
                if op is None:
                    continue
                path = [p for p in re.sub(r"^.*?step/", "", op).split("/") if p != "gradient_tape"][1:1 + depth]
                kind = "grad" if "gradient" in op.lower() else "fwd"
                parts[f"{kind} {'/'.join(path) or '(model)'}"] += ev.duration_ps / 1e9 / steps
    return dict(parts.most_common())


def define_flags() -> None:
    flags.DEFINE_string("dataset", "ml100k", "Registered dataset name.")
    flags.DEFINE_string("data_dir", "data", "Root of prepared datasets.")
    flags.DEFINE_list("dataset_options", [], "key=value prepare options (e.g. num_rows=1000000 for synthetic).")
    flags.DEFINE_list("models", ["dnn"], "Models to benchmark (the first ones' ratios are relative to dnn).")
    from experiments.run import define_variant_flags

    define_variant_flags()  # --backbone / --block / --hook, as experiments.run
    flags.DEFINE_integer("batch_size", 512, "Training batch size.")
    flags.DEFINE_enum("optimizer", "adam", ["adam", "lazy_adam"], "Training optimizer (TrainConfig.optimizer).")
    flags.DEFINE_integer("repeats", 5, "Runs per figure (median reported).")
    flags.DEFINE_integer("steps_per_execution", 16, "Train steps per compiled call.")
    flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA for the train step.")
    flags.DEFINE_list("sources", ["tfrecord_fused", "tfrecord_in_memory", "memory", "tfrecord_stream"],
                      "Training input sources (the first one's figure is compared with the DNN).")
    flags.DEFINE_list("serve_batch_sizes", ["1", "512", "4096"], "SavedModel inference batch sizes.")
    flags.DEFINE_boolean("serving", True, "Benchmark SavedModel inference.")
    flags.DEFINE_boolean("train", True, "Benchmark training (off: serving figures only).")
    flags.DEFINE_string("output", None, "Write the figures as JSON here.")
    flags.DEFINE_boolean("cost_ratio", False, "Only the cost per training sample relative to the DNN: the DNN and "
                         "--models trained in alternating epochs in one process (--repeats rounds, first of "
                         "--sources); prints the ratios of the medians.")
    flags.DEFINE_boolean("columnar", False, "Also measure the columnar pipeline (derives the shards once).")
    flags.DEFINE_integer("ooc_buffer_rows", 1 << 20, "Out-of-core sources: rows per buffer.")
    flags.DEFINE_integer("ooc_chunk_rows", 1 << 16, "Out-of-core sources: rows per chunk (shuffle granularity).")
    flags.DEFINE_string("profile_ops", None, "If set: only the per-part op profile (bench_op_profile) of this model.")
    flags.DEFINE_integer("profile_depth", 1, "Layer-path levels of the op profile's parts.")
    flags.DEFINE_string("model_args", None, "JSON {model: {arg: value}} passed to the builders (--cost_ratio).")


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.profile_ops:  # before TensorFlow compiles anything: dump the optimised HLO (op → layer names)
        dump_dir = tempfile.mkdtemp(prefix="hlo_")
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump_dir} --xla_dump_hlo_as_text"
    import mdr_tf  # noqa: F401
    from experiments.common import parse_options as _parse_options, prepare_dataset, versions as _versions
    from mdr_tf.schema import Schema

    from experiments.run import apply_variant, variant_from_flags

    try:  # a variant flag that applies to none of the models is a usage error (as in experiments.run)
        variant = {m: a for m, a in apply_variant(["dnn", *FLAGS.models, *filter(None, [FLAGS.profile_ops])],
                                                  variant_from_flags(FLAGS)).items() if a}
    except ValueError as e:
        raise app.UsageError(str(e))
    schema = Schema.load(prepare_dataset(FLAGS.dataset, FLAGS.data_dir, None, _parse_options(FLAGS.dataset_options)))
    jit = {"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile]
    if FLAGS.profile_ops:
        prof = bench_op_profile(FLAGS.profile_ops, schema, FLAGS.batch_size, 50, FLAGS.profile_depth, dump_dir)
        total = sum(prof.values())
        print(f"# {FLAGS.profile_ops}: XLA train step (fwd + grad), batch {FLAGS.batch_size}, op time "
              f"{total:.2f} ms/step summed over threads", flush=True)
        by_part: dict[str, float] = {}
        for key, ms in prof.items():
            part = key.split(" ", 1)[1].split("/")[0]
            by_part[part] = by_part.get(part, 0.0) + ms
        ranked = sorted(by_part.items(), key=lambda kv: -kv[1])
        print("by part: " + ", ".join(f"{p} {v / total:.0%}" for p, v in ranked))
        for key, ms in list(prof.items())[:25]:
            print(f"  {ms:7.3f} ms  {100 * ms / total:5.1f}%  {key}")
        return
    results: dict[str, Any] = {"versions": _versions(), "dataset": FLAGS.dataset,
                               "train_examples": sum(schema.counts("train")), "batch_size": FLAGS.batch_size,
                               "repeats": FLAGS.repeats, "variant": variant}
    print(f"# benchmark on {FLAGS.dataset} ({results['train_examples']:,} train examples), batch "
          f"{FLAGS.batch_size}, median of {FLAGS.repeats}" + (f"; variant flags {variant}" if variant else ""),
          flush=True)
    if FLAGS.cost_ratio:
        ratios = bench_cost_ratio(FLAGS.models, schema, FLAGS.batch_size, FLAGS.repeats, FLAGS.steps_per_execution,
                                  jit, FLAGS.sources[0], json.loads(FLAGS.model_args) if FLAGS.model_args else None)
        for name, r in ratios.items():
            print(f"{name:>14}: {r['samples_per_s']:,.0f} samples/s; cost per sample {r['wall_ratio_to_dnn']:.2f}× "
                  f"dnn (wall), {r['cpu_ratio_to_dnn']:.2f}× dnn (CPU time)", flush=True)
        results["cost_ratio"] = ratios
        _write_json(results, FLAGS.output)
        return
    results.update(bench_pipeline(schema, FLAGS.batch_size, FLAGS.repeats))
    print("pipeline read+parse: " + ", ".join(f"{k[9:-9]} {v:,.0f} ex/s" for k, v in results.items()
                                              if k.startswith("pipeline_")), flush=True)
    models = list(FLAGS.models)
    if "dnn" not in models:
        models = ["dnn"] + models
    per_model = {}
    for name in models:
        r = bench_train(name, schema, FLAGS.batch_size, FLAGS.repeats, FLAGS.steps_per_execution, jit,
                        FLAGS.sources) if FLAGS.train else {}
        if FLAGS.serving:
            r.update(bench_serving(name, schema, [int(b) for b in FLAGS.serve_batch_sizes], FLAGS.repeats))
        per_model[name] = r
        if FLAGS.train:
            key = f"train_{FLAGS.sources[0]}_samples_per_s"
            line = ", ".join(f"{k.replace('_samples_per_s', '')} {v:,.0f}/s" for k, v in r.items()
                             if k.startswith("train_"))
            print(f"{name:>14}: {line}; {r[key] / per_model['dnn'][key]:.2f}× dnn", flush=True)
            print(f"{'':>14}  " + ", ".join(f"{k[6:]} {v:.2f}" for k, v in r.items() if k.startswith("ratio_")),
                  flush=True)
        if FLAGS.serving:
            print(f"{name:>14}  " + ", ".join(
                f"serve b{b}: {r[f'serve_batch{b}_samples_per_s']:,.0f}/s "
                f"(p50 {r[f'serve_batch{b}_ms_per_call']:.2f} ms, p99 {r[f'serve_batch{b}_p99_ms']:.2f} ms)"
                for b in FLAGS.serve_batch_sizes), flush=True)
    results["models"] = per_model
    _write_json(results, FLAGS.output)


def _write_json(results: dict[str, Any], path: str | None) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, path)
        print(f"wrote {path}", file=sys.stderr)


def cli() -> None:
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
