"""Micro-benchmark of tower-per-domain routing strategies (ms per call).

Computes a per-domain tower ``x [B, n] → relu(x W1_d + b1_d) → (· W2_d + b2_d) [B, 1]``
(each sample through its own domain's tower) in five ways:

- ``stacked``: every domain's tower on the whole batch with stacked kernels
  ``[D, n, u]`` (one batched einsum per layer), then ``select_by_domain`` (gather_nd);
- ``masked``: the same compute-all, then ``sum(one_hot(domain) * outs)``;
- ``gather``: per-sample gather of the kernels ``[B, n, u]`` then ``einsum('bn,bnu->bu')``;
- ``bucket``: rows scattered into per-domain tiles of 32 rows (each domain's block padded
  to a multiple of 32; capacity ≤ B + 32·D, static given B), one batched matmul with each
  tile's domain kernel, rows gathered back (``mdr_tf.layers.routing.domain_buckets``);
- ``partition``: ``tf.dynamic_partition`` → D small towers → ``tf.dynamic_stitch``
  (dynamic shapes: not XLA-compilable, so measured without XLA only).

Each is timed forward+backward (a training step's work) as a ``tf.function`` with and
without XLA. Also times a STAR-style dense block ``x (W ⊙ W_d) + b + b_d`` (n=400 → 128)
the same ways. Timings are the minimum over 5 blocks of calls, as wall and process-CPU
time (the CPU figure is the steadier one on a shared machine).

Usage: ``python -m experiments.bench_routing [--batch 512] [--domains 3 10] [--iters 100] [--threads 1]``

``--models dnn star ... --data_dir DIR`` instead times whole models' training (samples/s,
ratios to the first model). ``--mlora_inference`` instead times one ``MLoRADense`` at
inference with the fused and the per-domain (D-invariant) matmuls.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def _select(stacked, domain):
    b = tf.shape(domain)[0]
    idx = tf.stack([domain, tf.range(b, dtype=tf.int32)], axis=1)
    return tf.gather_nd(stacked, idx)


def tower_stacked(x, domain, w1, b1, w2, b2):
    h = tf.nn.relu(tf.einsum("bn,dnu->dbu", x, w1) + b1[:, None, :])
    out = tf.einsum("dbu,duo->dbo", h, w2) + b2[:, None, :]
    return _select(out, domain)


def tower_masked(x, domain, w1, b1, w2, b2):
    h = tf.nn.relu(tf.einsum("bn,dnu->dbu", x, w1) + b1[:, None, :])
    out = tf.einsum("dbu,duo->dbo", h, w2) + b2[:, None, :]
    mask = tf.transpose(tf.one_hot(domain, w1.shape[0], dtype=x.dtype))[:, :, None]
    return tf.reduce_sum(mask * out, axis=0)


def tower_gather(x, domain, w1, b1, w2, b2):
    h = tf.nn.relu(tf.einsum("bn,bnu->bu", x, tf.gather(w1, domain)) + tf.gather(b1, domain))
    return tf.einsum("bu,buo->bo", h, tf.gather(w2, domain)) + tf.gather(b2, domain)


def tower_partition(x, domain, w1, b1, w2, b2):
    d = w1.shape[0]
    parts = tf.dynamic_partition(x, domain, d)
    idx = tf.dynamic_partition(tf.range(tf.shape(x)[0]), domain, d)
    outs = [tf.nn.relu(parts[i] @ w1[i] + b1[i]) @ w2[i] + b2[i] for i in range(d)]
    return tf.dynamic_stitch(idx, outs)


def tower_bucket(x, domain, w1, b1, w2, b2):
    from mdr_tf.layers.routing import bucket_dense, domain_buckets, from_buckets, to_buckets

    pos, tile_domain, n_tiles = domain_buckets(domain, w1.shape[0])
    h = tf.nn.relu(bucket_dense(to_buckets(x, pos, n_tiles), tile_domain, w1, b1))
    return from_buckets(bucket_dense(h, tile_domain, w2, b2), pos)


def star_bucket(x, domain, w, wd, b, bd):
    from mdr_tf.layers.routing import domain_dense

    return domain_dense(x, w[None] * wd, b + bd, domain, "bucket")


def star_stacked(x, domain, w, wd, b, bd):
    k = w[None] * wd
    return _select(tf.einsum("bn,dnu->dbu", x, k) + (b + bd)[:, None, :], domain)


def star_masked(x, domain, w, wd, b, bd):
    k = w[None] * wd
    out = tf.einsum("bn,dnu->dbu", x, k) + (b + bd)[:, None, :]
    mask = tf.transpose(tf.one_hot(domain, wd.shape[0], dtype=x.dtype))[:, :, None]
    return tf.reduce_sum(mask * out, axis=0)


def star_gather(x, domain, w, wd, b, bd):
    k = w[None] * tf.gather(wd, domain)
    return tf.einsum("bn,bnu->bu", x, k) + b + tf.gather(bd, domain)


def star_partition(x, domain, w, wd, b, bd):
    d = wd.shape[0]
    parts = tf.dynamic_partition(x, domain, d)
    idx = tf.dynamic_partition(tf.range(tf.shape(x)[0]), domain, d)
    return tf.dynamic_stitch(idx, [parts[i] @ (w * wd[i]) + b + bd[i] for i in range(d)])


def _time(fn, args, iters, repeats=5):
    """(wall ms, process-CPU ms) per call, the minimum over ``repeats`` blocks of ``iters``
    calls (the minimum is the least disturbed by other processes on a shared machine)."""
    for _ in range(5):
        fn(*args)
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(iters):
            out = fn(*args)
        _ = [o.numpy() for o in tf.nest.flatten(out)]
        best_wall = min(best_wall, (time.perf_counter() - t0) / iters * 1e3)
        best_cpu = min(best_cpu, (time.process_time() - c0) / iters * 1e3)
    return best_wall, best_cpu


def _train_step(impl, params):
    def step(x, domain):
        with tf.GradientTape() as tape:
            y = impl(x, domain, *params)
            loss = tf.reduce_mean(tf.square(y))
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, list(params))]

    return step


def run(batch: int, domains: list[int], iters: int, n: int = 64, u: int = 32, emit=None) -> list[tuple]:
    rows = []
    emit = emit or (lambda row: None)
    rng = np.random.default_rng(0)
    for d in domains:
        x = tf.constant(rng.normal(size=(batch, n)), tf.float32)
        dom = tf.constant(rng.integers(0, d, batch), tf.int32)
        tower = [tf.Variable(rng.normal(size=s).astype(np.float32) * 0.1)
                 for s in [(d, n, u), (d, u), (d, u, 1), (d, 1)]]
        for name, impl in [("stacked", tower_stacked), ("masked", tower_masked), ("gather", tower_gather),
                           ("bucket", tower_bucket), ("partition", tower_partition)]:
            for jit in (True, False):
                if name == "partition" and jit:
                    continue
                fn = tf.function(_train_step(impl, tower), jit_compile=jit)
                rows.append(("tower", d, name, jit, *_time(fn, (x, dom), iters)))
                emit(rows[-1])
        ns, us = 400, 128
        xs = tf.constant(rng.normal(size=(batch, ns)), tf.float32)
        star = [tf.Variable(rng.normal(size=s).astype(np.float32) * 0.1)
                for s in [(ns, us), (d, ns, us), (us,), (d, us)]]
        for name, impl in [("stacked", star_stacked), ("masked", star_masked), ("gather", star_gather),
                           ("bucket", star_bucket), ("partition", star_partition)]:
            for jit in (True, False):
                if (name == "partition" and jit) or (name == "gather" and not jit):
                    continue  # partition: not XLA-compilable; gather: ~1 s per call without XLA
                fn = tf.function(_train_step(impl, star), jit_compile=jit)
                rows.append(("star400x128", d, name, jit, *_time(fn, (xs, dom), max(1, iters // 10))))
                emit(rows[-1])
    return rows


def model_throughput(names: list[str], data_dir: str, batch: int = 512, steps: int = 64, repeats: int = 3,
                     emit=None) -> list[tuple]:
    """Training samples/s of registered models (compiled as ``mdr_tf.training.compile_model``:
    XLA, 16 steps per execution) on a cached in-memory dataset of random inputs with the
    schema of ``data_dir`` (model-bound: no input pipeline). Returns rows
    ``(name, wall samples/s, samples per process-CPU second)``, best of ``repeats``."""
    import keras

    from mdr_tf import registry
    from mdr_tf.schema import Schema
    from mdr_tf.training import TrainConfig, compile_model
    from tests.helpers import random_inputs

    schema = Schema.load(data_dir)
    n = batch * 64
    x = random_inputs(schema, n, seed=1)
    y = np.random.default_rng(0).integers(0, 2, n).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).cache().repeat()
    rows = []
    for name in names:
        keras.utils.set_random_seed(0)
        model = registry.get(name).build(schema)
        model.build()
        compile_model(model, TrainConfig(batch_size=batch))
        model.fit(ds, steps_per_epoch=32, epochs=1, verbose=0)  # compile + warm-up
        wall = cpu = 0.0
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
            wall = max(wall, steps * batch / (time.perf_counter() - t))
            cpu = max(cpu, steps * batch / (time.process_time() - c))
        rows.append((name, wall, cpu))
        if emit:
            emit(rows[-1])
    return rows


def mlora_inference(shapes: list[tuple[int, int, int, int, int]], iters: int, emit=None) -> list[tuple]:
    """Forward time of one ``MLoRADense`` at inference, per-domain matmuls (default,
    D-invariant) vs the fused ``[n, D·r]`` matmul (``per_domain_inference=False``).

    ``shapes``: (B, n, u, r, D). Returns (shape, fused wall, fused cpu, per-domain wall,
    per-domain cpu) rows, ms per call.
    """
    from mdr_tf.layers.mechanisms.mlora import MLoRADense

    rows = []
    for batch, n, u, r, d in shapes:
        rng = np.random.default_rng(0)
        x = tf.constant(rng.normal(size=(batch, n)).astype("float32"))
        dom = tf.constant(rng.integers(0, d, batch).astype("int32"))
        times = []
        for per_domain in (False, True):
            layer = MLoRADense(u, num_domains=d, rank=r, per_domain_inference=per_domain)
            layer.build((None, n))
            layer.lora_b.assign(rng.normal(size=(d, r, u)).astype("float32"))
            fn = tf.function(lambda x, dom, layer=layer: layer(x, {"domain": dom}, training=False))
            times += list(_time(fn, (x, dom), iters))
        rows.append(((batch, n, u, r, d), *times))
        if emit:
            emit(rows[-1])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--domains", type=int, nargs="+", default=[3, 10])
    p.add_argument("--iters", type=int, default=100, help="calls per timed block (star: a tenth)")
    p.add_argument("--threads", type=int, default=1, help="TF intra-op threads (0: TF default)")
    p.add_argument("--models", nargs="*", default=None,
                   help="instead: training samples/s of these registered models (TF default threads)")
    p.add_argument("--data_dir", default="data/ml100k", help="prepared dataset whose schema --models uses")
    p.add_argument("--mlora_inference", action="store_true",
                   help="instead: MLoRADense inference, fused vs per-domain matmuls (TF default threads)")
    a = p.parse_args()
    if a.mlora_inference:
        print("MLoRADense forward at inference incl. the shared matmul, ms per call (min of 5 blocks)")
        print(f"{'B, n -> u, r, D':<24}{'fused wall':>11}{'cpu':>8}{'per-domain wall':>17}{'cpu':>8}")

        def emit_mlora(row):
            (b, n, u, r, d), fw, fc, pw, pc = row
            print(f"{f'{b}, {n} -> {u}, {r}, {d}':<24}{fw:>11.3f}{fc:>8.3f}{pw:>17.3f}{pc:>8.3f}", flush=True)

        mlora_inference([(4096, 80, 128, 8, 3), (4096, 128, 64, 4, 3), (1, 80, 128, 8, 3), (512, 80, 128, 8, 3),
                         (4096, 80, 128, 8, 10)], a.iters, emit=emit_mlora)
        return
    if a.models:
        print(f"training samples/s, batch {a.batch}, XLA, 16 steps/execution, cached random inputs "
              f"({a.data_dir} schema); best of 3")
        ref = {}

        def emit_model(row):
            name, wall, cpu = row
            ref.setdefault("wall", wall)
            ref.setdefault("cpu", cpu)
            print(f"{name:<14}{wall:>10,.0f}/s wall ({wall / ref['wall']:.2f}×){cpu:>10,.0f}/cpu-s "
                  f"({cpu / ref['cpu']:.2f}×)", flush=True)

        model_throughput(a.models, a.data_dir, a.batch, emit=emit_model)
        return
    if a.threads:
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
        tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    print(f"batch {a.batch}; forward+backward per call (min of 5 blocks); tower 64→32→1; "
          f"star block 400→128; intra-op threads {a.threads or 'default'}")
    print(f"{'case':<13}{'D':>4}  {'routing':<10}{'xla':<6}{'wall ms':>9}{'cpu ms':>9}", flush=True)

    def emit(row):
        case, d, name, jit, wall, cpu = row
        print(f"{case:<13}{d:>4}  {name:<10}{str(jit):<6}{wall:>9.3f}{cpu:>9.3f}", flush=True)

    run(a.batch, a.domains, a.iters, emit=emit)


if __name__ == "__main__":
    main()
