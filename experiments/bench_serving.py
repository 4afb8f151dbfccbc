"""Serving speed: the exported SavedModel against a PyTorch eval() forward of the same model.

For each model (DNN, MMoE, STAR) the Keras model is built (seed 0, weights perturbed so
that every parameter matters), exported with ``mdr_tf.export.export_saved_model`` and
its weights written for ``experiments/bench_serving_torch.py``, which rebuilds the same
architecture in PyTorch. Both run as worker subprocesses with the same thread count
(intra-op = inter-op = N; TensorFlow via ``tf.config.threading``, torch via
``set_num_threads`` / ``set_num_interop_threads``) and are timed in interleaved rounds
(every source of a model, batch size by batch size, in each round), so a slow spell of
the shared machine hits every source alike. Each call includes fetching the result to
NumPy. Sources: ``tf`` (``serving_default``: XLA, padded batches, folded first layer),
``tf_portable`` (``serve_portable``: the same graph without XLA — the pre-issue-18
``serving_default``), ``torch``, and with ``--compare_dir`` ``tf_compare`` (the
``serving_default`` of SavedModels exported by another commit: a before/after A/B in the
same rounds). The run ends with one ``SUMMARY`` line per model and thread count against
the issue 18.2 targets (batch 4096 ≥ 1.2× torch, batch-1 p50 < 0.5 ms) and the load average.

Before timing, the script checks parity on the test split with out-of-vocabulary ids
mixed in: Keras ``predict`` vs both signatures vs torch (max |Δp| printed, a failure
above ``--parity_atol`` stops the run).

PyTorch is optional and bench-only (not in requirements.txt): a separate interpreter,
e.g. ``python3 -m venv .torchvenv && .torchvenv/bin/pip install torch numpy``
(CPU wheel). Without it the script says so and reports the TensorFlow figures only.

  python -m experiments.bench_serving --threads=1,2 --rounds=5
  python -m experiments.bench_serving --threads=1 --export_dir=/tmp/after --compare_dir=/tmp/before
  python -m experiments.bench_serving --models=dnn --batch_sizes=1,64,4096 --torch_python=/path/bin/python
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
SOURCES = {"tf": "serving_default", "tf_portable": "serve_portable", "tf_compare": "serving_default"}
#: The issue 18.2 targets the one-line summaries check: batch 4096 ≥ 1.2× torch, batch-1 p50 < 0.5 ms.
TARGET_RATIO, TARGET_P50_MS = 1.2, 0.5


# --------------------------------------------------------------------------- reference weights

def perturb_weights(model, seed: int = 0) -> None:
    """Deterministic non-trivial values for every weight (the defaults leave W_d = 1, biases 0,
    PN statistics (0, 1) and N(0, 1e-4) embeddings, under which a wrong index or a missing
    term could go unnoticed by the parity check)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        x = np.asarray(v)
        if "moving_variance" in v.path:
            new = rng.uniform(0.5, 1.5, x.shape)
        elif "embedding" in v.path:
            new = rng.normal(0.0, 0.3, x.shape)
        else:
            new = x + rng.normal(0.0, 0.1, x.shape)
        v.assign(new.astype(x.dtype))


