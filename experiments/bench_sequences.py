"""Training speed of the sequence models (DNN vs DIN vs TEM4CTR vs a backbone + interest).

Each model trains with the fused path of ``mdr_tf.training.fit`` (K steps per XLA program,
batches gathered from the in-memory columns) on the first ``--blocks`` blocks of K batches of
the train split. Rounds are interleaved (one block run of every model per round) so that a
busy spell of a shared machine hits every model alike; medians over ``--rounds``. Reports
samples per wall second and per CPU second of this process (``time.process_time``, all
threads): the latter is what a model costs, independent of other jobs on the machine.

  python -m experiments.bench_sequences --dataset=ml100k_seq --models=dnn,din,tem4ctr,star_tem4ctr
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Sequence

from absl import flags

from data_prep.common import run_cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("dataset", "ml100k_seq", "Registered dataset with behaviour sequences.")
    flags.DEFINE_string("data_dir", "data", "Root of prepared datasets.")
    flags.DEFINE_list("models", ["dnn", "din", "tem4ctr", "star_tem4ctr"], "Models (ratios relative to the first).")
    flags.DEFINE_integer("batch_size", 512, "Training batch size.")
    flags.DEFINE_integer("steps_per_execution", 16, "K: train steps per compiled call.")
    flags.DEFINE_integer("blocks", 4, "Compiled calls (of K steps) per timed run.")
    flags.DEFINE_integer("rounds", 3, "Interleaved timed rounds (median reported).")
    flags.DEFINE_string("output", None, "Write the figures as JSON here.")


def bench(schema, models: Sequence[str], batch_size: int, k: int, blocks: int, rounds: int) -> dict[str, Any]:
    import keras

    from mdr_tf import registry
    from mdr_tf.data import in_memory_index_batches
    from mdr_tf.fused import install_on_columns
    from mdr_tf.training import TrainConfig, compile_model

    def index_blocks():
        return in_memory_index_batches(schema, "train", batch_size, shuffle=True, seed=0, mode="mixed",
                                       domains=list(range(schema.num_domains)), label_key=schema.label_keys[0],
                                       drop_remainder=True)

    feats, labels, _ = index_blocks()
    runs = {}
    for name in models:
        keras.utils.set_random_seed(0)
        model = registry.get(name).build(schema)
        model.build()
        compile_model(model, TrainConfig(batch_size=batch_size, steps_per_execution=1))
        install_on_columns(model, feats, labels, batch_size, jit_compile=model.jit_compile)
        ds = index_blocks()[2].batch(k).take(blocks)

        def run(model=model, ds=ds) -> int:
            model.fit(ds, epochs=1, verbose=0)
            return blocks * k * batch_size

        run()  # compile + warm-up
        runs[name] = (run, model.count_params())
    wall: dict[str, list[float]] = {m: [] for m in models}
    cpu: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(rounds):
        for name, (run, _) in runs.items():
            t, c = time.perf_counter(), time.process_time()
            n = run()
            wall[name].append(n / (time.perf_counter() - t))
            cpu[name].append(n / (time.process_time() - c))
    out = {}
    for name in models:
        out[name] = {"samples_per_s": statistics.median(wall[name]),
                     "samples_per_cpu_s": statistics.median(cpu[name]), "params": runs[name][1]}
    return out


def main(f: flags.FlagValues) -> None:
    import mdr_tf  # noqa: F401
    from experiments.common import parse_options, prepare_dataset
    from mdr_tf.schema import Schema

    schema = Schema.load(prepare_dataset(f.dataset, f.data_dir, None, parse_options([])))
    res = bench(schema, list(f.models), f.batch_size, f.steps_per_execution, f.blocks, f.rounds)
    first = list(f.models)[0]
    print(f"# {f.dataset}: fused training, batch {f.batch_size}, K={f.steps_per_execution}, "
          f"{f.blocks * f.steps_per_execution * f.batch_size:,} samples per run, median of {f.rounds} "
          "interleaved rounds")
    print("| model | params | samples/s (wall) | samples per CPU-s | CPU cost vs " + first + " |")
    print("|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['params']:,} | {r['samples_per_s']:,.0f} | {r['samples_per_cpu_s']:,.0f} | "
              f"{res[first]['samples_per_cpu_s'] / r['samples_per_cpu_s']:.1f}× |", flush=True)
    if f.output:
        from mdr_base.atomic import write_text_atomic

        write_text_atomic(f.output, json.dumps(res, indent=2))


def cli() -> None:
    run_cli(define_flags, main)


if __name__ == "__main__":
    cli()
