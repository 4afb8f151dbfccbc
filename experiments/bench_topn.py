"""Epoch time of the top-N models, interleaved in one process (docs/models/cigf.md).

Every model is built and its train step traced first; then ``--rounds`` rounds each run
``--epochs_per_round`` epochs of every model in turn (CIGF's sampler: all users in batches
of 256, 40 pairs per user and behaviour), so background load hits all models alike.
Prints the median seconds per epoch and the ratio to LightGCN.

Example:
  python -m experiments.bench_topn --models=cigf,cigf_no_mixing,lightgcn,mf_bpr
"""

from __future__ import annotations

import time

import numpy as np
from absl import flags

from experiments.common import prepare_dataset


def define_flags() -> None:
    flags.DEFINE_list("models", ["cigf", "cigf_no_mesi", "cigf_no_mixing", "cigf_target_only", "lightgcn", "mf_bpr"],
                      "Top-N models to time.")
    flags.DEFINE_string("data_dir", "data", "Root folder of prepared datasets.")
    flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
    flags.DEFINE_integer("epochs_per_round", 5, "Epochs of each model per round.")
    flags.DEFINE_integer("batch_users", 256, "Users per step.")
    flags.DEFINE_integer("samples_per_user", 40, "Pairs per user and behaviour.")


def _main(f: flags.FlagValues) -> None:
    import keras
    import tensorflow as tf

    import mdr_tf  # noqa: F401
    from data_prep import multibehavior
    from mdr_tf import topn

    data = multibehavior.load(prepare_dataset("ml100k_multibehavior", f.data_dir, None, {}))
    rng = np.random.default_rng(0)
    runs = {}
    for name in f.models:
        keras.utils.set_random_seed(0)
        model = topn.get(name).build(data.num_users, data.num_items, data.num_behaviors)
        adjs = topn.graph_inputs(model, data)
        samplers = [topn.BPRSampler(data.train_users[k], data.train_items[k], data.num_users, data.num_items,
                                    f.samples_per_user, rng) for k in model.behaviors]
        step = topn.make_train_step(model, adjs, keras.optimizers.Adam(1e-3, epsilon=1e-8))

        def epoch(samplers=samplers, step=step) -> float:
            t0 = time.perf_counter()
            ids = rng.permutation(data.num_users)
            for s in range(0, len(ids), f.batch_users):
                flat = []
                for sampler in samplers:
                    flat += [tf.constant(a, tf.int64) for a in sampler.sample(ids[s:s + f.batch_users])]
                step(*flat)
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        epoch()  # traces the step
        print(f"{name}: first epoch (tracing) {time.perf_counter() - t0:.2f}s", flush=True)
        runs[name] = (epoch, [])
    for r in range(f.rounds):
        for name, (epoch, times) in runs.items():
            times += [epoch() for _ in range(f.epochs_per_round)]
        print(f"round {r + 1}/{f.rounds} done", flush=True)
    ref = np.median(runs["lightgcn"][1]) if "lightgcn" in runs else None
    print("\n| model | s/epoch (median) | ratio to lightgcn |\n|---|---|---|")
    for name, (_, times) in runs.items():
        med = float(np.median(times))
        print(f"| {name} | {med:.3f} | {med / ref:.1f}x |" if ref else f"| {name} | {med:.3f} | – |")


def cli() -> None:
    from data_prep.common import run_cli

    run_cli(define_flags, _main, errors=(ValueError,))


if __name__ == "__main__":
    cli()