def export_reference(model, name: str, path: str) -> None:
    """Writes ``<path>.npz`` (weights) and ``<path>.json`` (architecture) for the torch worker.

    Supports the registry defaults of dnn, mmoe and star (no BatchNorm, dropout, hooks);
    anything else raises ``ValueError``.
    """
    s = model.schema
    emb = model.embedding
    if not emb.embed_domain or emb.quantized is not None or emb.assignment is not None:
        raise ValueError(f"{name}: the torch reference needs embed_domain=True and a plain float table")
    arch: dict[str, Any] = {
        "categorical": [f.name for f in s.categorical], "dense": [f.name for f in s.dense],
        "domain_key": s.domain_key, "num_domains": s.num_domains,
        "vocab_sizes": [f.vocab_size for f in s.categorical], "offsets": list(emb.offsets)}
    w: dict[str, np.ndarray] = {"embedding/table": np.asarray(emb.table)}

    def plain(layers, prefix):
        for i, blk in enumerate(layers):
            w[f"{prefix}/{i}/kernel"], w[f"{prefix}/{i}/bias"] = np.asarray(blk.kernel), np.asarray(blk.bias)

    def check_mlp(mlp, block):
        if mlp.block != block or mlp.hook or mlp.batch_norm or mlp.dropout or mlp.activation != "relu":
            raise ValueError(f"{name}: the torch reference supports a plain ReLU {block!r} MLP only")

    kind = type(model).__name__
    if kind == "BackboneModel" and model.backbone == "mlp":
        check_mlp(model.deep, "plain")
        arch.update(kind="dnn", layers=len(model.deep.blocks))
        plain(model.deep.blocks, "deep")
        w["head/kernel"], w["head/bias"] = np.asarray(model.head.kernel), np.asarray(model.head.bias)
    elif kind == "MMoE":
        if model.batch_norm or model.gate_batch_norm or model.dropout or model.activation != "relu" or \
                len(model.expert_units) != 1:
            raise ValueError(f"{name}: the torch reference supports one-layer ReLU experts without BN/dropout")
        arch.update(kind="mmoe", tower_layers=len(model.towers.kernels))
        for layer in ("experts", "gates", "towers"):
            sm = getattr(model, layer)
            for i, (k, b) in enumerate(zip(sm.kernels, sm.biases)):
                w[f"{layer}/kernel_{i}"], w[f"{layer}/bias_{i}"] = np.asarray(k), np.asarray(b)
    elif kind == "STAR":
        check_mlp(model.fcn, "star")
        check_mlp(model.aux, "plain")
        if model.pn is None:
            raise ValueError(f"{name}: the torch reference needs partitioned_norm=True")
        arch.update(kind="star", layers=len(model.fcn.blocks), aux_layers=len(model.aux.blocks),
                    pn_epsilon=model.pn.epsilon,
                    side_fields=[len(s.categorical)] + [i for i, f in enumerate(s.categorical) if f.group == "domain"],
                    side_dense=[j for j, f in enumerate(s.dense) if f.group == "domain"])
        for v in ("gamma", "beta", "gamma_d", "beta_d", "moving_mean", "moving_variance"):
            w[f"pn/{v}"] = np.asarray(getattr(model.pn, v))
        for prefix, blk in ([(f"star_fcn/{i}", b) for i, b in enumerate(model.fcn.blocks)]
                            + [("star_out", model.main_out)]):
            for v in ("kernel", "bias", "kernel_d", "bias_d"):
                w[f"{prefix}/{v}"] = np.asarray(getattr(blk, v))
        plain(model.aux.blocks, "aux")
        w["aux_out/kernel"], w["aux_out/bias"] = np.asarray(model.aux_out.kernel), np.asarray(model.aux_out.bias)
    else:
        raise ValueError(f"{name}: no torch reference for {kind}")
    np.savez(path + ".npz", **w)
    with open(path + ".json", "w") as f:
        json.dump(arch, f)


def parity_inputs(schema, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The test split with ids outside ``[0, vocab)`` in some rows (served as the OOV row 0)."""
    x = {k: v.copy() for k, v in x.items()}
    for i, f in enumerate(schema.categorical):
        col = x[f.name]
        col[i::11] = f.vocab_size + i
        col[i + 5::13] = -1 - i
    return x


# --------------------------------------------------------------------------- workers

class Worker:
    """A benchmark worker subprocess speaking ``bench_serving_torch.serve_forever``'s protocol."""

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None):
        self.name = name
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.getcwd(), **(env or {}))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=os.getcwd())
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} worker exited (code {self.proc.wait()}); see its stderr above")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, **msg) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{self.name} worker: {reply['error']}")
        return reply

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        self.proc.wait(timeout=60)


