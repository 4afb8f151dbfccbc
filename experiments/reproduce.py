"""Reproduce a paper table: ``python -m experiments.reproduce --config=midpg_table1_amazon --raw_path=...``.

Every config also runs on the embedded MovieLens-100k (``--on_ml100k``), so it can be
exercised without the paper's data: same models and training settings, our data.

  python -m experiments.reproduce --list
  python -m experiments.reproduce --config=midpg_table1_amazon --on_ml100k --trials=3
  python -m experiments.reproduce --config=hamur_ml1m --raw_path=ml-1m.zip --trial_shard=0/2   # machine A
  python -m experiments.reproduce --config=hamur_ml1m --raw_path=ml-1m.zip --trial_shard=1/2   # machine B
  # copy results/<config>/trials-shard-*.jsonl into one folder, then:
  python -m experiments.reproduce --config=hamur_ml1m --raw_path=ml-1m.zip --aggregate_only
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app, flags

from experiments.paper_configs import CONFIGS

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("config", None, "Paper config name (--list shows them).")
    flags.DEFINE_boolean("list", False, "List the configs and exit.")
    flags.DEFINE_boolean("on_ml100k", False, "Run the config's models and settings on MovieLens-100k.")
    flags.DEFINE_string("raw_path", None, "The paper dataset's raw files (zip or folder).")
    flags.DEFINE_string("data_dir", "data", "Root of prepared datasets.")
    flags.DEFINE_integer("trials", None, "Override the paper's number of trials (10).")
    flags.DEFINE_integer("epochs", 20, "Maximum epochs per trial (early stopping decides).")
    flags.DEFINE_string("output_dir", None, "Default results/<config>[-ml100k].")
    flags.DEFINE_string("trial_shard", "0/1", "i/n: this process runs trials t with t % n == i.")
    flags.DEFINE_boolean("aggregate_only", False, "Only rebuild the table from trials*.jsonl.")
    flags.DEFINE_boolean("tensorboard", False, "Log trials to TensorBoard.")
    flags.DEFINE_boolean("plots", True, "Write the per-domain AUC bar chart (PNG).")


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.list or not FLAGS.config:
        for name, c in CONFIGS.items():
            print(f"{name:22s} {c.title}  [{c.dataset}; {', '.join(c.models)}]")
        if not FLAGS.list:
            raise app.UsageError("--config is required")
        return
    if FLAGS.config not in CONFIGS:
        raise app.UsageError(f"unknown --config={FLAGS.config!r}; available: {', '.join(CONFIGS)}")
    from experiments.common import parse_shard
    from experiments.run import run

    c = CONFIGS[FLAGS.config]
    dataset = "ml100k" if FLAGS.on_ml100k else c.dataset
    out = FLAGS.output_dir or os.path.join("results", FLAGS.config + ("-ml100k" if FLAGS.on_ml100k else ""))
    train = {"epochs": FLAGS.epochs, **c.train}
    if dataset == "ml100k" and train.get("mode") == "single_domain":
        pass  # MLoRA's domain-sequential training style also applies on ML-100k
    try:
        res = run(dataset=dataset, raw_path=FLAGS.raw_path, data_dir=FLAGS.data_dir, models=c.models,
                  trials=FLAGS.trials or c.trials, train_kwargs=train, model_kwargs=c.model_kwargs,
                  per_model_args=c.per_model_args, output_dir=out, trial_shard=parse_shard(FLAGS.trial_shard),
                  aggregate_only=FLAGS.aggregate_only, tensorboard=FLAGS.tensorboard, base_model=c.base_model,
                  paper=c.paper, flags_record={"config": FLAGS.config, "on_ml100k": FLAGS.on_ml100k})
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if FLAGS.plots and res["summary"]:
        from experiments.plots import per_domain_bars
        from mdr_tf.schema import Schema

        schema = Schema.load(res["data_dir"])
        path = per_domain_bars(res["summary"], schema.domain_names, os.path.join(out, "per_domain_auc.png"),
                               title=c.title + (" — on ML-100k" if FLAGS.on_ml100k else ""))
        print(f"figure: {path}", file=sys.stderr)


def cli() -> None:
    define_flags()
    app.run(main)


if __name__ == "__main__":
    cli()
