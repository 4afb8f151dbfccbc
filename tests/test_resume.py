"""Fault tolerance: a training run killed mid-way resumes from its checkpoint and ends
with the same weights and metrics as an uninterrupted run."""

import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent("""
    import os, sys, json
    import numpy as np
    import keras
    import mdr_tf
    from mdr_tf.schema import Schema
    from mdr_tf.models.backbones import BackboneModel
    from mdr_tf.training import TrainConfig, fit, evaluate_split

    data, ckpt, out, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    schema = Schema.load(data)

    class Killer(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            # Die hard (no cleanup) right after the checkpoint of epoch `kill_after` would be
            # written: the checkpoint is saved after fit() returns, so kill at the next epoch's start.
            pass

        def on_epoch_begin(self, epoch, logs=None):
            if kill_after and epoch == kill_after:
                os._exit(17)

    keras.utils.set_random_seed(3)
    model = BackboneModel(schema.to_config(), hidden_units=[16, 8], dropout=0.2)
    model.build()
    cfg = TrainConfig(epochs=4, batch_size=128, patience=10, seed=3, steps_per_execution=2,
                      checkpoint_dir=ckpt or None)
    stopper = fit(model, schema, cfg, callbacks=[Killer()])
    res = evaluate_split(model, schema, "test")
    np.savez(out, *model.get_weights())
    json.dump({"auc": res["auc"], "best_epoch": stopper.best_epoch,
               "history": [h["val_auc"] for h in stopper.history]}, open(out + ".json", "w"))
""")


def _run(args, env):
    return subprocess.run([sys.executable, "-c", SCRIPT] + [str(a) for a in args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_killed_run_resumes_to_the_same_result(synth_dir, tmp_path):
    import json

    env = dict(os.environ, PYTHONPATH=os.getcwd())
    ref = _run([synth_dir, "", tmp_path / "ref.npz", 0], env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    ckpt = tmp_path / "ckpt"
    killed = _run([synth_dir, ckpt, tmp_path / "a.npz", 2], env)
    assert killed.returncode == 17, killed.stderr[-2000:]
    assert not os.path.exists(tmp_path / "a.npz")
    assert json.load(open(ckpt / "state" / "state.json"))["epochs_done"] == 2
    resumed = _run([synth_dir, ckpt, tmp_path / "a.npz", 0], env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = json.load(open(str(tmp_path / "ref.npz") + ".json")), json.load(open(str(tmp_path / "a.npz") + ".json"))
    assert a["best_epoch"] == b["best_epoch"] and len(b["history"]) == 4
    np.testing.assert_allclose(b["history"], a["history"], atol=1e-6)
    assert abs(a["auc"] - b["auc"]) < 1e-6
    with np.load(tmp_path / "ref.npz") as x, np.load(tmp_path / "a.npz") as y:
        for k in x.files:
            np.testing.assert_allclose(x[k], y[k], atol=1e-6)