def tf_worker(threads: int) -> None:
    """The TensorFlow side: loads SavedModels and calls their signatures (``--worker=tf``)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from experiments.bench_serving_torch import serve_forever

    loaded: dict[str, Any] = {}

    def load(name: str, path: str):
        signature = name.split("@")[1]  # <model>@<signature>@<source>
        if path not in loaded:
            loaded[path] = tf.saved_model.load(path)
        return loaded[path].signatures[signature]

    def to_inputs(arrays):
        return {k: tf.constant(v) for k, v in arrays.items()}

    def forward(fn, x):
        return fn(**x)["probability"].numpy()

    sys.stdout.write(json.dumps({"ready": True, "tensorflow": tf.__version__, "threads": threads}) + "\n")
    sys.stdout.flush()
    serve_forever(load, to_inputs, forward)


def torch_available(python: str) -> str | None:
    """The torch version importable by ``python``, or None (with the reason printed)."""
    if not python or not os.path.exists(python):
        print(f"# torch: interpreter {python!r} not found — TensorFlow figures only (see --torch_python)", flush=True)
        return None
    r = subprocess.run([python, "-c", "import torch, numpy; print(torch.__version__)"], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        print(f"# torch: {python} cannot import torch/numpy ({r.stderr.strip().splitlines()[-1:]}) — "
              "TensorFlow figures only", flush=True)
        return None
    return r.stdout.strip()


# --------------------------------------------------------------------------- driver

def define_flags() -> None:
    flags.DEFINE_string("dataset", "ml100k", "Registered dataset name.")
    flags.DEFINE_string("data_dir", "data", "Root of prepared datasets.")
    flags.DEFINE_list("models", ["dnn", "mmoe", "star"], "Registry models (dnn, mmoe, star have a torch reference).")
    flags.DEFINE_list("threads", ["1", "2"], "Thread counts (intra-op = inter-op, both frameworks).")
    flags.DEFINE_list("batch_sizes", ["1", "4096"], "Batch sizes per call.")
    flags.DEFINE_list("sources", ["tf", "tf_portable", "torch"], "What to time: tf, tf_portable, torch.")
    flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
    flags.DEFINE_integer("calls", 40000, "Samples per source, batch size and round (calls = max(5, min(300, "
                         "calls // batch))).")
    flags.DEFINE_string("torch_python", os.environ.get("MDR_TF_TORCH_PYTHON", ".torchvenv/bin/python"),
                        "Interpreter with torch + numpy for the reference (env MDR_TF_TORCH_PYTHON).")
    flags.DEFINE_boolean("torch_omp_passive", True,
                         "Run the torch worker with OMP_WAIT_POLICY=PASSIVE: on an oversubscribed machine torch's "
                         "spinning OpenMP workers made its 2-thread calls ~40x slower (docs/benchmarks.md).")
    flags.DEFINE_float("parity_atol", 1e-5, "Max |Δ probability| allowed between Keras, SavedModel and torch.")
    flags.DEFINE_string("export_dir", None, "Export the SavedModels to <export_dir>/<model>/1 and keep them "
                        "(default: a temporary directory, removed at the end).")
    flags.DEFINE_string("compare_dir", None,
                        "SavedModels <compare_dir>/<model>/1 exported by another commit (same models, seed and "
                        "weights, e.g. an earlier --export_dir), timed as source 'tf_compare' (serving_default) "
                        "in the same rounds: a before/after A/B in one process.")
    flags.DEFINE_string("output", None, "Write the figures as JSON here.")
    flags.DEFINE_enum("worker", None, ["tf"], "Internal: run as the TensorFlow worker subprocess.")
    flags.DEFINE_integer("worker_threads", 1, "Internal: the worker's thread count.")


def _summary(seconds: list[float], batch: int) -> dict[str, float]:
    s = sorted(seconds)
    p50 = s[len(s) // 2]
    return {"samples_per_s": batch / p50, "p50_ms": p50 * 1e3, "p99_ms": s[min(len(s) - 1, int(0.99 * len(s)))] * 1e3,
            "calls": len(s)}


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.worker == "tf":
        tf_worker(FLAGS.worker_threads)
        return
    import mdr_tf  # noqa: F401
    from experiments.common import parse_options as _parse_options, prepare_dataset, versions as _versions
    from mdr_tf.data import load_arrays
    from mdr_tf.schema import Schema

    schema = Schema.load(prepare_dataset(FLAGS.dataset, FLAGS.data_dir, None, _parse_options([])))
    x, _ = load_arrays(schema, "test")
    sources = list(FLAGS.sources)
    if FLAGS.compare_dir and "tf_compare" not in sources:
        sources.insert(1, "tf_compare")
    if "tf_compare" in sources and not FLAGS.compare_dir:
        raise app.UsageError("--sources=tf_compare needs --compare_dir")
    torch_version = torch_available(FLAGS.torch_python) if "torch" in sources else None
    if torch_version is None and "torch" in sources:
        sources.remove("torch")
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    results: dict[str, Any] = {"versions": {**_versions(), "torch": torch_version}, "dataset": FLAGS.dataset,
                               "rounds": FLAGS.rounds, "sources": sources, "figures": {}, "parity": {},
                               "load_before": os.getloadavg()}
    work = tempfile.mkdtemp(prefix="bench_serving-")
    try:
        _run(schema, x, sources, batch_sizes, results, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _report(results)
    _summarise(results, batch_sizes)


def _run(schema, x, sources, batch_sizes, results, work) -> None:
    import keras

    from mdr_tf import registry
    from mdr_tf.export import export_saved_model

    inputs = os.path.join(work, "inputs.npz")
    np.savez(inputs, **x)
    par = parity_inputs(schema, x)
    par_path = os.path.join(work, "parity.npz")
    np.savez(par_path, **par)
    paths, keras_ref = {}, {}
    for name in FLAGS.models:
        keras.utils.set_random_seed(0)
        model = registry.get(name).build(schema)
        model.build()
        perturb_weights(model)
        t = time.perf_counter()
        paths[name] = export_saved_model(model, os.path.join(FLAGS.export_dir or work, name), version=1)
        print(f"# {name}: exported in {time.perf_counter() - t:.1f} s", flush=True)
        if "torch" in sources:
            export_reference(model, name, os.path.join(work, name + "_ref"))
        keras_ref[name] = model.predict(par, batch_size=4096, verbose=0).reshape(-1)
    for threads in [int(t) for t in FLAGS.threads]:
        workers = {}
        if any(s in SOURCES for s in sources):
            workers["tf"] = Worker([sys.executable, "-m", "experiments.bench_serving", "--worker=tf",
                                    f"--worker_threads={threads}"], "tensorflow")
        if "torch" in sources:
            workers["torch"] = Worker([FLAGS.torch_python, os.path.join(os.path.dirname(__file__),
                                                                        "bench_serving_torch.py"),
                                       f"--threads={threads}"], "torch",
                                      env={"OMP_WAIT_POLICY": "PASSIVE"} if FLAGS.torch_omp_passive else None)
        try:
            def worker_of(source, workers=workers):
                return workers["torch" if source == "torch" else "tf"]

            def key(name, source):
                return name if source == "torch" else f"{name}@{SOURCES[source]}@{source}"

            for name in FLAGS.models:
                for source in sources:
                    path = (os.path.join(work, name + "_ref") if source == "torch" else
                            os.path.join(FLAGS.compare_dir, name, "1") if source == "tf_compare" else paths[name])
                    worker_of(source).ask(cmd="load", model=key(name, source), path=path)
                    out = os.path.join(work, f"{name}-{source}-{threads}.npy")
                    worker_of(source).ask(cmd="predict", model=key(name, source), inputs=par_path, output=out)
                    diff = float(np.max(np.abs(np.load(out) - keras_ref[name])))
                    results["parity"][f"{name}/{source}/{threads}"] = diff
                    print(f"# parity {name} {source} ({threads} thr): max |p - keras| = {diff:.2e} on "
                          f"{len(keras_ref[name]):,} test rows (OOV ids mixed in)", flush=True)
                    if diff > FLAGS.parity_atol:
                        raise RuntimeError(f"{name}: {source} differs from Keras by {diff:.2e} > {FLAGS.parity_atol}")
                    for b in batch_sizes:  # warm-up: traces, XLA compiles, allocations
                        worker_of(source).ask(cmd="time", model=key(name, source), inputs=inputs, batch=b, calls=3)
            seconds: dict[tuple, list[float]] = {}
            per_round: dict[tuple, list[float]] = {}
            t0 = time.perf_counter()
            for r in range(FLAGS.rounds):
                for name in FLAGS.models:
                    for b in batch_sizes:
                        calls = max(5, min(300, FLAGS.calls // b))
                        for source in sources:
                            got = worker_of(source).ask(cmd="time", model=key(name, source), inputs=inputs, batch=b,
                                                        calls=calls)["seconds"]
                            seconds.setdefault((name, b, source), []).extend(got)
                            per_round.setdefault((name, b, source), []).append(b / statistics.median(got))
                done = (r + 1) / FLAGS.rounds
                print(f"# {threads} thread(s): round {r + 1}/{FLAGS.rounds}, ETA "
                      f"{(time.perf_counter() - t0) * (1 - done) / done:.0f} s", flush=True)
        finally:
            for w in workers.values():
                w.close()
        for (name, b, source), secs in seconds.items():
            fig = _summary(secs, b)
            if "torch" in sources and source != "torch":
                ratios = [a / t for a, t in zip(per_round[(name, b, source)], per_round[(name, b, "torch")])]
                fig["vs_torch"] = fig["samples_per_s"] / _summary(seconds[(name, b, "torch")], b)["samples_per_s"]
                fig["vs_torch_rounds"] = [min(ratios), max(ratios)]
            results["figures"][f"{name}/{b}/{source}/{threads}"] = fig
    results["load_after"] = os.getloadavg()


def _report(results) -> None:
    print(f"\n# load average before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f}")
    print("| model | threads | batch | source | samples/s | p50 ms | p99 ms | ÷ torch (per-round range) |")
    print("|---|---|---|---|---|---|---|---|")
    for k, fig in results["figures"].items():
        name, b, source, threads = k.split("/")
        ratio = (f"{fig['vs_torch']:.2f}× ({fig['vs_torch_rounds'][0]:.2f}–{fig['vs_torch_rounds'][1]:.2f})"
                 if "vs_torch" in fig else "")
        print(f"| {name} | {threads} | {b} | {source} | {fig['samples_per_s']:,.0f} | {fig['p50_ms']:.3f} | "
              f"{fig['p99_ms']:.3f} | {ratio} |")
    if FLAGS.output:
        tmp = FLAGS.output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, FLAGS.output)
        print(f"wrote {FLAGS.output}", file=sys.stderr)


def _summarise(results, batch_sizes) -> None:
    """One line per model and thread count: the issue 18.2 targets (batch 4096 ÷ torch, batch-1 p50)."""
    figs = results["figures"]
    load = f"load {results['load_before'][0]:.1f}→{results['load_after'][0]:.1f}"
    print(f"\n# summary (issue 18.2 targets: batch 4096 >= {TARGET_RATIO}x torch, batch-1 p50 < {TARGET_P50_MS} ms; "
          f"{load}, {os.cpu_count()} CPUs)")
    threads = sorted({k.split("/")[3] for k in figs}, key=int)
    for t in threads:
        for name in FLAGS.models:
            parts = []
            big = figs.get(f"{name}/{max(batch_sizes)}/tf/{t}")
            if big is not None and max(batch_sizes) > 1:
                if "vs_torch" in big:
                    ok = "met" if big["vs_torch"] >= TARGET_RATIO else "MISSED"
                    parts.append(f"batch {max(batch_sizes)}: {big['samples_per_s']:,.0f}/s = {big['vs_torch']:.2f}x "
                                 f"torch (rounds {big['vs_torch_rounds'][0]:.2f}-{big['vs_torch_rounds'][1]:.2f}) "
                                 f"[{ok}]")
                else:
                    parts.append(f"batch {max(batch_sizes)}: {big['samples_per_s']:,.0f}/s")
            one = figs.get(f"{name}/1/tf/{t}")
            if one is not None:
                ok = "met" if one["p50_ms"] < TARGET_P50_MS else "MISSED"
                extra = "".join(f", {src} {figs[f'{name}/1/{src}/{t}']['p50_ms']:.3f}"
                                for src in ("tf_compare", "torch") if f"{name}/1/{src}/{t}" in figs)
                parts.append(f"batch 1: p50 {one['p50_ms']:.3f} ms, p99 {one['p99_ms']:.2f} ms [{ok}]"
                             + (f" (p50{extra} ms)" if extra else ""))
            print(f"SUMMARY {name} threads={t}: " + "; ".join(parts))


def cli() -> None:
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
