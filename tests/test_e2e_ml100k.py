"""End to end on the real MovieLens-100k: the main job's path, learning beats trivial baselines."""

import numpy as np
import pytest

from experiments import run as runner
from mdr_tf import metrics as M
from mdr_tf.data import load_arrays


@pytest.mark.slow  # (also implied by its real-data fixtures, see tests/conftest.py)
def test_dnn_on_real_ml100k_beats_trivial_baselines(ml100k_dir, ml100k_schema, tmp_path):
    import os

    out = runner.run(dataset="ml100k", data_dir=os.path.dirname(ml100k_dir), models=["dnn"], trials=1,
                     train_kwargs=dict(epochs=3), output_dir=str(tmp_path / "res"), log=lambda m: None,
                     dataset_options={})
    row = out["rows"][0]
    # Observed on this data: test AUC 0.779-0.781 after 3 epochs (seed 0/1).
    assert row["test_auc"] > 0.75
    # A non-trivial baseline: each item's positive rate in the training split.
    xtr, ytr = load_arrays(ml100k_schema, "train")
    xte, yte = load_arrays(ml100k_schema, "test")
    n_items = ml100k_schema.feature("item_id").vocab_size
    pos = np.bincount(xtr["item_id"], weights=ytr, minlength=n_items)
    cnt = np.bincount(xtr["item_id"], minlength=n_items)
    item_rate = (pos + ytr.mean()) / (cnt + 1.0)
    baseline = M.auc(yte, item_rate[xte["item_id"]])
    assert row["test_auc"] > baseline + 0.01, (row["test_auc"], baseline)
    for k in range(3):
        assert row[f"test_auc_d{k}"] > 0.7
